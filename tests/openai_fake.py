"""A small OpenAI-compatible HTTP server on 127.0.0.1 that a test controls.

It speaks enough of the OpenAI HTTP API for the real ``openai`` client: ``POST
/v1/chat/completions`` (plain and streamed as server-sent events, with ``usage``) and ``GET
/v1/models``. What each request gets is decided by a *responder*, a function (plain or async)
called with the request body and its 0-based index, returning one of:

* a string: the assistant's content, HTTP 200;
* :class:`Reply`: content, or an HTTP error status (429 with ``Retry-After``, 500 …), a delay
  before answering (to force a client timeout), extra headers, usage;
* a dict: returned as the JSON body, HTTP 200.

Use it in the test's own event loop::

    async with FakeOpenAI(lambda body, i: "hello") as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x")

or from synchronous code (a subprocess under test, a benchmark) in a thread of its own::

    with FakeOpenAI(responder).running_in_thread() as server: ...

The server records every request body (``requests``), the status it answered
(``statuses``), and the largest number of requests it held at once (``max_in_flight``).
``json_schema=False`` makes it refuse ``response_format`` of type ``json_schema`` with HTTP
400, like servers without structured output. ``delay`` is a fixed per-request delay.

``reasoning=True`` makes it behave like OpenAI's reasoning models (GPT-5, o-series), with the
error bodies the real API sends: ``max_tokens`` → 400 ``{"message": "Unsupported parameter:
'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.", "type":
"invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}``; a
``temperature`` or ``top_p`` other than 1 → 400 ``"Unsupported value: 'temperature' does not
support 0.9 with this model. Only the default (1) value is supported."`` with code
``unsupported_value``. ``max_completion_tokens`` is accepted and is the budget for reasoning
and reply together: the fake spends ``reasoning_tokens`` (an int, or a function of the body)
on reasoning first, so a budget at or below that gets an empty reply with ``finish_reason``
"length", as the real models return. Usage carries ``completion_tokens_details.reasoning_tokens``.
Without ``reasoning``, ``reasoning_effort`` is refused as an unsupported parameter, like
gpt-4o does.

``vignette_responder(pack)`` answers generation requests (``pipeline.generate``) with valid,
distinct vignettes for the plan slot in each request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Responder = Callable[[dict[str, Any], int], Any]  # returns str | Reply | dict, or an awaitable of one


@dataclass
class Reply:
    content: str | None = None
    status: int = 200
    delay: float = 0.0  # seconds to wait before answering (the client may time out first)
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""
    usage: dict[str, Any] | None = None
    finish_reason: str = "stop"

    code: str | None = None
    param: str | None = None

    @classmethod
    def error_status(cls, status: int, message: str = "", retry_after_ms: int | None = None,
                     code: str | None = None, param: str | None = None) -> "Reply":
        headers = {"retry-after-ms": str(retry_after_ms)} if retry_after_ms is not None else {}
        return cls(status=status, error=message or f"fake error {status}", headers=headers, code=code, param=param)


def _default_responder(body: dict[str, Any], index: int) -> str:
    return "ok"


class FakeOpenAI:
    def __init__(self, responder: Responder | None = None, *, delay: float = 0.0, json_schema: bool = True,
                 model: str = "fake-model", reasoning: bool = False,
                 reasoning_tokens: int | Callable[[dict[str, Any]], int] = 0) -> None:
        self.responder = responder or _default_responder
        self.delay = delay
        self.json_schema = json_schema
        self.model = model
        self.reasoning = reasoning
        self.reasoning_tokens = reasoning_tokens
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- address -----------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        assert self.port is not None, "server not started"
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        self.requests.clear()
        self.statuses.clear()
        self.max_in_flight = 0

    # -- handlers ----------------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "fake"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return self._error(400, "body is not JSON")
        index = len(self.requests)
        self.requests.append(body)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            fmt = body.get("response_format") or {}
            if not self.json_schema and fmt.get("type") == "json_schema":
                self.statuses.append(400)
                return self._error(400, "Invalid parameter: 'response_format' of type 'json_schema' is not supported "
                                        "with this model.", param="response_format")
            refused = self._refuse_parameters(body)
            if refused is not None:
                self.statuses.append(400)
                return refused
            if self.delay:
                await asyncio.sleep(self.delay)
            reply = self.responder(body, index)
            if inspect.isawaitable(reply):
                reply = await reply
            if isinstance(reply, str):
                reply = Reply(content=reply)
            if isinstance(reply, dict):
                self.statuses.append(200)
                return web.json_response(reply)
            assert isinstance(reply, Reply), f"responder returned {type(reply).__name__}"
            if reply.delay:
                await asyncio.sleep(reply.delay)
            self.statuses.append(reply.status)
            if reply.status != 200:
                return self._error(reply.status, reply.error, reply.headers, code=reply.code, param=reply.param)
            reply = self._spend_reasoning(body, reply)
            return await self._completion(request, body, reply)
        finally:
            self.in_flight -= 1

    def _refuse_parameters(self, body: dict[str, Any]) -> web.Response | None:
        """The 400 the real API sends for a parameter this kind of model does not take."""
        if self.reasoning:
            if "max_tokens" in body:
                return self._error(400, "Unsupported parameter: 'max_tokens' is not supported with this model. "
                                        "Use 'max_completion_tokens' instead.",
                                   code="unsupported_parameter", param="max_tokens")
            for name in ("temperature", "top_p"):
                if name in body and body[name] != 1:
                    return self._error(400, f"Unsupported value: '{name}' does not support {body[name]} with this "
                                            "model. Only the default (1) value is supported.",
                                       code="unsupported_value", param=name)
        elif "reasoning_effort" in body:
            return self._error(400, "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
                               code="unsupported_parameter", param="reasoning_effort")
        return None

    def _spend_reasoning(self, body: dict[str, Any], reply: Reply) -> Reply:
        """Reasoning models: hidden reasoning tokens come out of ``max_completion_tokens`` first."""
        if not self.reasoning:
            return reply
        spent = self.reasoning_tokens(body) if callable(self.reasoning_tokens) else self.reasoning_tokens
        budget = body.get("max_completion_tokens")
        prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4
        if budget is not None and spent >= budget:
            usage = {"prompt_tokens": prompt, "completion_tokens": budget, "total_tokens": prompt + budget,
                     "completion_tokens_details": {"reasoning_tokens": budget}}
            return Reply(content="", finish_reason="length", usage=usage)
        visible = len(reply.content or "") // 4
        if budget is not None and spent + visible > budget:
            cut = max(0, (budget - spent) * 4)
            usage = {"prompt_tokens": prompt, "completion_tokens": budget, "total_tokens": prompt + budget,
                     "completion_tokens_details": {"reasoning_tokens": spent}}
            return Reply(content=(reply.content or "")[:cut], finish_reason="length", usage=usage)
        usage = reply.usage or {"prompt_tokens": prompt, "completion_tokens": spent + visible,
                                "total_tokens": prompt + spent + visible,
                                "completion_tokens_details": {"reasoning_tokens": spent}}
        return Reply(content=reply.content, finish_reason=reply.finish_reason, usage=usage)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None, *,
               code: str | None = None, param: str | None = None) -> web.Response:
        kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                429: "rate_limit_error"}.get(status, "server_error")
        return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": code}},
                                 status=status, headers=headers or {})

    def _usage(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        if reply.usage is not None:
            return dict(reply.usage)
        prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4
        completion = len(reply.content or "") // 4
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def _completion(self, request: web.Request, body: dict[str, Any], reply: Reply) -> web.StreamResponse:
        created = int(time.time())
        completion_id = f"chatcmpl-fake-{len(self.requests)}"
        model = body.get("model", self.model)
        usage = self._usage(body, reply)
        if not body.get("stream"):
            return web.json_response({
                "id": completion_id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content},
                             "finish_reason": reply.finish_reason, "logprobs": None}],
                "usage": usage,
            })
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def send(payload: dict[str, Any]) -> None:
            await response.write(f"data: {json.dumps(payload)}\n\n".encode())

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        await send(chunk({"role": "assistant", "content": ""}, None))
        text = reply.content or ""
        for start in range(0, len(text), 16):
            await send(chunk({"content": text[start:start + 16]}, None))
        await send(chunk({}, reply.finish_reason))
        if (body.get("stream_options") or {}).get("include_usage"):
            await send({"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    # -- lifecycle in the current loop -------------------------------------------------------
    async def start(self, port: int = 0) -> "FakeOpenAI":
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        # Like vLLM, a request whose client went away (a timeout) is abandoned, so stopping
        # the server never waits for a deliberately slow reply.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "FakeOpenAI":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- lifecycle in a thread of its own ----------------------------------------------------
    @contextlib.contextmanager
    def running_in_thread(self) -> Iterator["FakeOpenAI"]:
        started = threading.Event()
        stop: asyncio.Event | None = None

        async def main() -> None:
            nonlocal stop
            stop = asyncio.Event()
            await self.start()
            started.set()
            await stop.wait()
            await self.stop()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(main())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the fake OpenAI server did not start")
        try:
            yield self
        finally:
            assert self._loop is not None and stop is not None
            self._loop.call_soon_threadsafe(stop.set)
            self._thread.join(10)


# ---------------------------------------------------------------------------------------------
# Generation: valid, distinct vignettes for the plan in each request

_PLAN_RE = re.compile(r"```json\s*(\{.*?\})\s*```", re.S)
_SITE_WORDS = {"axillae": "underarms", "palms": "hands", "soles": "feet", "craniofacial": "face and scalp",
               "generalized": "skin all over"}
# Phrases patients use for each red flag (each trips the flag's patterns in the shipped pack).
_WARNING_PHRASES = [
    "it started when I turned 40 and never used to happen",
    "only my left side sweats, it is completely one-sided",
    "I keep waking up drenched with night sweats",
    "I have had a fever most evenings as well",
    "I have lost 7 kg without trying",
    "I get palpitations along with the sweating",
]
_SYLLABLES = ["ka", "lo", "mi", "tu", "re", "sa", "no", "vi", "pe", "do", "fa", "gu", "zi", "be", "ro", "hu"]


def plan_of(body: dict[str, Any]) -> dict[str, Any]:
    """The plan slot a generation request asks for (the JSON block in its user message)."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    match = _PLAN_RE.search(user)
    assert match, "no plan block in the request"
    return json.loads(match.group(1))


