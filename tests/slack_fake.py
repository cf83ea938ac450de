"""A local stand-in for Slack, on 127.0.0.1, that the tests control.

- The Web API (``http://127.0.0.1:PORT/api/<method>``) for ``AsyncWebClient(base_url=...)``:
  answers the methods the bot uses with Slack-shaped responses, checks tokens, keeps the
  messages it was asked to post/update/delete (and those patients wrote, for
  ``conversations.history`` / ``conversations.replies``), and records every call. A test can
  make the next call(s) of a method fail with ``ok: false`` or with HTTP 429 (``Retry-After``).
- ``response_url`` endpoints (``/response/<name>``) for ``respond()``, recorded the same way.
- Socket Mode: ``apps.connections.open`` returns ``ws://127.0.0.1:PORT/socket``; the websocket
  sends ``hello`` on connect, the test pushes ``events_api`` / ``slash_commands`` /
  ``interactive`` envelopes, and the acks (``envelope_id`` + optional payload) are kept.
- HTTP mode: :class:`SlackHTTP` is Slack's side of the Request URL (signed POSTs).

As strict as Slack, so that an app passing here does not fail there:

* A method the fake does not implement answers ``{"ok": false, "error": "unknown_method"}``,
  never ``ok: true``.
* Block Kit limits (https://docs.slack.dev/reference/block-kit/blocks and
  /block-elements, /composition-objects; https://docs.slack.dev/reference/methods/chat.postMessage):
  ≤ 50 blocks in a message, ≤ 100 in a modal; block_id and action_id ≤ 255; section text ≤ 3,000,
  ≤ 10 fields of ≤ 2,000; header ≤ 150; context ≤ 10 elements; actions ≤ 25 elements; input label
  and hint ≤ 2,000; button text ≤ 75, value ≤ 2,000; select placeholder ≤ 150, ≤ 100 options of
  text ≤ 75 and value ≤ 150; confirm title ≤ 100, text ≤ 300, buttons ≤ 30; plain_text_input
  max_length 1–3,000 (an initial_value longer than it is refused), placeholder ≤ 150; modal title,
  submit and close ≤ 24, private_metadata ≤ 3,000, callback_id ≤ 255. A payload breaking one is
  answered ``invalid_blocks`` with ``errors`` naming the JSON pointer, as Slack does. Message
  text over 40,000 characters is refused with ``msg_too_long``.
* The 3-second acknowledgement (https://docs.slack.dev/apis/events-api/#responding: "Your app
  should respond to the event request with an HTTP 2xx within three seconds. If it does not, we'll
  consider the event delivery attempt failed"; the same for slash commands and interactions,
  https://docs.slack.dev/interactivity/handling-user-interaction#acknowledgment_response): an ack
  later than ``ack_deadline_s`` is recorded in ``late_acks``; events are then redelivered, in HTTP
  mode with ``X-Slack-Retry-Num`` / ``X-Slack-Retry-Reason: http_timeout`` headers (also
  ``http_error`` after a 5xx), in Socket Mode with ``retry_attempt`` / ``retry_reason``
  (https://docs.slack.dev/apis/events-api/#retries: up to three retries).
* Ack and ``respond()`` payloads are held to the same Block Kit limits (``invalid_responses``).
* Scopes (https://docs.slack.dev/reference/scopes; each method's page names its scope): every
  Web API answer to a bot token carries the scopes granted to it in ``x-oauth-scopes``, as
  Slack's does; a method whose scope is not granted answers ``missing_scope`` with ``needed`` and
  ``provided``. ``scopes`` starts as what the app made from deploy/slack-manifest.yaml is granted.
* Refusals on any route (chat.postMessage: https://docs.slack.dev/reference/methods/chat.postMessage#errors):
  ``refuse(channel, error)`` makes every post to ``channel`` (a channel id, or a user id for the
  app's DM with that user) answer ``is_archived``, ``channel_not_found``, ``not_in_channel`` …
  until ``unrefuse``. Posting to a user id posts in the app's DM with them (channel ``D…``), as
  Slack does; ``chat.getPermalink`` answers the message's permalink.
* File uploads, the way ``files_upload_v2`` makes them (https://docs.slack.dev/reference/methods/
  files.getUploadURLExternal, /files.completeUploadExternal): ``files.getUploadURLExternal`` needs
  ``filename`` and a whole-number ``length`` ("invalid_arguments" otherwise) and answers an
  ``upload_url`` on this server and a ``file_id``; the bytes are POSTed there (the size must be
  the length announced: HTTP 400 otherwise); ``files.completeUploadExternal`` with ``files`` (a
  JSON list of ``{id, title}``) shares them in ``channel_id`` (optionally in ``thread_ts``) and
  refuses an id never issued or never uploaded with "file_not_found" (our reading: Slack's page
  lists that error without saying which case it covers). Both need ``files:write``. Shared
  files are kept in ``files``.
* Channel membership (conversations.history, chat.postMessage: "not_in_channel" / "channel_not_found"):
  ``remove_bot(channel)`` takes the bot out of a channel; reading or posting there is then
  refused with ``not_in_channel`` (a public channel) or ``channel_not_found`` (a private one, which
  the bot cannot even see).

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

import aiohttp
from aiohttp import WSMsgType, web

# Slack's limits (sources in the module docstring).
MESSAGE_BLOCKS_MAX = 50
MODAL_BLOCKS_MAX = 100
MESSAGE_TEXT_MAX = 40_000
ID_MAX = 255
SECTION_TEXT_MAX = 3000
SECTION_FIELDS_MAX = 10
SECTION_FIELD_MAX = 2000
HEADER_TEXT_MAX = 150
CONTEXT_ELEMENTS_MAX = 10
TEXT_OBJECT_MAX = 3000
ACTIONS_ELEMENTS_MAX = 25
INPUT_LABEL_MAX = 2000
BUTTON_TEXT_MAX = 75
BUTTON_VALUE_MAX = 2000
PLACEHOLDER_MAX = 150
OPTIONS_MAX = 100
OPTION_TEXT_MAX = 75
OPTION_VALUE_MAX = 150
PLAIN_TEXT_INPUT_MAX = 3000
MODAL_TITLE_MAX = 24
PRIVATE_METADATA_MAX = 3000
ACK_DEADLINE_S = 3.0
EVENT_RETRY_DELAYS_S = (0.0, 60.0, 300.0)  # Slack: at once, after a minute, after five minutes
# The bot scopes of deploy/slack-manifest.yaml (tests/test_doctor.py checks they agree).
MANIFEST_SCOPES = ("app_mentions:read", "channels:history", "groups:history", "im:history", "chat:write", "commands",
                   "files:write",
                   "reactions:read", "usergroups:read", "users:read")
# The scope each Web API method the bot calls needs (history: by the kind of conversation).
METHOD_SCOPES = {"chat.postMessage": "chat:write", "chat.update": "chat:write", "chat.delete": "chat:write",
                 "chat.postEphemeral": "chat:write", "usergroups.users.list": "usergroups:read",
                 "users.info": "users:read", "files.getUploadURLExternal": "files:write",
                 "files.completeUploadExternal": "files:write"}
HISTORY_METHODS = ("conversations.history", "conversations.replies")

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


class _BlockErrors:
    """Block Kit errors in Slack's style: ``must be ... [json-pointer:/blocks/0/text/text]``."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def add(self, pointer: str, problem: str) -> None:
        self.errors.append(f"{problem} [json-pointer:{pointer}]")

    def length(self, pointer: str, value: Any, limit: int, required: bool = False) -> None:
        if value is None or value == "":
            if required:
                self.add(pointer, "must provide a non-empty string")
            return
        if len(str(value)) > limit:
            self.add(pointer, f"must be less than {limit + 1} characters")

    def count(self, pointer: str, items: Any, limit: int) -> None:
        if len(items or []) > limit:
            self.add(pointer, f"must be no more than {limit} items")

    def text(self, pointer: str, obj: Any, limit: int = TEXT_OBJECT_MAX, plain_only: bool = False,
             required: bool = True) -> None:
        if obj is None:
            if required:
                self.add(pointer, "must provide an object")
            return
        if not isinstance(obj, dict) or obj.get("type") not in ("plain_text", "mrkdwn"):
            self.add(pointer + "/type", "must be one of plain_text, mrkdwn")
            return
        if plain_only and obj.get("type") != "plain_text":
            self.add(pointer + "/type", "must be plain_text")
        self.length(pointer + "/text", obj.get("text"), limit, required=True)

    def element(self, at: str, e: dict[str, Any]) -> None:
        kind = e.get("type")
        self.length(at + "/action_id", e.get("action_id"), ID_MAX)
        if kind == "button":
            self.text(at + "/text", e.get("text"), BUTTON_TEXT_MAX, plain_only=True)
            self.length(at + "/value", e.get("value"), BUTTON_VALUE_MAX)
            if e.get("confirm"):
                c = e["confirm"]
                self.text(at + "/confirm/title", c.get("title"), 100, plain_only=True)
                self.text(at + "/confirm/text", c.get("text"), 300)
                self.text(at + "/confirm/confirm", c.get("confirm"), 30, plain_only=True)
                self.text(at + "/confirm/deny", c.get("deny"), 30, plain_only=True)
        elif kind in ("static_select", "multi_static_select"):
            self.text(at + "/placeholder", e.get("placeholder"), PLACEHOLDER_MAX, plain_only=True, required=False)
            options = e.get("options") or []
            self.count(at + "/options", options, OPTIONS_MAX)
            for k, option in enumerate(options + ([e["initial_option"]] if e.get("initial_option") else [])):
                where = f"{at}/options/{k}" if k < len(options) else f"{at}/initial_option"
                self.text(where + "/text", option.get("text"), OPTION_TEXT_MAX, plain_only=True)
                self.length(where + "/value", option.get("value"), OPTION_VALUE_MAX, required=True)
        elif kind == "plain_text_input":
            self.text(at + "/placeholder", e.get("placeholder"), PLACEHOLDER_MAX, plain_only=True, required=False)
            limit = e.get("max_length")
            if limit is not None and not 1 <= int(limit) <= PLAIN_TEXT_INPUT_MAX:
                self.add(at + "/max_length", f"must be between 1 and {PLAIN_TEXT_INPUT_MAX}")
            if e.get("min_length") is not None and not 0 <= int(e["min_length"]) <= PLAIN_TEXT_INPUT_MAX:
                self.add(at + "/min_length", f"must be between 0 and {PLAIN_TEXT_INPUT_MAX}")
            cap = min(int(limit), PLAIN_TEXT_INPUT_MAX) if limit is not None else PLAIN_TEXT_INPUT_MAX
            self.length(at + "/initial_value", e.get("initial_value"), cap)

    def blocks(self, blocks: Any, limit: int, root: str = "/blocks") -> None:
        if not isinstance(blocks, list):
            self.add(root, "must be an array")
            return
        self.count(root, blocks, limit)
        for i, b in enumerate(blocks):
            at = f"{root}/{i}"
            self.length(at + "/block_id", b.get("block_id"), ID_MAX)
            kind = b.get("type")
            if kind == "section":
                if b.get("text") is None and not b.get("fields"):
                    self.add(at, "must provide either text or fields")
                self.text(at + "/text", b.get("text"), SECTION_TEXT_MAX, required=False)
                self.count(at + "/fields", b.get("fields"), SECTION_FIELDS_MAX)
                for j, f in enumerate(b.get("fields") or []):
                    self.text(f"{at}/fields/{j}", f, SECTION_FIELD_MAX)
                if b.get("accessory"):
                    self.element(at + "/accessory", b["accessory"])
            elif kind == "header":
                self.text(at + "/text", b.get("text"), HEADER_TEXT_MAX, plain_only=True)
            elif kind == "context":
                elements = b.get("elements") or []
                self.count(at + "/elements", elements, CONTEXT_ELEMENTS_MAX)
                for j, e in enumerate(elements):
                    if e.get("type") in ("plain_text", "mrkdwn"):
                        self.text(f"{at}/elements/{j}", e)
            elif kind == "actions":
                elements = b.get("elements") or []
                self.count(at + "/elements", elements, ACTIONS_ELEMENTS_MAX)
                for j, e in enumerate(elements):
                    self.element(f"{at}/elements/{j}", e)
            elif kind == "input":
                self.text(at + "/label", b.get("label"), INPUT_LABEL_MAX, plain_only=True)
                self.text(at + "/hint", b.get("hint"), INPUT_LABEL_MAX, plain_only=True, required=False)
                self.element(at + "/element", b.get("element") or {})
            elif kind not in ("divider", "image", "rich_text", "markdown", "file", "video"):
                self.add(at + "/type", f"unsupported type {kind!r}")

    def view(self, view: Any) -> None:
        if not isinstance(view, dict):
            self.add("/view", "must be an object")
            return
        self.text("/view/title", view.get("title"), MODAL_TITLE_MAX, plain_only=True)
        self.text("/view/submit", view.get("submit"), MODAL_TITLE_MAX, plain_only=True, required=False)
        self.text("/view/close", view.get("close"), MODAL_TITLE_MAX, plain_only=True, required=False)
        self.length("/view/callback_id", view.get("callback_id"), ID_MAX)
        self.length("/view/private_metadata", view.get("private_metadata"), PRIVATE_METADATA_MAX)
        self.blocks(view.get("blocks"), MODAL_BLOCKS_MAX, "/view/blocks")
        if any(b.get("type") == "input" for b in view.get("blocks") or []) and not view.get("submit"):
            self.add("/view/submit", "must provide submit when the view has input blocks")


