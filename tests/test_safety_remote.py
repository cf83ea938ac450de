"""Remote safety layers against local servers speaking their exact wire formats (issue 14 item 1).

Llama Guard 3 as vLLM serves it (OpenAI chat completions: the reply text is ``safe`` or
``unsafe\\nS11``) and OpenAI's moderation endpoint (``POST /v1/moderations``), each on
127.0.0.1 through the real ``openai`` client. Every failure — timeout, 5xx, malformed output —
must come out as "possible crisis", never "safe"; a crisis from any layer is a crisis.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp import web

from bot.inference.fixed import FixedBackend
from bot.platform import IncomingMessage
from bot.safety.layer import SafetyLayer
from bot.safety.policy import combine
from bot.safety.remote import (
    LayerVerdict,
    LlamaGuardLayer,
    MalformedOutput,
    ModerationLayer,
    SafetyClassifier,
    build_layers,
    parse_llama_guard,
    run_layers,
)
from bot.safety.verdict import Triage
from bot.settings import load_settings
from tests.recording_platform import RecordingPlatform

pytestmark = pytest.mark.asyncio(loop_scope="session")  # the local servers live in the session's loop

MOD_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)


def moderation_body(flagged: set[str]) -> dict[str, Any]:
    """A moderation response as api.openai.com sends it for omni-moderation-latest."""
    return {
        "id": "modr-5558",
        "model": "omni-moderation-latest",
        "results": [{
            "flagged": bool(flagged),
            "categories": {c: c in flagged for c in MOD_CATEGORIES},
            "category_scores": {c: (0.93 if c in flagged else 0.0004) for c in MOD_CATEGORIES},
            "category_applied_input_types": {c: ["text"] for c in MOD_CATEGORIES},
        }],
    }


def chat_body(content: Any) -> dict[str, Any]:
    """A chat completion as vLLM's OpenAI-compatible server sends it."""
    return {
        "id": "chatcmpl-9f1", "object": "chat.completion", "created": 1764700000,
        "model": "meta-llama/Llama-Guard-3-1B",
        "choices": [{
            "index": 0, "message": {"role": "assistant", "content": content, "tool_calls": []},
            "logprobs": None, "finish_reason": "stop", "stop_reason": None,
        }],
        "usage": {"prompt_tokens": 212, "total_tokens": 215, "completion_tokens": 3},
    }