def _babble(seed: str, words: int = 30) -> str:
    rng = random.Random(hashlib.sha256(seed.encode()).digest())
    return " ".join("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(words))


_COMMON = {"hyperhidrosis", "sweating", "sweat", "sweats", "treatment", "treatments"}


def _fact_words(text: str, n: int = 4) -> str:
    """A few distinctive words of a fact (enough for the fact check to see it used, without
    copying the fact's sentence, which may be close to an evaluation question)."""
    from pipeline.fact_check import STOPWORDS

    found: list[str] = []
    for word in re.findall(r"[A-Za-z]{5,}", text):
        low = word.lower()
        if low not in _COMMON and low not in STOPWORDS and low not in found:
            found.append(low)
    return ", ".join(found[:n])


def vignette_for(plan: dict[str, Any], pack: Any, salt: str = "") -> dict[str, Any]:
    """A vignette that passes every check of ``pipeline.generate`` for ``plan``."""
    seed = json.dumps(plan, sort_keys=True) + salt
    rng = random.Random(hashlib.sha256(seed.encode()).digest())
    site = plan["site"]
    age = plan["age"]
    where = _SITE_WORDS.get(site, site)
    secondary = plan["kind"] == "secondary"
    facts = [plan["fact"]] if plan.get("fact") else [f.id for f in pack.facts_for(plan["task"])][:1]
    uses = "; ".join(_fact_words(pack.fact(fid).text) for fid in facts)
    if secondary:
        candidates = [p for p in _WARNING_PHRASES if pack.find_red_flags(p)]
        warning = candidates[rng.randrange(len(candidates))]
        question = (f"I am {age} and my {where} sweat heavily, {warning}. People keep noticing it during "
                    f"{plan['situation']}. My own notes say {_babble(seed)}. Should I worry?")
        answer = ("That sounds worrying and exhausting, and you were right to ask. Sweating with a sign like this "
                  "can have another cause, so please see a doctor within the next week or two to check it. "
                  f"Worth knowing: {uses}. Until then, keep a short diary: {_babble(seed + 'a', 24)}.")
        onset = max(age - 1, 26) if age > 26 else age
    else:
        question = (f"I am {age} and my {where} have sweated far more than other people's since I was a child, "
                    f"especially during {plan['situation']}. It is on both sides and stops when I sleep. "
                    f"Words from my diary: {_babble(seed)}. What can I do?")
        answer = ("That sounds really frustrating, and it is not your fault. What you describe fits primary focal "
                  f"hyperhidrosis, which is common and treatable. Worth knowing: {uses}. A dermatologist or GP can "
                  f"confirm it and talk through the options step by step: {_babble(seed + 'a', 24)}.")
        onset = min(age, 12)
    return {
        "task": plan["task"],
        "profile": {"age": age, "sex": plan["sex"], "sites": [site], "hdss": plan["hdss"], "onset_age": onset,
                    "family_history": rng.random() < 0.5, "kind": plan["kind"]},
        "question": question,
        "answer": answer,
        "fact_ids": facts,
    }


def vignette_responder(pack: Any, salt: str = "") -> Callable[[dict[str, Any], int], str]:
    """A responder that answers every generation request with a valid vignette for its plan."""

    def respond(body: dict[str, Any], index: int) -> str:
        return json.dumps(vignette_for(plan_of(body), pack, salt))

    return respond


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.openai_fake [--port N] [--delay S] [--pack NAME] [--reasoning]``: serve valid vignettes
    for generation until interrupted (prints the base URL first), e.g. to try ``llm4sweat
    generate`` by hand or to benchmark it against a server in another process."""
    import argparse

    from pipeline.packs import load_pack

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--pack", default="hyperhidrosis")
    parser.add_argument("--reasoning", action="store_true", help="behave like GPT-5 / o-series (see the module doc)")
    parser.add_argument("--reasoning-tokens", type=int, default=0, help="tokens spent on reasoning per request")
    args = parser.parse_args(argv)
    server = FakeOpenAI(vignette_responder(load_pack(args.pack)), delay=args.delay, reasoning=args.reasoning,
                        reasoning_tokens=args.reasoning_tokens)

    async def serve() -> None:
        await server.start(args.port)
        print(server.base_url, flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
