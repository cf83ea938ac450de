"""A local stand-in for Slack, on 127.0.0.1, that the tests control.

- The Web API (``http://127.0.0.1:PORT/api/<method>``) for ``AsyncWebClient(base_url=...)``:
  answers the methods the bot uses with Slack-shaped responses, checks tokens, keeps the
  messages it was asked to post/update/delete, and records every call. A test can make the
  next call(s) of a method fail with ``ok: false`` or with HTTP 429 (``Retry-After``).
- ``response_url`` endpoints (``/response/<name>``) for ``respond()``, recorded the same way.
- Socket Mode: ``apps.connections.open`` returns ``ws://127.0.0.1:PORT/socket``; the websocket
  sends ``hello`` on connect, the test pushes ``events_api`` / ``slash_commands`` /
  ``interactive`` envelopes, and the acks (``envelope_id`` + optional payload) are kept.

Nothing here imports the bot: it speaks Slack's wire format only.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

BOT_TOKEN = "xoxb-test-bot-token"
APP_TOKEN = "xapp-test-app-token"
BOT_USER = "U0BOT"
BOT_ID = "B0BOT"
TEAM = "T0TEAM"


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    token: str | None
    verb: str
    at: float = field(default_factory=time.monotonic)
    status: int = 200
    response: dict[str, Any] = field(default_factory=dict)


class FakeSlack:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.responses: list[Call] = []  # posts to response_url
        self.messages: dict[str, dict[str, Any]] = {}  # ts -> stored message
        self.deleted: list[str] = []
        self.usergroups: dict[str, list[str]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.bot_tokens = {BOT_TOKEN}
        self.app_tokens = {APP_TOKEN}
        self._failures: dict[str, deque[tuple[int, dict[str, Any], dict[str, str]]]] = defaultdict(deque)
        self._ts = itertools.count(1)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0
        # Socket Mode
        self.ws: web.WebSocketResponse | None = None
        self.socket_connections = 0
        self.acks: dict[str, dict[str, Any]] = {}
        self.socket_messages: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> "FakeSlack":
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/response/{name}", self._response_url)
        app.router.add_get("/socket", self._socket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def response_url(self, name: str | None = None) -> str:
        return f"http://127.0.0.1:{self.port}/response/{name or uuid.uuid4().hex}"

    # ------------------------------------------------------------------ test controls

    def fail(self, method: str, error: str = "internal_error", times: int = 1) -> None:
        """The next ``times`` calls of ``method`` answer ``{"ok": false, "error": error}``."""
        for _ in range(times):
            self._failures[method].append((200, {"ok": False, "error": error}, {}))

    def rate_limit(self, method: str, times: int = 1, retry_after: int = 0) -> None:
        """The next ``times`` calls of ``method`` answer HTTP 429 with ``Retry-After``."""
        for _ in range(times):
            self._failures[method].append((429, {"ok": False, "error": "ratelimited"},
                                           {"Retry-After": str(retry_after)}))

    def calls_to(self, method: str, where: Callable[[Call], bool] | None = None) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.status == 200 and c.response.get("ok")
                and (where is None or where(c))]

    def attempts(self, method: str) -> list[Call]:
        """Every call of ``method``, failed ones included."""
        return [c for c in self.calls if c.method == method]

    def thread(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """Messages the bot has in a thread now, in order (updates applied, deletions removed)."""
        return [m for ts, m in sorted(self.messages.items(), key=lambda kv: float(kv[0]))
                if m["channel"] == channel and m.get("thread_ts") == thread_ts]

    def channel_messages(self, channel: str) -> list[dict[str, Any]]:
        return [m for ts, m in sorted(self.messages.items(), key=lambda kv: float(kv[0])) if m["channel"] == channel]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Wait until ``predicate()`` is truthy (re-checked whenever a call or ack arrives)."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout} s; calls: {[c.method for c in self.calls]}")
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except asyncio.TimeoutError:
                    pass

    async def wait_calls(self, method: str, count: int = 1, timeout: float = 10.0,
                         where: Callable[[Call], bool] | None = None) -> list[Call]:
        return await self.wait_for(lambda: (found := self.calls_to(method, where)) and len(found) >= count and found,
                                   timeout)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ------------------------------------------------------------------ Web API

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            raw = await request.text()
            if request.content_type == "application/json":
                args.update(json.loads(raw or "{}"))
            else:
                args.update(dict(parse_qsl(raw, keep_blank_values=True)))
        for key in ("blocks", "view", "attachments"):
            if isinstance(args.get(key), str):
                try:
                    args[key] = json.loads(args[key])
                except ValueError:
                    pass
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else args.get("token")
        call = Call(method, args, token, request.method)
        self.calls.append(call)
        try:
            if self._failures[method]:
                status, body, headers = self._failures[method].popleft()
                call.status, call.response = status, body
                return web.json_response(body, status=status, headers=headers)
            body = self._answer(method, args, token)
            call.response = body
            return web.json_response(body)
        finally:
            await self._notify()

    def _answer(self, method: str, args: dict[str, Any], token: str | None) -> dict[str, Any]:
        if method == "apps.connections.open":
            if token not in self.app_tokens:
                return {"ok": False, "error": "invalid_auth" if not (token or "").startswith("xoxb-")
                        else "not_allowed_token_type"}
            return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/socket?ticket={uuid.uuid4().hex}"}
        if token not in self.bot_tokens:
            return {"ok": False, "error": "invalid_auth" if token else "not_authed"}
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return {"ok": True}
        return handler(args)

    def _new_ts(self) -> str:
        return f"{1_700_000_000 + next(self._ts)}.000100"

    def _m_auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://llm4sweat-test.slack.com/", "team": "Test Clinic", "user": "llm4sweat",
                "team_id": TEAM, "user_id": BOT_USER, "bot_id": BOT_ID, "is_enterprise_install": False}

    def _m_chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not args.get("text") and not args.get("blocks"):
            return {"ok": False, "error": "no_text"}
        ts = self._new_ts()
        message = {"channel": channel, "ts": ts, "text": args.get("text", ""), "blocks": args.get("blocks") or [],
                   "thread_ts": args.get("thread_ts"), "bot_id": BOT_ID, "user": BOT_USER}
        self.messages[ts] = message
        return {"ok": True, "channel": channel, "ts": ts, "message": {k: v for k, v in message.items() if v is not None}}

    def _m_chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get(args.get("ts", ""))
        if message is None or message["channel"] != args.get("channel"):
            return {"ok": False, "error": "message_not_found"}
        message.update(text=args.get("text", ""), blocks=args.get("blocks") or [])
        return {"ok": True, "channel": message["channel"], "ts": message["ts"], "text": message["text"]}

    def _m_chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.messages.pop(args.get("ts", ""), None) is None:
            return {"ok": False, "error": "message_not_found"}
        self.deleted.append(args["ts"])
        return {"ok": True, "channel": args.get("channel"), "ts": args.get("ts")}

    def _m_chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("user") or not args.get("channel"):
            return {"ok": False, "error": "user_not_in_channel"}
        return {"ok": True, "message_ts": self._new_ts()}

    def _m_views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("trigger_id"):
            return {"ok": False, "error": "invalid_trigger_id"}
        view = args.get("view") or {}
        if len(view.get("title", {}).get("text", "")) > 24:
            return {"ok": False, "error": "invalid_arguments"}
        return {"ok": True, "view": {"id": "V" + uuid.uuid4().hex[:8].upper(), **view}}

    def _m_usergroups_users_list(self, args: dict[str, Any]) -> dict[str, Any]:
        group = args.get("usergroup")
        if group not in self.usergroups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(self.usergroups[group])}

    def _m_users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = args.get("user", "")
        info = self.users.get(user, {"name": user.lower(), "real_name": f"User {user}"})
        answer = {"id": user, "name": info.get("name"), "real_name": info.get("real_name"), "tz": "Europe/London",
                  "profile": {"display_name": info.get("display_name", "")}}
        if str(args.get("include_locale", "")).lower() in ("true", "1"):
            answer["locale"] = info.get("locale", "en-US")
        return {"ok": True, "user": answer}

    # ------------------------------------------------------------------ response_url

    async def _response_url(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.responses.append(Call("response_url", {**body, "_name": request.match_info["name"]}, None, "POST",
                                   response={"ok": True}))
        await self._notify()
        return web.Response(text="ok")

    def responses_to(self, name: str) -> list[dict[str, Any]]:
        return [c.args for c in self.responses if c.args["_name"] == name]

    # ------------------------------------------------------------------ Socket Mode

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.ws = ws
        self.socket_connections += 1
        await ws.send_str(json.dumps({"type": "hello", "num_connections": 1,
                                      "debug_info": {"host": "fake-slack", "approximate_connection_time": 3600},
                                      "connection_info": {"app_id": "A0TEST"}}))
        await self._notify()
        async for frame in ws:
            if frame.type == WSMsgType.TEXT:
                data = json.loads(frame.data)
                self.socket_messages.append(data)
                if "envelope_id" in data:
                    self.acks[data["envelope_id"]] = data
                await self._notify()
            elif frame.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
        return ws

    async def send_envelope(self, kind: str, payload: dict[str, Any], *, retry_attempt: int | None = None,
                            retry_reason: str | None = None) -> str:
        """Push one envelope to the connected app; returns its envelope_id."""
        await self.wait_for(lambda: self.ws is not None and not self.ws.closed)
        envelope_id = uuid.uuid4().hex
        envelope: dict[str, Any] = {"envelope_id": envelope_id, "type": kind, "payload": payload,
                                    "accepts_response_payload": kind != "events_api"}
        if kind == "events_api":
            envelope["retry_attempt"] = retry_attempt or 0
            envelope["retry_reason"] = retry_reason or ""
        await self.ws.send_str(json.dumps(envelope))  # type: ignore[union-attr]
        return envelope_id

    async def wait_ack(self, envelope_id: str, timeout: float = 10.0) -> dict[str, Any]:
        return await self.wait_for(lambda: self.acks.get(envelope_id), timeout)