class GuardServer:
    """Llama Guard (vLLM chat) and OpenAI moderation on one local port; ``mode`` says what to answer:
    a reply text (guard), a set of flagged categories (moderation), ``"hang"``, ``"500"``, ``"html"``
    or a raw JSON dict."""

    def __init__(self) -> None:
        self.guard: Any = "safe"
        self.moderation: Any = set()
        self.requests: list[tuple[str, dict]] = []
        self.release = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    async def _answer(self, mode: Any, ok_body) -> web.StreamResponse:
        if mode == "hang":
            await self.release.wait()  # answers only when the test ends: the client must time out
            return web.json_response(ok_body("safe" if ok_body is chat_body else set()))
        if mode == "500":
            return web.json_response({"error": {"message": "internal error", "type": "server_error"}}, status=500)
        if mode == "503":
            return web.Response(status=503, text="upstream unavailable")
        if mode == "html":
            return web.Response(status=200, text="<html>gateway</html>", content_type="text/html")
        if isinstance(mode, dict):
            return web.json_response(mode)
        return web.json_response(ok_body(mode))

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(("chat", body))
        return await self._answer(self.guard, chat_body)

    async def moderations(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(("moderations", body))
        return await self._answer(self.moderation, moderation_body)

    async def __aenter__(self) -> "GuardServer":
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/moderations", self.moderations)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.release.set()
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
async def server():
    async with GuardServer() as srv:
        yield srv


def guard(server: GuardServer, timeout_s: float = 2.0) -> LlamaGuardLayer:
    return LlamaGuardLayer(server.base_url, "meta-llama/Llama-Guard-3-1B", timeout_s=timeout_s, api_key="k")


def moderation(server: GuardServer, timeout_s: float = 2.0) -> ModerationLayer:
    return ModerationLayer("sk-test", base_url=server.base_url, timeout_s=timeout_s)


SAFE_OFFLINE = Triage()


# ------------------------------------------------------------------------------ Llama Guard


async def test_llama_guard_output_parsing():
    assert parse_llama_guard("safe") == (False, ())
    assert parse_llama_guard("\n\nunsafe\nS11") == (True, ("S11",))
    assert parse_llama_guard("unsafe\nS1,S11") == (True, ("S1", "S11"))
    for bad in ("", "unsafe", "unsafe\nS99", "I am not sure", "safe\nS11", None, 3):
        with pytest.raises(MalformedOutput):
            parse_llama_guard(bad)


async def test_llama_guard_crisis_and_safe_in_the_vllm_chat_format(server):
    layer = guard(server)
    assert isinstance(layer, SafetyClassifier)
    server.guard = "unsafe\nS11"
    (v,) = await run_layers([layer], "the rope is in the closet", "user")
    assert v.crisis and v.kind == "self_harm" and v.categories == ("S11",)
    kind, body = server.requests[-1]
    assert kind == "chat" and body["model"] == "meta-llama/Llama-Guard-3-1B"
    assert body["messages"] == [{"role": "user", "content": "the rope is in the closet"}]
    combined = combine(SAFE_OFFLINE, [v])
    assert combined.crisis and combined.action == "crisis_resources_and_alert" and combined.crisis_kind == "self_harm"

    server.guard = "unsafe\nS1"
    (v,) = await run_layers([layer], "going to hurt him", "user")
    assert v.crisis and v.kind == "harm_others"
    server.guard = "unsafe\nS6"  # specialized advice: not a crisis for a patient's question
    (v,) = await run_layers([layer], "how much glycopyrrolate can I take?", "user")
    assert v.label == "unsafe" and not combine(SAFE_OFFLINE, [v]).crisis

    server.guard = "safe"
    (v,) = await run_layers([layer], "what helps sweaty hands?", "user")
    assert v.label == "safe"
    assert combine(SAFE_OFFLINE, [v]).action == "answer"


async def test_llama_guard_judges_a_reply_with_the_patients_message(server):
    server.guard = "unsafe\nS6"
    (v,) = await run_layers([guard(server)], "Take 20 mg", "assistant", context="how much?")
    assert v.label == "unsafe"
    assert server.requests[-1][1]["messages"] == [
        {"role": "user", "content": "how much?"}, {"role": "assistant", "content": "Take 20 mg"},
    ]


@pytest.mark.parametrize("mode", ["hang", "500", "503", "html", "I think it is fine", "unsafe\nS77", {"choices": []}, {"nope": 1}])
async def test_a_failing_llama_guard_is_possible_crisis_never_safe(server, mode):
    server.guard = mode
    started = time.monotonic()
    (v,) = await run_layers([guard(server, timeout_s=5.0)], "hello there", "user", deadline_s=0.5)
    assert time.monotonic() - started < 3.0  # the deadline holds even when the server hangs
    assert v.failed and v.label == "error" and v.error
    combined = combine(SAFE_OFFLINE, [v])
    assert combined.possible_crisis and not combined.crisis
    assert combined.action == "answer_gated_possible_crisis" and combined.review_first


async def test_llama_guard_client_timeout_is_an_error(server):
    server.guard = "hang"
    (v,) = await run_layers([guard(server, timeout_s=0.3)], "hello", "user", deadline_s=10)
    assert v.failed


# ------------------------------------------------------------------------------ OpenAI moderation


async def test_moderation_crisis_and_safe_in_the_openai_format(server):
    layer = moderation(server)
    assert isinstance(layer, SafetyClassifier)
    server.moderation = {"self-harm", "self-harm/intent"}
    (v,) = await run_layers([layer], "tonight I end it", "user")
    assert v.crisis and v.kind == "self_harm" and "self-harm/intent" in v.categories and v.score > 0.9
    kind, body = server.requests[-1]
    assert kind == "moderations" and body == {"model": "omni-moderation-latest", "input": "tonight I end it"}

    server.moderation = {"self-harm/instructions"}
    (v,) = await run_layers([layer], "how many pills", "user")
    assert v.crisis

    server.moderation = {"violence"}
    (v,) = await run_layers([layer], "I will stab him", "user")
    assert v.crisis and v.kind == "harm_others"
    (v,) = await run_layers([ModerationLayer("k", base_url=server.base_url, violence_is_crisis=False)], "x", "user")
    assert v.label == "unsafe" and not v.crisis

    server.moderation = {"harassment"}
    (v,) = await run_layers([layer], "you idiot", "user")
    assert v.label == "unsafe" and not combine(SAFE_OFFLINE, [v]).crisis

    server.moderation = set()
    (v,) = await run_layers([layer], "what helps sweaty hands?", "user")
    assert v.label == "safe" and combine(SAFE_OFFLINE, [v]).action == "answer"


@pytest.mark.parametrize("mode", ["hang", "500", "503", "html", {"results": []}, {"results": [{"flagged": False}]}])
async def test_a_failing_moderation_is_possible_crisis_never_safe(server, mode):
    server.moderation = mode
    (v,) = await run_layers([moderation(server, timeout_s=5.0)], "hello there", "user", deadline_s=0.5)
    assert v.failed
    assert combine(SAFE_OFFLINE, [v]).possible_crisis


# ------------------------------------------------------------------------------ the policy


class Broken:
    name = "broken"

    async def classify(self, text, role="user", context=None):
        raise RuntimeError("boom")


class Wrong:
    name = "wrong"

    async def classify(self, text, role="user", context=None):
        return "safe"  # not a LayerVerdict: malformed


async def test_policy_any_crisis_wins_and_errors_never_read_as_safe(server):
    server.guard, server.moderation = "safe", {"self-harm"}
    verdicts = await run_layers([guard(server), moderation(server), Broken(), Wrong()], "x", "user")
    assert [v.label for v in verdicts] == ["safe", "crisis", "error", "error"]
    combined = combine(SAFE_OFFLINE, verdicts)
    assert combined.crisis and not combined.possible_crisis
    assert any("broken: error" in r for r in combined.reasons)
    # The offline crisis stays a crisis whatever the remote layers say.
    offline = Triage(crisis=True, crisis_kind="medical_emergency", crisis_score=0.9)
    assert combine(offline, [LayerVerdict("llama_guard", "safe")]).crisis_kind == "medical_emergency"
    # Review categories (abuse) hold the reply for a person.
    assert combine(SAFE_OFFLINE, [LayerVerdict("llama_guard", "review", categories=("S4",))]).possible_crisis


async def test_layers_run_concurrently_within_one_deadline(server):
    server.guard = server.moderation = "hang"
    started = time.monotonic()
    verdicts = await run_layers([guard(server, 5), moderation(server, 5)], "x", "user", deadline_s=0.4)
    assert time.monotonic() - started < 1.5 and all(v.failed for v in verdicts)


async def test_layers_are_built_from_the_settings_and_the_environment(tmp_path):
    cfg = load_settings(data_dir=tmp_path).safety
    assert build_layers(cfg, {}) == []  # nothing configured: the offline path only
    assert build_layers(cfg, {"OPENAI_API_KEY": ""}) == []
    names = [layer.name for layer in build_layers(cfg, {"OPENAI_API_KEY": "sk-x"})]
    assert names == ["openai_moderation"]
    cfg = load_settings(
        data_dir=tmp_path,
        safety={"llama_guard": {"base_url": "http://127.0.0.1:9/v1"}, "moderation": {"enabled": False}},
    ).safety
    assert [layer.name for layer in build_layers(cfg, {"OPENAI_API_KEY": "sk-x"})] == ["llama_guard"]


# ------------------------------------------------------------------------------ in the service


@pytest.fixture
async def guarded(server, tmp_path, monkeypatch):
    from bot.service import Service

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = load_settings(
        data_dir=tmp_path,
        safety={"llama_guard": {"base_url": server.base_url, "timeout_s": 2.0}, "remote_deadline_s": 1.0},
    )
    service = Service(settings, FixedBackend())
    service.add_platform(RecordingPlatform())
    await service.start(retry_loop=False)
    yield service
    await service.stop()


def patient(text: str, user: str = "pat") -> IncomingMessage:
    return IncomingMessage("local", user, "console", user, text, display_name=user)


async def test_a_crisis_only_llama_guard_sees_goes_down_the_crisis_path(server, guarded):
    assert isinstance(guarded.core.safety, SafetyLayer)
    assert [layer.name for layer in guarded.core.safety.remote] == ["llama_guard"]
    server.guard = "unsafe\nS11"
    result = await guarded.core.handle_message(patient("what helps sweaty hands in winter?"))
    assert result.status == "crisis"
    platform = guarded.core.platforms["local"]
    assert [a["urgent"] for a in platform.alerts] == [True]
    assert guarded.backend.calls == []  # the model was not asked


async def test_llama_guard_down_holds_the_reply_for_a_person(server, guarded):
    server.guard = "500"
    result = await guarded.core.handle_message(patient("what helps sweaty hands in winter?"))
    flags = await guarded.db.fetchval("SELECT risk_flags FROM replies WHERE id = ?", (result.reply_id,))
    delivery = await guarded.db.fetchval("SELECT delivery FROM replies WHERE id = ?", (result.reply_id,))
    assert "possible_crisis" in flags and delivery == "held"


async def test_a_reply_llama_guard_flags_is_held_and_blocked(server, guarded):
    calls = 0

    async def per_role(text, role="user", context=None):
        nonlocal calls
        calls += 1
        return LayerVerdict("llama_guard", "safe") if role == "user" else LayerVerdict("llama_guard", "unsafe", categories=("S6",))

    guarded.core.safety.remote[0].classify = per_role  # the wire format is covered above; here the routing
    result = await guarded.core.handle_message(patient("what helps sweaty hands in winter?"))
    flags = await guarded.db.fetchval("SELECT risk_flags FROM replies WHERE id = ?", (result.reply_id,))
    delivery = await guarded.db.fetchval("SELECT delivery FROM replies WHERE id = ?", (result.reply_id,))
    assert calls == 2 and "blocked:llama_guard" in flags and delivery == "held"