def message_errors(args: dict[str, Any]) -> tuple[str, list[str]] | None:
    """Why Slack would refuse a message payload (``text`` / ``blocks``): (error, details) or None."""
    if len(str(args.get("text") or "")) > MESSAGE_TEXT_MAX:
        return "msg_too_long", []
    if args.get("blocks") is not None:
        errors = _BlockErrors()
        errors.blocks(args["blocks"], MESSAGE_BLOCKS_MAX)
        if errors.errors:
            return "invalid_blocks", errors.errors
    return None


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
        self.scopes: set[str] = set(MANIFEST_SCOPES)  # granted to the bot token
        self.private_channels: set[str] = set()  # channels that are private (groups:history)
        self.not_member: set[str] = set()  # channels the bot is not in (remove_bot)
        self.refusals: dict[str, str] = {}  # channel or user id -> the error every post there answers
        self.user_messages: list[dict[str, Any]] = []  # what people wrote (for history and replies)
        self.uploads: dict[str, dict[str, Any]] = {}  # file id -> {filename, length, data}
        self.files: list[dict[str, Any]] = []  # files shared by files.completeUploadExternal
        self.ack_deadline_s = ACK_DEADLINE_S
        self.event_retry_delays_s = EVENT_RETRY_DELAYS_S
        self.late_acks: list[dict[str, Any]] = []  # deliveries the app did not acknowledge in time
        self.redeliveries: list[dict[str, Any]] = []  # events Slack sent again (retry number, reason)
        self.invalid_responses: list[dict[str, Any]] = []  # ack / respond() payloads Slack would refuse
        self._watchdogs: set[asyncio.Task[Any]] = set()
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
        app.router.add_post("/upload/{file_id}", self._upload)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for task in list(self._watchdogs):
            task.cancel()
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

    def remove_bot(self, channel: str, private: bool = False) -> None:
        """Someone removes the bot from ``channel`` (or it was never invited)."""
        self.not_member.add(channel)
        if private:
            self.private_channels.add(channel)

    def refuse(self, channel: str, error: str) -> None:
        """Every chat.postMessage to ``channel`` (or to a user id: their DM) answers ``error`` from now on."""
        self.refusals[channel] = error

    def unrefuse(self, channel: str | None = None) -> None:
        if channel is None:
            self.refusals.clear()
        else:
            self.refusals.pop(channel, None)

    @staticmethod
    def dm_of(user: str) -> str:
        """The id of the app's direct message with ``user``."""
        return "D" + user

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
            headers = {"x-oauth-scopes": ",".join(sorted(self.scopes))} if token in self.bot_tokens else {}
            return web.json_response(body, headers=headers)
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
            return {"ok": False, "error": "unknown_method", "req_method": method}
        needed = self._needed_scope(method, args)
        if needed is not None and needed not in self.scopes:
            return {"ok": False, "error": "missing_scope", "needed": needed, "provided": ",".join(sorted(self.scopes))}
        channel = args.get("channel", "")
        if method == "chat.postMessage" and channel in self.refusals:
            return {"ok": False, "error": self.refusals[channel]}
        if method == "files.completeUploadExternal":
            channel = args.get("channel_id", "")
        if (method in HISTORY_METHODS or method in ("chat.postMessage", "files.completeUploadExternal")) \
                and channel in self.not_member:
            return {"ok": False, "error": "channel_not_found" if channel in self.private_channels else "not_in_channel"}
        return handler(args)

    def _needed_scope(self, method: str, args: dict[str, Any]) -> str | None:
        if method in HISTORY_METHODS:
            channel = str(args.get("channel", ""))
            if channel.startswith("D"):
                return "im:history"
            return "groups:history" if channel in self.private_channels else "channels:history"
        return METHOD_SCOPES.get(method)

    @staticmethod
    def _refused(args: dict[str, Any]) -> dict[str, Any] | None:
        problem = message_errors(args)
        if problem is None:
            return None
        error, details = problem
        answer: dict[str, Any] = {"ok": False, "error": error}
        if details:
            answer["errors"] = details
            answer["response_metadata"] = {"messages": [f"[ERROR] {d}" for d in details]}
        return answer

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
        if (refused := self._refused(args)) is not None:
            return refused
        if channel[:1] in ("U", "W"):  # a user id: the app's DM with them
            channel = self.dm_of(channel)
        ts = self._new_ts()
        message = {"channel": channel, "ts": ts, "text": args.get("text", ""), "blocks": args.get("blocks") or [],
                   "thread_ts": args.get("thread_ts"), "bot_id": BOT_ID, "user": BOT_USER}
        self.messages[ts] = message
        return {"ok": True, "channel": channel, "ts": ts, "message": {k: v for k, v in message.items() if v is not None}}

    def _m_chat_getPermalink(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel", ""), args.get("message_ts", "")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not ts:
            return {"ok": False, "error": "message_not_found"}
        return {"ok": True, "channel": channel,
                "permalink": f"https://llm4sweat-test.slack.com/archives/{channel}/p{ts.replace('.', '')}"}

    def _m_chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get(args.get("ts", ""))
        if message is None or message["channel"] != args.get("channel"):
            return {"ok": False, "error": "message_not_found"}
        if (refused := self._refused(args)) is not None:
            return refused
        message.update(text=args.get("text", ""), blocks=args.get("blocks") or [])
        return {"ok": True, "channel": message["channel"], "ts": message["ts"], "text": message["text"]}

    def _m_files_getUploadURLExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        filename, length = args.get("filename"), str(args.get("length", ""))
        if not filename or not length.isdigit():
            return {"ok": False, "error": "invalid_arguments"}
        file_id = f"F{next(self._ts):08d}"
        self.uploads[file_id] = {"filename": filename, "length": int(length), "data": None}
        return {"ok": True, "upload_url": f"http://127.0.0.1:{self.port}/upload/{file_id}", "file_id": file_id}

    async def _upload(self, request: web.Request) -> web.Response:
        upload = self.uploads.get(request.match_info["file_id"])
        data = await request.read()
        try:
            if upload is None:
                return web.Response(status=404, text="Not Found")
            if len(data) != upload["length"]:
                return web.Response(status=400, text=f"length {len(data)} is not the announced {upload['length']}")
            upload["data"] = data
            return web.Response(text=f"OK - {len(data)}")
        finally:
            await self._notify()

    def _m_files_completeUploadExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            files = json.loads(args["files"]) if isinstance(args.get("files"), str) else args.get("files")
            assert isinstance(files, list) and files and all(isinstance(f, dict) and f.get("id") for f in files)
        except (KeyError, ValueError, AssertionError):
            return {"ok": False, "error": "invalid_arguments"}
        shared = []
        for f in files:
            upload = self.uploads.get(f["id"])
            if upload is None or upload["data"] is None:
                return {"ok": False, "error": "file_not_found"}
            entry = {"id": f["id"], "title": f.get("title") or upload["filename"], "name": upload["filename"],
                     "size": upload["length"], "data": upload["data"], "channel": args.get("channel_id"),
                     "thread_ts": args.get("thread_ts"), "initial_comment": args.get("initial_comment")}
            self.files.append(entry)
            shared.append({k: v for k, v in entry.items() if k in ("id", "title", "name", "size")})
        return {"ok": True, "files": shared}

    def _m_chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.messages.pop(args.get("ts", ""), None) is None:
            return {"ok": False, "error": "message_not_found"}
        self.deleted.append(args["ts"])
        return {"ok": True, "channel": args.get("channel"), "ts": args.get("ts")}

    def _m_chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("user") or not args.get("channel"):
            return {"ok": False, "error": "user_not_in_channel"}
        if (refused := self._refused(args)) is not None:
            return refused
        return {"ok": True, "message_ts": self._new_ts()}

    def _m_views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("trigger_id"):
            return {"ok": False, "error": "invalid_trigger_id"}
        view = args.get("view") or {}
        errors = _BlockErrors()
        errors.view(view)
        if errors.errors:
            return {"ok": False, "error": "invalid_arguments", "response_metadata": {"messages": errors.errors}}
        return {"ok": True, "view": {"id": "V" + uuid.uuid4().hex[:8].upper(), **view}}

    def _m_usergroups_users_list(self, args: dict[str, Any]) -> dict[str, Any]:
        group = args.get("usergroup")
        if group not in self.usergroups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(self.usergroups[group])}

    def post_as_user(self, channel: str, user: str, text: str, thread_ts: str | None = None,
                     channel_type: str = "channel") -> dict[str, Any]:
        """A person writes in Slack (whether or not the app is connected); returns the event Slack
        would deliver. The message is kept for ``conversations.history`` / ``.replies``."""
        event = {"type": "message", "channel": channel, "user": user, "text": text, "ts": self._new_ts(),
                 "channel_type": channel_type, "team": TEAM}
        if thread_ts:
            event["thread_ts"] = thread_ts
        self.user_messages.append(event)
        return dict(event)

    def record_user_message(self, event: dict[str, Any]) -> None:
        """What a person wrote is in Slack's history whether or not the app got the event."""
        if event.get("type") not in ("message", "app_mention") or event.get("bot_id") or event.get("subtype") \
                not in (None, "file_share", "thread_broadcast") or not event.get("ts") or not event.get("channel"):
            return
        if not any(m["ts"] == event.get("ts") and m["channel"] == event.get("channel") for m in self.user_messages):
            self.user_messages.append({k: v for k, v in event.items() if k != "event_ts"} | {"type": "message"})

    def _all_in(self, channel: str) -> list[dict[str, Any]]:
        stored = [dict(m, type="message") for m in self.messages.values() if m["channel"] == channel]
        stored += [m for m in self.user_messages if m["channel"] == channel]
        return sorted(stored, key=lambda m: float(m["ts"]))

    @staticmethod
    def _page(found: list[dict[str, Any]], args: dict[str, Any], newest_first: bool) -> dict[str, Any]:
        oldest = float(args.get("oldest") or 0)
        inclusive = str(args.get("inclusive", "")).lower() in ("1", "true")
        found = [m for m in found if float(m["ts"]) > oldest or (inclusive and float(m["ts"]) == oldest)]
        if newest_first:
            found = list(reversed(found))
        limit = max(1, min(int(args.get("limit") or 100), 999))
        start = int(args.get("cursor") or 0)
        page = found[start:start + limit]
        more = start + limit < len(found)
        clean = [{k: v for k, v in m.items() if k not in ("channel", "channel_type") and v is not None} for m in page]
        return {"ok": True, "messages": clean, "has_more": more,
                "response_metadata": {"next_cursor": str(start + limit) if more else ""}}

    def _m_conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        """Top-level messages of a channel, newest first (thread replies are not included)."""
        channel = args.get("channel", "")
        top = [m for m in self._all_in(channel) if not m.get("thread_ts") or m.get("thread_ts") == m["ts"]]
        return self._page(top, args, newest_first=True)

    def _m_conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        """A thread: its parent first, then the replies, oldest first."""
        channel, ts = args.get("channel", ""), args.get("ts", "")
        thread = [m for m in self._all_in(channel) if m["ts"] == ts or m.get("thread_ts") == ts]
        if not any(m["ts"] == ts for m in thread):
            return {"ok": False, "error": "thread_not_found"}
        parent = [m for m in thread if m["ts"] == ts]
        answer = self._page([m for m in thread if m["ts"] != ts], args, newest_first=False)
        answer["messages"] = [{k: v for k, v in m.items() if k not in ("channel", "channel_type")} for m in parent] + answer["messages"]
        return answer

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
        problem = message_errors(body)
        if problem is not None:
            self.invalid_responses.append({"via": "response_url", "error": problem, "payload": body})
            await self._notify()
            return web.Response(status=400, text=problem[0])
        self.responses.append(Call("response_url", {**body, "_name": request.match_info["name"]}, None, "POST",
                                   response={"ok": True}))
        await self._notify()
        return web.Response(text="ok")

    def check_ack_payload(self, via: str, payload: Any) -> None:
        """Slack holds an ack's payload (a command's reply, a modal's errors) to the message limits."""
        if isinstance(payload, dict):
            problem = message_errors(payload)
            if problem is not None:
                self.invalid_responses.append({"via": via, "error": problem, "payload": payload})

    def late(self, kind: str, detail: Any) -> None:
        self.late_acks.append({"kind": kind, "detail": detail, "at": time.monotonic()})

    def _watch(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._watchdogs.add(task)
        task.add_done_callback(self._watchdogs.discard)

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
        """Push one envelope to the connected app; returns its envelope_id. Slack waits
        ``ack_deadline_s`` for the ack; a late one is recorded and an event is sent again."""
        await self.wait_for(lambda: self.ws is not None and not self.ws.closed)
        if kind == "events_api":
            self.record_user_message(payload.get("event") or {})
        envelope_id = uuid.uuid4().hex
        envelope: dict[str, Any] = {"envelope_id": envelope_id, "type": kind, "payload": payload,
                                    "accepts_response_payload": kind != "events_api"}
        if kind == "events_api":
            envelope["retry_attempt"] = retry_attempt or 0
            envelope["retry_reason"] = retry_reason or ""
        await self.ws.send_str(json.dumps(envelope))  # type: ignore[union-attr]
        self._watch(self._socket_deadline(envelope_id, kind, payload, retry_attempt or 0))
        return envelope_id

    async def _socket_deadline(self, envelope_id: str, kind: str, payload: dict[str, Any], attempt: int) -> None:
        try:
            ack = await self.wait_for(lambda: self.acks.get(envelope_id), self.ack_deadline_s)
        except AssertionError:
            self.late(kind, {"envelope_id": envelope_id, "payload": payload})
            if kind == "events_api" and attempt < len(self.event_retry_delays_s):
                await asyncio.sleep(self.event_retry_delays_s[attempt])
                self.redeliveries.append({"event_id": payload.get("event_id"), "retry": attempt + 1, "reason": "timeout"})
                await self.send_envelope(kind, payload, retry_attempt=attempt + 1, retry_reason="timeout")
            return
        self.check_ack_payload(kind, ack.get("payload"))

    async def wait_ack(self, envelope_id: str, timeout: float = 10.0) -> dict[str, Any]:
        return await self.wait_for(lambda: self.acks.get(envelope_id), timeout)


class SlackHTTP:
    """Slack's side of HTTP mode: signed POSTs to the app's Request URL, with Slack's deadline.

    Every request must be answered within ``fake.ack_deadline_s``. A late answer is recorded in
    ``fake.late_acks``; an event is then delivered again with ``X-Slack-Retry-Num`` and
    ``X-Slack-Retry-Reason: http_timeout`` (``http_error`` after a 5xx answer), as Slack does.
    The caller still gets the first answer when it comes."""

    def __init__(self, fake: FakeSlack, url: str, secret: str):
        from slack_sdk.signature import SignatureVerifier

        self.fake = fake
        self.url = url
        self.verifier = SignatureVerifier(secret)
        self.session = aiohttp.ClientSession()

    async def close(self) -> None:
        await self.session.close()

    async def _send(self, body: str, headers: dict[str, str]) -> tuple[int, str]:
        async with self.session.post(self.url, data=body.encode(), headers=headers) as response:
            return response.status, await response.text()

    async def post(self, body: str, content_type: str, headers: dict[str, str] | None = None,
                   timestamp: int | None = None, signature: str | None = None, kind: str = "request",
                   retry: int = 0) -> tuple[int, str]:
        ts = str(timestamp if timestamp is not None else int(time.time()))
        sig = signature if signature is not None else self.verifier.generate_signature(timestamp=ts, body=body)
        all_headers = {"Content-Type": content_type, "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig}
        all_headers.update(headers or {})
        sending = asyncio.ensure_future(self._send(body, all_headers))
        done, _ = await asyncio.wait({sending}, timeout=self.fake.ack_deadline_s)
        if not done:  # Slack gives up on this attempt at the deadline, whatever comes later
            self.fake.late(kind, {"body": body[:500], "retry": retry})
            self._retry(kind, body, content_type, retry, "http_timeout")
        status, text = await sending
        if done and status >= 500:
            self._retry(kind, body, content_type, retry, "http_error")
        if status == 200 and kind in ("command", "interaction") and text.strip().startswith("{"):
            self.fake.check_ack_payload(kind, json.loads(text))
        await self.fake._notify()
        return status, text

    def _retry(self, kind: str, body: str, content_type: str, retry: int, reason: str) -> None:
        if kind == "event" and retry < len(self.fake.event_retry_delays_s):
            self.fake._watch(self._redeliver(body, content_type, retry + 1, reason))

    async def _redeliver(self, body: str, content_type: str, retry: int, reason: str) -> None:
        await asyncio.sleep(self.fake.event_retry_delays_s[retry - 1])
        self.fake.redeliveries.append({"event_id": json.loads(body).get("event_id"), "retry": retry, "reason": reason})
        await self.post(body, content_type, {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": reason},
                        kind="event", retry=retry)
