"""A local stand-in for Discord's REST API and gateway, for testing the real discord.py code.

Nothing here imitates our own code: the bot under test is a real ``discord.Client`` that talks
HTTP and WebSocket to this server on 127.0.0.1 exactly as it would to Discord. The fake

* serves the gateway: HELLO, IDENTIFY → READY (with ``application.id``) + GUILD_CREATE,
  heartbeat ACKs, RESUME → replay of missed events + RESUMED, and can drop the connection;
* serves the REST routes the bot uses: users/@me, oauth2/applications/@me, messages (create,
  edit, delete, fetch), threads, typing, reactions, channels, command sync, interaction
  callbacks and follow-up webhooks; anything else is answered 404 and recorded;
* records every REST call (``calls``) and can answer the next matching call with a 429;
* lets a test act as Discord users: post messages, add reactions, run slash commands, click
  buttons, choose in selects and submit modals (``say``, ``react``, ``slash``, ``click``,
  ``select``, ``submit_modal``), producing payloads shaped like the real gateway's.

Facts this relies on (checked against discord.py 2.7): JSON must be served with the content
type exactly ``application/json``; a 429 needs a ``Via`` header or discord.py treats it as a
Cloudflare ban; the gateway accepts plain-text JSON frames even when zlib-stream is requested.

The fake is as strict as Discord, so that a bot passing here does not fail there:

* **Message limits** (https://discord.com/developers/docs/resources/message#create-message and
  #embed-object-embed-limits): content ≤ 2,000 characters; ≤ 10 embeds; per embed title ≤ 256,
  description ≤ 4,096, ≤ 25 fields, field name ≤ 256 and value ≤ 1,024 (both required), footer
  ≤ 2,048, author ≤ 256, and all embeds of one message ≤ 6,000 characters in total. A message
  breaking one is refused with HTTP 400 and JSON code 50035 *Invalid Form Body*, with the
  ``errors`` object Discord sends.
* **Component limits** (https://discord.com/developers/docs/components/reference): ≤ 5 action
  rows; ``custom_id`` ≤ 100; button label ≤ 80; select placeholder ≤ 150, ≤ 25 options.
  **Modals** (#text-input and interactions/receiving-and-responding#interaction-response-object-modal):
  title ≤ 45 (required), custom_id ≤ 100, 1–5 components; a label ≤ 45 (description ≤ 100); a
  text input's value ≤ 4,000, placeholder ≤ 100, min/max length within 0–4,000 / 1–4,000.
* **The 3-second interaction deadline** (interactions/receiving-and-responding#responding-to-an-interaction:
  "you must send an initial response within 3 seconds of receiving the event. If the 3 second
  deadline is exceeded, the token will be invalidated"): a callback arriving later than
  ``interaction_deadline_s`` after the INTERACTION_CREATE is answered 404, code 10062 *Unknown
  interaction*, and recorded in ``late_interactions``. Follow-ups use the token (15 minutes).
* **Permissions**: ``forbid(path_regex, code=50013)`` makes every matching route answer 403 with
  50013 *Missing Permissions* (or 50007 *Cannot send messages to this user*) until ``allow``
  lifts it (https://discord.com/developers/docs/topics/opcodes-and-status-codes#json-json-error-codes).
* **Archived threads** (https://discord.com/developers/docs/topics/threads: "Archived threads are
  generally immutable ... The API will helpfully automatically unarchive a thread when sending a
  message in that thread", unless it is locked): editing or reacting in an archived thread, or
  posting in a locked one, is refused with 400 / 50083 *Thread is archived*; posting in an
  unlocked archived thread unarchives it (THREAD_UPDATE).
* **Direct messages** carry no ``guild_id`` and no ``member`` (messages and interactions alike).
* **Gateway close codes** (#gateway-gateway-close-event-codes): ``drop_connection(4004)`` ends a
  session the way a reset token does; discord.py must not resume it. ``reset_token()`` is the
  whole of a token reset in the Developer Portal: the open session closes with 4004, every REST
  call answers 401, and a new IDENTIFY is closed with 4004 again.
* **Roles and permissions** (topics/permissions#permission-overwrites): the bot holds a managed
  role named after it carrying the invite link's permissions (``bot_role``, as Discord creates
  at an invite); roles are not mentionable unless set (Discord's default for a new role);
  channels carry ``permission_overwrites`` (``overwrite``). ``GET /guilds/{id}``,
  ``/guilds/{id}/channels`` and ``/guilds/{id}/members/{user}`` serve them, so discord.py's own
  ``permissions_for`` computes what the bot may do. The application's flags carry the Message
  Content intent switch (``app_flags``; 1 << 19 = GATEWAY_MESSAGE_CONTENT_LIMITED, what the
  portal sets for a bot in fewer than 100 servers), and ``interactions_endpoint_url`` is unset.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import discord
import discord.gateway
import discord.http
import yarl
from aiohttp import WSMsgType, web

DISCORD_EPOCH_MS = 1420070400000
EPHEMERAL = 64


def _iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(ts or time.time(), tz=timezone.utc).isoformat()


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py parses JSON only when the content type is exactly "application/json" (no charset).
    return web.Response(body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json",
                                                                                  **(headers or {})})


# Discord's limits (sources in the module docstring).
CONTENT_MAX = 2000
USER_CONTENT_MAX = 4000  # members with Nitro may write up to 4,000; bots never more than 2,000
EMBEDS_MAX = 10
EMBED_TITLE_MAX = 256
EMBED_DESCRIPTION_MAX = 4096
EMBED_FIELDS_MAX = 25
EMBED_FIELD_NAME_MAX = 256
EMBED_FIELD_VALUE_MAX = 1024
EMBED_FOOTER_MAX = 2048
EMBED_AUTHOR_MAX = 256
EMBED_TOTAL_MAX = 6000
ACTION_ROWS_MAX = 5
CUSTOM_ID_MAX = 100
BUTTON_LABEL_MAX = 80
SELECT_PLACEHOLDER_MAX = 150
SELECT_OPTIONS_MAX = 25
MODAL_TITLE_MAX = 45
MODAL_COMPONENTS_MAX = 5
LABEL_MAX = 45
LABEL_DESCRIPTION_MAX = 100
TEXT_INPUT_VALUE_MAX = 4000
TEXT_INPUT_PLACEHOLDER_MAX = 100
INTERACTION_DEADLINE_S = 3.0
# What the invite link in docs/discord.md asks for (tests/test_doctor.py checks the two agree):
# Discord gives the bot a managed role with exactly these permissions when it joins.
DOCUMENTED_INVITE_PERMISSIONS = 309237869568

MISSING_PERMISSIONS = 50013
CANNOT_MESSAGE_USER = 50007
THREAD_ARCHIVED = 50083
_ERROR_MESSAGES = {
    MISSING_PERMISSIONS: "Missing Permissions",
    CANNOT_MESSAGE_USER: "Cannot send messages to this user",
    THREAD_ARCHIVED: "Thread is archived",
}


class _FormErrors:
    """Collects field errors in the shape of Discord's 50035 ``errors`` object."""

    def __init__(self) -> None:
        self.errors: dict[str, Any] = {}

    def add(self, path: list[Any], code: str, message: str) -> None:
        node = self.errors
        for key in path:
            node = node.setdefault(str(key), {})
        node.setdefault("_errors", []).append({"code": code, "message": message})

    def max_length(self, path: list[Any], value: Any, limit: int, required: bool = False) -> None:
        if value is None or value == "":
            if required:
                self.add(path, "BASE_TYPE_REQUIRED", "This field is required")
            return
        if len(str(value)) > limit:
            self.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")

    def response(self) -> web.Response | None:
        if not self.errors:
            return None
        return _json({"message": "Invalid Form Body", "code": 50035, "errors": self.errors}, 400)


def _embed_length(embed: dict[str, Any]) -> int:
    total = len(embed.get("title") or "") + len(embed.get("description") or "")
    total += len((embed.get("footer") or {}).get("text") or "") + len((embed.get("author") or {}).get("name") or "")
    for f in embed.get("fields") or []:
        total += len(f.get("name") or "") + len(f.get("value") or "")
    return total


def _resolve_attachment_urls(embeds: list[dict[str, Any]], attachments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``attachment://name`` in an embed's image becomes that attachment's URL, as Discord shows it;
    a name that was not uploaded stays unresolved (Discord then shows no image)."""
    urls = {a["filename"]: a["url"] for a in attachments}
    out = []
    for embed in embeds:
        embed = dict(embed)
        image = embed.get("image") or {}
        url = image.get("url") or ""
        if url.startswith("attachment://") and url[len("attachment://"):] in urls:
            embed["image"] = {**image, "url": urls[url[len("attachment://"):]], "proxy_url": urls[url[len("attachment://"):]]}
        out.append(embed)
    return out


def check_message(body: dict[str, Any], errors: _FormErrors, prefix: list[Any] | None = None) -> None:
    """Discord's limits on a message payload (create, edit, interaction reply, follow-up)."""
    prefix = prefix or []
    errors.max_length(prefix + ["content"], body.get("content"), CONTENT_MAX)
    embeds = body.get("embeds") or []
    if len(embeds) > EMBEDS_MAX:
        errors.add(prefix + ["embeds"], "BASE_TYPE_MAX_LENGTH", f"Must be {EMBEDS_MAX} or fewer in length.")
    for i, embed in enumerate(embeds):
        at = prefix + ["embeds", i]
        errors.max_length(at + ["title"], embed.get("title"), EMBED_TITLE_MAX)
        errors.max_length(at + ["description"], embed.get("description"), EMBED_DESCRIPTION_MAX)
        errors.max_length(at + ["footer", "text"], (embed.get("footer") or {}).get("text"), EMBED_FOOTER_MAX)
        errors.max_length(at + ["author", "name"], (embed.get("author") or {}).get("name"), EMBED_AUTHOR_MAX)
        fields = embed.get("fields") or []
        if len(fields) > EMBED_FIELDS_MAX:
            errors.add(at + ["fields"], "BASE_TYPE_MAX_LENGTH", f"Must be {EMBED_FIELDS_MAX} or fewer in length.")
        for j, f in enumerate(fields):
            errors.max_length(at + ["fields", j, "name"], f.get("name"), EMBED_FIELD_NAME_MAX, required=True)
            errors.max_length(at + ["fields", j, "value"], f.get("value"), EMBED_FIELD_VALUE_MAX, required=True)
    if sum(_embed_length(e) for e in embeds) > EMBED_TOTAL_MAX:
        errors.add(prefix + ["embeds"], "MAX_EMBED_SIZE_EXCEEDED", f"Embed size exceeds maximum size of {EMBED_TOTAL_MAX}")
    rows = body.get("components") or []
    if len(rows) > ACTION_ROWS_MAX:
        errors.add(prefix + ["components"], "BASE_TYPE_MAX_LENGTH", f"Must be {ACTION_ROWS_MAX} or fewer in length.")
    for i, row in enumerate(rows):
        for j, c in enumerate(row.get("components") or []):
            at = prefix + ["components", i, "components", j]
            if c.get("type") == 2 and c.get("style") != 5:  # buttons other than links need a custom id
                errors.max_length(at + ["custom_id"], c.get("custom_id"), CUSTOM_ID_MAX, required=True)
                errors.max_length(at + ["label"], c.get("label"), BUTTON_LABEL_MAX)
            if c.get("type") in (3, 5, 6, 7, 8):
                errors.max_length(at + ["custom_id"], c.get("custom_id"), CUSTOM_ID_MAX, required=True)
                errors.max_length(at + ["placeholder"], c.get("placeholder"), SELECT_PLACEHOLDER_MAX)
                if len(c.get("options") or []) > SELECT_OPTIONS_MAX:
                    errors.add(at + ["options"], "BASE_TYPE_MAX_LENGTH", f"Must be {SELECT_OPTIONS_MAX} or fewer in length.")


def check_modal(data: dict[str, Any], errors: _FormErrors) -> None:
    """Discord's limits on a modal (interaction response type 9)."""
    at = ["data"]
    errors.max_length(at + ["title"], data.get("title"), MODAL_TITLE_MAX, required=True)
    errors.max_length(at + ["custom_id"], data.get("custom_id"), CUSTOM_ID_MAX, required=True)
    components = data.get("components") or []
    if not components or len(components) > MODAL_COMPONENTS_MAX:
        errors.add(at + ["components"], "BASE_TYPE_BAD_LENGTH", f"Must be between 1 and {MODAL_COMPONENTS_MAX} in length.")
    for i, c in enumerate(components):
        here = at + ["components", i]
        inputs: list[tuple[list[Any], dict[str, Any]]] = []
        if c.get("type") == 18:  # label wrapping one component
            errors.max_length(here + ["label"], c.get("label"), LABEL_MAX, required=True)
            errors.max_length(here + ["description"], c.get("description"), LABEL_DESCRIPTION_MAX)
            inputs.append((here + ["component"], c.get("component") or {}))
        elif c.get("type") == 1:  # legacy: an action row holding a text input with its own label
            for j, inner in enumerate(c.get("components") or []):
                errors.max_length(here + ["components", j, "label"], inner.get("label"), LABEL_MAX, required=True)
                inputs.append((here + ["components", j], inner))
        for path, t in inputs:
            errors.max_length(path + ["custom_id"], t.get("custom_id"), CUSTOM_ID_MAX, required=True)
            if t.get("type") != 4:
                continue
            errors.max_length(path + ["value"], t.get("value"), TEXT_INPUT_VALUE_MAX)
            errors.max_length(path + ["placeholder"], t.get("placeholder"), TEXT_INPUT_PLACEHOLDER_MAX)
            for key, low, high in (("min_length", 0, TEXT_INPUT_VALUE_MAX), ("max_length", 1, TEXT_INPUT_VALUE_MAX)):
                value = t.get(key)
                if value is not None and not low <= int(value) <= high:
                    errors.add(path + [key], "NUMBER_TYPE_MAX", f"int value should be between {low} and {high}.")


def _refusal(code: int, status: int) -> web.Response:
    return _json({"message": _ERROR_MESSAGES[code], "code": code}, status)


@dataclass
class Call:
    method: str
    path: str  # without the /api/v10 prefix
    query: dict[str, str]
    body: Any
    status: int = 0
    files: list[tuple[str, bytes]] = field(default_factory=list)  # multipart "files[n]": (filename, bytes)

    def __repr__(self) -> str:
        return f"<{self.method} {self.path} → {self.status}>"


@dataclass
class Interaction:
    id: str
    token: str
    type: int
    user_id: str
    channel_id: str
    data: dict[str, Any]
    message_id: str | None = None
    created_at: float = field(default_factory=time.monotonic)  # when INTERACTION_CREATE was sent
    responses: list[dict[str, Any]] = field(default_factory=list)  # callback bodies
    followups: list[dict[str, Any]] = field(default_factory=list)  # follow-up message payloads

    @property
    def texts(self) -> list[str]:
        out = []
        for r in self.responses:
            content = (r.get("data") or {}).get("content")
            if content:
                out.append(content)
        out.extend(m.get("content", "") for m in self.followups)
        return out

    @property
    def text(self) -> str:
        return "\n".join(self.texts)

    @property
    def modal(self) -> dict[str, Any] | None:
        return next((r["data"] for r in self.responses if r.get("type") == 9), None)


class FakeDiscord:
    """One guild with support, reviewer and voice channels, a category, and reviewer/moderator roles."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.app_id = self.snowflake()
        self.bot_id = self.app_id
        self.guild_id = self.snowflake()
        self.everyone_role = self.guild_id
        self.reviewer_role = self.snowflake()
        self.moderator_role = self.snowflake()
        self.bot_role = self.snowflake()
        self.category_id = self.snowflake()
        self.support_id = self.snowflake()
        self.category_channel_id = self.snowflake()  # a text channel inside the support category
        self.reviewer_channel_id = self.snowflake()
        self.mods_channel_id = self.snowflake()
        self.voice_id = self.snowflake()
        self.calls: list[Call] = []
        self.users: dict[str, dict[str, Any]] = {}
        self.members: dict[str, list[str]] = {}  # user id -> role ids
        self.channels: dict[str, dict[str, Any]] = {}
        self.threads: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}  # attachment id -> the uploaded bytes
        self.interactions: dict[str, Interaction] = {}
        self.commands: dict[str, list[dict[str, Any]]] = {}  # guild id ("global") -> synced commands
        self.reactions: list[tuple[str, str, str, str]] = []  # (op, message id, emoji, user)
        self.deny_threads = False
        self.refuse_identify_with: int | None = None  # a close code to answer IDENTIFY with (e.g. 4014)
        self.token_revoked = False  # reset_token(): REST answers 401, IDENTIFY is closed with 4004
        self.app_flags = 1 << 19  # GATEWAY_MESSAGE_CONTENT_LIMITED: the Message Content switch is on
        self.interactions_endpoint_url: str | None = None
        self.interaction_deadline_s = INTERACTION_DEADLINE_S
        self.late_interactions: list[Interaction] = []  # callbacks refused with 10062 (too late)
        self._forbidden: list[tuple[str | None, re.Pattern[str], int]] = []  # method, path, JSON code
        self.identifies = 0
        self.resumes: list[dict[str, Any]] = []
        self._rate_limits: list[list[Any]] = []  # [method, regex, remaining, retry_after]
        self._session_id: str | None = None
        self._seq = 0
        self._events: list[dict[str, Any]] = []  # every dispatch of the current session
        self._ws: web.WebSocketResponse | None = None
        self._ws_ready = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._patched: list[tuple[Any, str, Any]] = []
        self.port = 0
        self.bot_user = self._user_payload(self.bot_id, "LLM4Sweat", bot=True)
        self.users[self.bot_id] = self.bot_user
        self.members[self.bot_id] = [self.bot_role]
        self.roles: dict[str, dict[str, Any]] = {}
        self._build_guild()

    # ------------------------------------------------------------------ set-up

    def snowflake(self) -> str:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return str((ms << 22) + next(self._ids))

    def _user_payload(self, user_id: str, name: str, bot: bool = False) -> dict[str, Any]:
        return {"id": user_id, "username": name, "global_name": name, "discriminator": "0", "avatar": None,
                "bot": bot, "public_flags": 0}

    def _channel(self, cid: str, name: str, ctype: int, parent: str | None = None, position: int = 0) -> dict:
        data = {"id": cid, "type": ctype, "guild_id": self.guild_id, "name": name, "position": position,
                "permission_overwrites": [], "parent_id": parent, "nsfw": False, "topic": None,
                "last_message_id": None, "rate_limit_per_user": 0, "flags": 0}
        if ctype == 2:
            data.update(bitrate=64000, user_limit=0, rtc_region=None)
        self.channels[cid] = data
        return data

    def _build_guild(self) -> None:
        self._channel(self.category_id, "Support", 4)
        self._channel(self.support_id, "ask-the-bot", 0, parent=self.category_id, position=1)
        self._channel(self.category_channel_id, "ask-here-too", 0, parent=self.category_id, position=2)
        self._channel(self.reviewer_channel_id, "expert-review", 0, position=3)
        self._channel(self.mods_channel_id, "moderators", 0, position=4)
        self._channel(self.voice_id, "voice-lounge", 2, parent=self.category_id, position=5)
        for rid, name, position, permissions in (
            (self.everyone_role, "@everyone", 0, discord.Permissions.general().value),
            (self.reviewer_role, "Reviewer", 1, 0),
            (self.moderator_role, "Moderator", 2, discord.Permissions.all().value),
            (self.bot_role, "LLM4Sweat", 3, DOCUMENTED_INVITE_PERMISSIONS),
        ):
            self.roles[rid] = self._role(rid, name, position, permissions)
        self.roles[self.bot_role].update(managed=True, tags={"bot_id": self.bot_id})

    def set_role(self, role_id: str, *, permissions: int | None = None, mentionable: bool | None = None) -> None:
        """A server admin edits a role (Server Settings → Roles)."""
        if permissions is not None:
            self.roles[role_id]["permissions"] = str(permissions)
        if mentionable is not None:
            self.roles[role_id]["mentionable"] = mentionable

    def overwrite(self, channel_id: str, target_id: str, *, allow: int = 0, deny: int = 0, member: bool = False) -> None:
        """A server admin sets a channel permission overwrite for a role (or a member)."""
        overwrites = [o for o in self.channels[channel_id]["permission_overwrites"] if o["id"] != target_id]
        overwrites.append({"id": target_id, "type": 1 if member else 0, "allow": str(allow), "deny": str(deny)})
        self.channels[channel_id]["permission_overwrites"] = overwrites

    def add_member(self, name: str, roles: tuple[str, ...] = (), bot: bool = False) -> str:
        """A guild member; roles by name: 'reviewer', 'moderator'; ``bot``: another app's bot user."""
        uid = self.snowflake()
        self.users[uid] = self._user_payload(uid, name, bot=bot)
        role_ids = {"reviewer": self.reviewer_role, "moderator": self.moderator_role}
        self.members[uid] = [role_ids[r] for r in roles]
        return uid

    def _role(self, rid: str, name: str, position: int, permissions: int) -> dict[str, Any]:
        return {"id": rid, "name": name, "color": 0, "colors": {"primary_color": 0}, "hoist": False,
                "position": position, "permissions": str(permissions), "managed": False, "mentionable": False,
                "flags": 0}

    def _member(self, uid: str, with_user: bool = True) -> dict[str, Any]:
        data = {"roles": list(self.members.get(uid, [])), "joined_at": _iso(), "deaf": False, "mute": False,
                "flags": 0, "nick": None, "avatar": None, "pending": False,
                "permissions": str(discord.Permissions.all().value if self.moderator_role in self.members.get(uid, [])
                                   else discord.Permissions.general().value)}
        if with_user:
            data["user"] = self.users[uid]
        return data

    def guild_payload(self) -> dict[str, Any]:
        return {
            "id": self.guild_id, "name": "Hyperhidrosis Community", "icon": None, "splash": None,
            "discovery_splash": None, "owner_id": self.snowflake(), "afk_channel_id": None, "afk_timeout": 300,
            "verification_level": 0, "default_message_notifications": 0, "explicit_content_filter": 0,
            "roles": [dict(r) for r in self.roles.values()],
            "emojis": [], "stickers": [], "features": [], "mfa_level": 0, "application_id": None,
            "system_channel_id": None, "system_channel_flags": 0, "rules_channel_id": None,
            "vanity_url_code": None, "description": None, "banner": None, "premium_tier": 0,
            "preferred_locale": "en-US", "public_updates_channel_id": None, "nsfw_level": 0,
            "premium_progress_bar_enabled": False, "joined_at": _iso(), "large": False, "unavailable": False,
            "member_count": len(self.members), "voice_states": [], "presences": [], "stage_instances": [],
            "guild_scheduled_events": [], "soundboard_sounds": [],
            "members": [self._member(self.bot_id)],
            "channels": [{k: v for k, v in c.items() if k != "guild_id"} for c in self.channels.values()],
            "threads": [t for t in self.threads.values() if not t["thread_metadata"]["archived"]],
        }

    # ------------------------------------------------------------------ server

    async def start(self) -> "FakeDiscord":
        app = web.Application(client_max_size=10 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    @property
    def rest_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    def patch_library(self) -> None:
        """Point discord.py at this server (undone by ``stop``)."""
        for obj, attr, value in ((discord.http.Route, "BASE", self.rest_base),
                                 (discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(self.gateway_url))):
            self._patched.append((obj, attr, getattr(obj, attr)))
            setattr(obj, attr, value)

    async def stop(self) -> None:
        for obj, attr, old in reversed(self._patched):
            setattr(obj, attr, old)
        self._patched.clear()
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ gateway

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._ws = ws
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None}))
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            payload = json.loads(msg.data)
            op, d = payload.get("op"), payload.get("d")
            if op == 1:
                await ws.send_str(json.dumps({"op": 11, "d": None, "s": None, "t": None}))
            elif op == 2:
                await self._identify(ws, d)
            elif op == 6:
                await self._resume(ws, d)
        if self._ws is ws:
            self._ws = None
            self._ws_ready.clear()
        return ws

    async def _identify(self, ws: web.WebSocketResponse, d: dict[str, Any]) -> None:
        self.identifies += 1
        if self.token_revoked:
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        if self.refuse_identify_with is not None:
            await ws.close(code=self.refuse_identify_with, message=b"Disallowed intent(s).")
            return
        self.intents = d.get("intents")
        self._session_id = f"session-{self.identifies}"
        self._seq = 0
        self._events = []
        await self._send_dispatch("READY", {
            "v": 10, "user": dict(self.bot_user, verified=True, mfa_enabled=False, flags=0),
            "guilds": [{"id": self.guild_id, "unavailable": True}], "session_id": self._session_id,
            "resume_gateway_url": self.gateway_url, "shard": [0, 1],
            "application": {"id": self.app_id, "flags": 0}, "private_channels": [], "relationships": [],
        }, force=True)
        await self._send_dispatch("GUILD_CREATE", self.guild_payload(), force=True)
        self._ws_ready.set()

    async def _resume(self, ws: web.WebSocketResponse, d: dict[str, Any]) -> None:
        self.resumes.append(d)
        if d.get("session_id") != self._session_id:
            await ws.send_str(json.dumps({"op": 9, "d": False, "s": None, "t": None}))
            return
        for event in self._events:
            if event["s"] > (d.get("seq") or 0):
                await ws.send_str(json.dumps(event))
        await self._send_dispatch("RESUMED", {}, force=True)
        self._ws_ready.set()

    async def _send_dispatch(self, event: str, data: dict[str, Any], force: bool = False) -> None:
        self._seq += 1
        frame = {"op": 0, "t": event, "s": self._seq, "d": data}
        self._events.append(frame)
        ws = self._ws
        if ws is not None and not ws.closed and (force or self._ws_ready.is_set()):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(json.dumps(frame))

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a gateway event (kept for replay if the bot is disconnected now)."""
        await self._send_dispatch(event, data)

    async def drop_connection(self, code: int = 4000) -> None:
        """Close the bot's WebSocket as Discord does when a connection dies; the bot should RESUME."""
        ws = self._ws
        self._ws_ready.clear()
        self._ws = None
        if ws is not None:
            await ws.close(code=code, message=b"dropped by the test")

    async def reset_token(self) -> None:
        """The owner resets the bot's token in the Developer Portal while the bot runs."""
        self.token_revoked = True
        await self.drop_connection(4004)

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._ws_ready.wait(), timeout)

    # ------------------------------------------------------------------ REST

    def rate_limit(self, method: str, path_regex: str, times: int = 1, retry_after: float = 0.05) -> None:
        """Answer the next ``times`` matching calls with 429 (as Discord does, with a Via header)."""
        self._rate_limits.append([method, re.compile(path_regex), times, retry_after])

    def forbid(self, path_regex: str, code: int = MISSING_PERMISSIONS, method: str | None = None) -> None:
        """Every matching call answers 403 with ``code`` (50013 Missing Permissions, 50007 Cannot send
        messages to this user) until :meth:`allow` lifts it, as when a moderator removes a permission."""
        self._forbidden.append((method, re.compile(path_regex), code))

    def allow(self, path_regex: str | None = None) -> None:
        """Lift :meth:`forbid` (for one pattern, or all)."""
        self._forbidden = [f for f in self._forbidden if path_regex is not None and f[1].pattern != path_regex]

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        body: Any = None
        files: list[tuple[str, bytes]] = []
        if request.can_read_body:
            if request.content_type == "application/json":
                body = await request.json()
            elif request.content_type.startswith("multipart/"):
                form = await request.post()
                body = json.loads(form["payload_json"]) if "payload_json" in form else dict(form)
                files = [(f.filename, f.file.read()) for name, f in form.items()
                         if name.startswith("files[") and hasattr(f, "file")]
            else:
                body = await request.text()
        call = Call(request.method, path, dict(request.query), body, files=files)
        self.calls.append(call)
        if self.token_revoked:
            call.status = 401
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        for limit in self._rate_limits:
            method, regex, remaining, retry_after = limit
            if remaining > 0 and method == request.method and regex.fullmatch(path):
                limit[2] -= 1
                call.status = 429
                return _json({"message": "You are being rate limited.", "retry_after": retry_after, "global": False},
                             429, {"Via": "1.1 google", "Retry-After": str(retry_after),
                                   "X-RateLimit-Scope": "user"})
        for method, regex, code in self._forbidden:
            if (method is None or method == request.method) and regex.fullmatch(path):
                call.status = 403
                return _refusal(code, 403)
        for method, pattern, handler in self._routes():
            match = re.fullmatch(pattern, path)
            if match and method == request.method:
                response = await handler(call, *match.groups())
                call.status = response.status
                return response
        call.status = 404
        return _json({"message": "Unknown route in the fake", "code": 0}, 404)

    def _routes(self) -> list[tuple[str, str, Callable[..., Any]]]:
        s = r"([0-9]+)"
        return [
            ("GET", "/users/@me", self._get_me),
            ("GET", "/oauth2/applications/@me", self._get_app),
            ("POST", f"/channels/{s}/messages", self._create_message),
            ("GET", f"/channels/{s}/messages", self._list_messages),
            ("GET", f"/channels/{s}/messages/{s}", self._get_message),
            ("PATCH", f"/channels/{s}/messages/{s}", self._edit_message),
            ("DELETE", f"/channels/{s}/messages/{s}", self._delete_message),
            ("POST", f"/channels/{s}/messages/{s}/threads", self._create_thread),
            ("POST", f"/channels/{s}/typing", self._typing),
            ("GET", f"/channels/{s}", self._get_channel),
            ("PATCH", f"/channels/{s}", self._modify_channel),
            ("PUT", f"/channels/{s}/messages/{s}/reactions/([^/]+)/@me", self._add_own_reaction),
            ("DELETE", f"/channels/{s}/messages/{s}/reactions/([^/]+)/([^/]+)", self._remove_reaction),
            ("PUT", f"/applications/{s}/guilds/{s}/commands", self._sync_guild_commands),
            ("PUT", f"/applications/{s}/commands", self._sync_global_commands),
            ("GET", f"/applications/{s}/guilds/{s}/commands", self._get_guild_commands),
            ("POST", r"/interactions/([0-9]+)/([^/]+)/callback", self._interaction_callback),
            ("POST", r"/webhooks/([0-9]+)/([^/]+)", self._followup),
            ("PATCH", r"/webhooks/([0-9]+)/([^/]+)/messages/([^/]+)", self._edit_followup),
            ("POST", "/users/@me/channels", self._open_dm),
            ("GET", f"/guilds/{s}", self._get_guild),
            ("GET", f"/guilds/{s}/channels", self._get_guild_channels),
            ("GET", f"/guilds/{s}/members/{s}", self._get_guild_member),
        ]

    async def _get_me(self, call: Call) -> web.Response:
        return _json(dict(self.bot_user, verified=True, mfa_enabled=False, flags=0))

    async def _get_app(self, call: Call) -> web.Response:
        return _json({"id": self.app_id, "name": "LLM4Sweat", "icon": None, "description": "", "rpc_origins": [],
                      "bot_public": False, "bot_require_code_grant": False, "bot": self.bot_user,
                      "owner": self._user_payload(self.snowflake(), "owner"), "summary": "", "verify_key": "00",
                      "team": None, "flags": self.app_flags,
                      "interactions_endpoint_url": self.interactions_endpoint_url, "redirect_uris": [],
                      "approximate_guild_count": 1})

    async def _get_guild(self, call: Call, guild_id: str) -> web.Response:
        if guild_id != self.guild_id:
            return _json({"message": "Unknown Guild", "code": 10004}, 404)
        payload = self.guild_payload()
        for key in ("channels", "members", "threads", "voice_states", "presences", "joined_at", "large",
                    "member_count", "unavailable"):
            payload.pop(key, None)  # REST guild objects carry none of the gateway-only fields
        return _json(payload)

    async def _get_guild_channels(self, call: Call, guild_id: str) -> web.Response:
        if guild_id != self.guild_id:
            return _json({"message": "Unknown Guild", "code": 10004}, 404)
        return _json([dict(c) for c in self.channels.values() if c.get("guild_id") == guild_id])

    async def _get_guild_member(self, call: Call, guild_id: str, user_id: str) -> web.Response:
        if guild_id != self.guild_id:
            return _json({"message": "Unknown Guild", "code": 10004}, 404)
        if user_id not in self.members:
            return _json({"message": "Unknown Member", "code": 10007}, 404)
        return _json(self._member(user_id))

    def _attachments(self, call: Call, channel_id: str) -> list[dict[str, Any]] | web.Response:
        """Uploaded files as the message's attachments. As Discord does, each ``files[n]`` part
        must be described in ``payload_json.attachments`` (id n, its filename); the bytes are
        kept in ``self.files`` by attachment id."""
        if not call.files:
            return []
        described = {str(a.get("id")): a for a in (call.body or {}).get("attachments") or []}
        out = []
        for n, (filename, data) in enumerate(call.files):
            meta = described.get(str(n))
            if meta is None or meta.get("filename") != filename:
                return _json({"message": "Invalid Form Body", "code": 50035,
                              "errors": {"attachments": {str(n): {"_errors": [{"code": "ATTACHMENT_NOT_FOUND",
                                                                             "message": "Unknown attachment"}]}}}}, 400)
            aid = self.snowflake()
            self.files[aid] = data
            out.append({"id": aid, "filename": filename, "size": len(data),
                        "url": f"https://cdn.discordapp.com/attachments/{channel_id}/{aid}/{filename}",
                        "proxy_url": f"https://media.discordapp.net/attachments/{channel_id}/{aid}/{filename}",
                        "content_type": "image/png" if filename.endswith(".png") else "application/octet-stream"})
        return out

    def _message_payload(self, channel_id: str, author_id: str, content: str, **extra: Any) -> dict[str, Any]:
        mid = extra.pop("id", None) or self.snowflake()
        guild = self.guild_id if self._in_guild(channel_id) else None
        data = {
            "id": mid, "channel_id": channel_id, "author": self.users[author_id], "content": content,
            "timestamp": _iso(), "edited_timestamp": None, "tts": False, "mention_everyone": False,
            "mentions": [], "mention_roles": [], "attachments": [], "embeds": [], "pinned": False, "type": 0,
            "flags": 0, "components": [],
        }
        if guild:
            data["guild_id"] = guild
            data["member"] = self._member(author_id, with_user=False)
        data.update(extra)
        return data

    def _in_guild(self, channel_id: str) -> bool:
        return channel_id in self.threads or self.channels.get(channel_id, {}).get("type", 1) != 1

    def _archived(self, channel_id: str) -> dict[str, Any] | None:
        """The thread's metadata if ``channel_id`` is an archived thread."""
        thread = self.threads.get(channel_id)
        if thread is not None and thread["thread_metadata"]["archived"]:
            return thread["thread_metadata"]
        return None

    async def _set_archived(self, thread_id: str, archived: bool) -> None:
        thread = self.threads[thread_id]
        thread["thread_metadata"]["archived"] = archived
        thread["thread_metadata"]["archive_timestamp"] = _iso()
        await self.dispatch("THREAD_UPDATE", thread)

    async def archive_thread(self, thread_id: str, locked: bool = False) -> None:
        """Discord archives a quiet thread (after its auto-archive duration), or a moderator locks it."""
        self.threads[thread_id]["thread_metadata"]["locked"] = locked
        await self._set_archived(thread_id, True)

    async def _create_message(self, call: Call, channel_id: str) -> web.Response:
        if channel_id not in self.channels and channel_id not in self.threads:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        body = call.body or {}
        errors = _FormErrors()
        check_message(body, errors)
        if (refused := errors.response()) is not None:
            return refused
        if not body.get("content") and not body.get("embeds") and not body.get("components") and not call.files:
            return _json({"message": "Cannot send an empty message", "code": 50006}, 400)
        attachments = self._attachments(call, channel_id)
        if isinstance(attachments, web.Response):
            return attachments
        archived = self._archived(channel_id)
        if archived is not None:
            if archived["locked"]:
                return _refusal(THREAD_ARCHIVED, 400)
            await self._set_archived(channel_id, False)  # sending a message unarchives the thread
        extra: dict[str, Any] = {"embeds": _resolve_attachment_urls(body.get("embeds") or [], attachments),
                                 "components": body.get("components") or [], "attachments": attachments}
        if body.get("message_reference"):
            ref_id = str(body["message_reference"]["message_id"])
            extra["message_reference"] = {"message_id": ref_id, "channel_id": channel_id,
                                          "guild_id": self.guild_id, "type": 0}
            extra["type"] = 19
            if ref_id in self.messages:
                extra["referenced_message"] = self.messages[ref_id]
        message = self._message_payload(channel_id, self.bot_id, body.get("content") or "", **extra)
        self.messages[message["id"]] = message
        await self.dispatch("MESSAGE_CREATE", message)
        return _json(message)

    async def _get_message(self, call: Call, channel_id: str, message_id: str) -> web.Response:
        message = self.messages.get(message_id)
        if message is None or message["channel_id"] != channel_id:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        return _json(message)

    async def _edit_message(self, call: Call, channel_id: str, message_id: str) -> web.Response:
        message = self.messages.get(message_id)
        if message is None or message["channel_id"] != channel_id:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        body = call.body or {}
        errors = _FormErrors()
        check_message(body, errors)
        if (refused := errors.response()) is not None:
            return refused
        if self._archived(channel_id) is not None:
            return _refusal(THREAD_ARCHIVED, 400)
        for key in ("content", "embeds", "components"):
            if key in body:
                message[key] = body[key] if body[key] is not None else ([] if key != "content" else "")
        message["edited_timestamp"] = _iso()
        return _json(message)

    async def _delete_message(self, call: Call, channel_id: str, message_id: str) -> web.Response:
        if self.messages.pop(message_id, None) is None:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        await self.dispatch("MESSAGE_DELETE", {"id": message_id, "channel_id": channel_id, "guild_id": self.guild_id})
        return web.Response(status=204)

    async def _create_thread(self, call: Call, channel_id: str, message_id: str) -> web.Response:
        if self.deny_threads:
            return _json({"message": "Missing Permissions", "code": 50013}, 403)
        parent = self.channels.get(channel_id)
        if parent is None or parent["type"] not in (0, 5):
            return _json({"message": "Cannot execute action on this channel type", "code": 50024}, 400)
        body = call.body or {}
        thread = {
            "id": message_id, "type": 11, "guild_id": self.guild_id, "parent_id": channel_id,
            "owner_id": self.bot_id, "name": body.get("name", "thread"), "last_message_id": None,
            "message_count": 0, "member_count": 1, "rate_limit_per_user": 0, "flags": 0, "total_message_sent": 0,
            "thread_metadata": {"archived": False, "auto_archive_duration": body.get("auto_archive_duration", 1440),
                                "archive_timestamp": _iso(), "locked": False},
        }
        self.threads[message_id] = thread
        await self.dispatch("THREAD_CREATE", dict(thread, newly_created=True))
        return _json(thread, 201)

    async def _typing(self, call: Call, channel_id: str) -> web.Response:
        return web.Response(status=204)

    async def _list_messages(self, call: Call, channel_id: str) -> web.Response:
        """Channel history: ``after`` gives the oldest messages after it, ``before`` (or nothing) the
        newest; Discord returns either page newest first, at most ``limit`` (1–100, default 50)."""
        if channel_id not in self.channels and channel_id not in self.threads:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        limit = int(call.query.get("limit", 50))
        if not 1 <= limit <= 100:
            return _json({"message": "Invalid Form Body", "code": 50035,
                          "errors": {"limit": {"_errors": [{"code": "NUMBER_TYPE_MAX", "message": "int value should be less than or equal to 100."}]}}}, 400)
        found = sorted((m for m in self.messages.values() if m["channel_id"] == channel_id), key=lambda m: int(m["id"]))
        if "after" in call.query:
            page = [m for m in found if int(m["id"]) > int(call.query["after"])][:limit]
        else:
            before = int(call.query.get("before", 1 << 64))
            page = [m for m in found if int(m["id"]) < before][-limit:]
        return _json(list(reversed(page)))

    async def _modify_channel(self, call: Call, channel_id: str) -> web.Response:
        thread = self.threads.get(channel_id)
        if thread is None:
            return _json({"message": "Unknown route in the fake", "code": 0}, 404)
        body = call.body or {}
        if "locked" in body:
            thread["thread_metadata"]["locked"] = bool(body["locked"])
        if "archived" in body:
            await self._set_archived(channel_id, bool(body["archived"]))
        return _json(thread)

    async def _get_channel(self, call: Call, channel_id: str) -> web.Response:
        channel = self.channels.get(channel_id) or self.threads.get(channel_id)
        if channel is None:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        return _json(channel)

    async def _add_own_reaction(self, call: Call, channel_id: str, message_id: str, emoji: str) -> web.Response:
        if self._archived(channel_id) is not None:
            return _refusal(THREAD_ARCHIVED, 400)
        self.reactions.append(("add", message_id, emoji, "@me"))
        return web.Response(status=204)

    async def _remove_reaction(self, call: Call, channel_id: str, message_id: str, emoji: str, user: str) -> web.Response:
        self.reactions.append(("remove", message_id, emoji, user))
        return web.Response(status=204)

    def _store_commands(self, key: str, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        stored = []
        for command in commands:
            stored.append(dict(command, id=self.snowflake(), application_id=self.app_id, version=self.snowflake(),
                               guild_id=None if key == "global" else key))
        self.commands[key] = stored
        return stored

    async def _sync_guild_commands(self, call: Call, app_id: str, guild_id: str) -> web.Response:
        return _json(self._store_commands(guild_id, call.body or []))

    async def _sync_global_commands(self, call: Call, app_id: str) -> web.Response:
        return _json(self._store_commands("global", call.body or []))

    async def _get_guild_commands(self, call: Call, app_id: str, guild_id: str) -> web.Response:
        return _json(self.commands.get(guild_id, []))

    async def _interaction_callback(self, call: Call, interaction_id: str, token: str) -> web.Response:
        interaction = self.interactions.get(interaction_id)
        if interaction is None or interaction.token != token:
            return _json({"message": "Unknown interaction", "code": 10062}, 404)
        if time.monotonic() - interaction.created_at > self.interaction_deadline_s:
            self.late_interactions.append(interaction)  # the token died at the deadline
            return _json({"message": "Unknown interaction", "code": 10062}, 404)
        if interaction.responses:
            return _json({"message": "Interaction has already been acknowledged.", "code": 40060}, 400)
        body = call.body or {}
        errors = _FormErrors()
        if body.get("type") == 9:
            check_modal(body.get("data") or {}, errors)
        elif body.get("type") in (4, 7):
            check_message(body.get("data") or {}, errors, ["data"])
        if (refused := errors.response()) is not None:
            return refused
        interaction.responses.append(body)
        rtype = body.get("type")
        data = body.get("data") or {}
        info = {"id": interaction_id, "type": interaction.type,
                "response_message_loading": rtype == 5,
                "response_message_ephemeral": bool(int(data.get("flags") or 0) & EPHEMERAL)}
        resource: dict[str, Any] = {"type": rtype}
        if rtype == 4:
            message = self._message_payload(interaction.channel_id, self.bot_id, data.get("content") or "",
                                            flags=int(data.get("flags") or 0), embeds=data.get("embeds") or [],
                                            components=data.get("components") or [],
                                            webhook_id=self.app_id, application_id=self.app_id)
            info["response_message_id"] = message["id"]
            resource["message"] = message
        return _json({"interaction": info, "resource": resource})

    async def _followup(self, call: Call, app_id: str, token: str) -> web.Response:
        interaction = next((i for i in self.interactions.values() if i.token == token), None)
        if interaction is None:
            return _json({"message": "Unknown Webhook", "code": 10015}, 404)
        body = call.body or {}
        errors = _FormErrors()
        check_message(body, errors)
        if (refused := errors.response()) is not None:
            return refused
        attachments = self._attachments(call, interaction.channel_id)
        if isinstance(attachments, web.Response):
            return attachments
        message = self._message_payload(interaction.channel_id, self.bot_id, body.get("content") or "",
                                        flags=int(body.get("flags") or 0),
                                        embeds=_resolve_attachment_urls(body.get("embeds") or [], attachments),
                                        attachments=attachments, webhook_id=self.app_id, application_id=self.app_id)
        interaction.followups.append(message)
        return _json(message)

    async def _edit_followup(self, call: Call, app_id: str, token: str, message_id: str) -> web.Response:
        interaction = next((i for i in self.interactions.values() if i.token == token), None)
        if interaction is None:
            return _json({"message": "Unknown Webhook", "code": 10015}, 404)
        errors = _FormErrors()
        check_message(call.body or {}, errors)
        if (refused := errors.response()) is not None:
            return refused
        for message in interaction.followups:
            if message["id"] == message_id or message_id == "@original":
                message.update({k: v for k, v in (call.body or {}).items() if k in ("content", "embeds")})
                return _json(message)
        return _json({"message": "Unknown Message", "code": 10008}, 404)

    async def _open_dm(self, call: Call) -> web.Response:
        recipient = str((call.body or {}).get("recipient_id"))  # a snowflake: discord.py sends an int
        if recipient not in self.users:
            return _json({"message": "Unknown User", "code": 10013}, 404)
        cid = self.dm_channel(recipient)
        return _json(self.channels[cid])

    def dm_channel(self, user_id: str) -> str:
        for cid, channel in self.channels.items():
            if channel["type"] == 1 and channel["recipients"][0]["id"] == user_id:
                return cid
        cid = self.snowflake()
        self.channels[cid] = {"id": cid, "type": 1, "last_message_id": None, "recipients": [self.users[user_id]]}
        return cid

    # ------------------------------------------------------------------ acting as users

    async def say(self, user_id: str, channel_id: str, content: str, *, mention_bot: bool = False,
                  reply_to: str | None = None, attachments: int = 0, deliver: bool = True) -> dict[str, Any]:
        """A member posts a message (MESSAGE_CREATE), within what Discord lets a member send.
        ``deliver=False``: the message is in the channel but the bot's session never gets the event."""
        if len(content) > USER_CONTENT_MAX:
            raise AssertionError(f"Discord does not let a member send {len(content)} characters (max {USER_CONTENT_MAX})")
        archived = self._archived(channel_id)
        if archived is not None:
            if archived["locked"]:
                raise AssertionError("a member cannot write in a locked thread")
            await self._set_archived(channel_id, False)
        extra: dict[str, Any] = {}
        if mention_bot:
            content = f"<@{self.bot_id}> {content}"
            extra["mentions"] = [self.bot_user]
        if reply_to:
            extra["type"] = 19
            extra["message_reference"] = {"message_id": reply_to, "channel_id": channel_id, "type": 0}
            if reply_to in self.messages:
                extra["referenced_message"] = self.messages[reply_to]
        if attachments:
            extra["attachments"] = [{"id": self.snowflake(), "filename": f"photo{i}.png", "size": 1000,
                                     "url": "https://cdn.example/x.png", "proxy_url": "https://cdn.example/x.png"}
                                    for i in range(attachments)]
        message = self._message_payload(channel_id, user_id, content, **extra)
        self.messages[message["id"]] = message
        if deliver:
            await self.dispatch("MESSAGE_CREATE", message)
        return message

    async def edit_as_user(self, message_id: str, content: str) -> dict[str, Any]:
        """A member edits their message (MESSAGE_UPDATE with the whole message, as Discord sends it)."""
        message = self.messages[message_id]
        message["content"] = content
        message["edited_timestamp"] = _iso()
        await self.dispatch("MESSAGE_UPDATE", dict(message))
        return message

    async def react(self, user_id: str, channel_id: str, message_id: str, emoji: str) -> None:
        """A member adds a unicode-emoji reaction (MESSAGE_REACTION_ADD)."""
        await self.dispatch("MESSAGE_REACTION_ADD", {
            "user_id": user_id, "channel_id": channel_id, "message_id": message_id, "guild_id": self.guild_id,
            "member": self._member(user_id), "emoji": {"id": None, "name": emoji}, "burst": False, "type": 0,
            "message_author_id": self.messages.get(message_id, {}).get("author", {}).get("id"),
        })

    def _interaction(self, itype: int, user_id: str, channel_id: str, data: dict[str, Any],
                     message: dict[str, Any] | None = None) -> dict[str, Any]:
        iid = self.snowflake()
        token = f"token-{iid}"
        channel = self.channels.get(channel_id) or self.threads.get(channel_id) or {"id": channel_id, "type": 0}
        payload = {
            "id": iid, "application_id": self.app_id, "type": itype, "token": token, "version": 1,
            "guild_id": self.guild_id, "channel_id": channel_id, "channel": channel,
            "member": self._member(user_id), "data": data, "locale": "en-US", "guild_locale": "en-US",
            "app_permissions": str(discord.Permissions.all().value), "entitlements": [],
            "authorizing_integration_owners": {"0": self.guild_id}, "context": 0,
            "attachment_size_limit": 8 * 1024 * 1024,
        }
        if not self._in_guild(channel_id):  # a DM: the user, no guild, no member
            for key in ("guild_id", "member", "guild_locale"):
                payload.pop(key)
            payload.update(user=self.users[user_id], context=1, authorizing_integration_owners={"1": user_id})
        if message is not None:
            payload["message"] = message
        self.interactions[iid] = Interaction(iid, token, itype, user_id, channel_id, data,
                                             message["id"] if message is not None else None)
        return payload

    async def slash(self, user_id: str, name: str, options: dict[str, Any] | None = None,
                    channel_id: str | None = None) -> Interaction:
        """A member runs a slash command that was synced to the guild (INTERACTION_CREATE type 2)."""
        command = next((c for c in self.commands.get(self.guild_id, []) if c["name"] == name), None)
        if command is None:
            raise AssertionError(f"/{name} was not synced to the guild")
        data = {"id": command["id"], "name": name, "type": 1, "guild_id": self.guild_id,
                "options": [{"name": k, "type": 3, "value": v} for k, v in (options or {}).items()]}
        payload = self._interaction(2, user_id, channel_id or self.mods_channel_id, data)
        await self.dispatch("INTERACTION_CREATE", payload)
        return self.interactions[payload["id"]]

    def _component(self, message: dict[str, Any], custom_id: str) -> dict[str, Any]:
        for row in message.get("components", []):
            for component in row.get("components", []):
                if component.get("custom_id") == custom_id:
                    return component
        raise AssertionError(f"no component {custom_id!r} on message {message['id']}")

    async def click(self, user_id: str, message_id: str, custom_id: str) -> Interaction:
        """A member clicks a button on a message (INTERACTION_CREATE type 3)."""
        message = self.messages[message_id]
        component = self._component(message, custom_id)
        data = {"custom_id": custom_id, "component_type": component["type"]}
        payload = self._interaction(3, user_id, message["channel_id"], data, message=message)
        await self.dispatch("INTERACTION_CREATE", payload)
        return self.interactions[payload["id"]]

    async def select(self, user_id: str, message_id: str, custom_id: str, values: list[str]) -> Interaction:
        """A member chooses in a select menu on a message (INTERACTION_CREATE type 3)."""
        message = self.messages[message_id]
        component = self._component(message, custom_id)
        data = {"custom_id": custom_id, "component_type": component["type"], "values": values}
        payload = self._interaction(3, user_id, message["channel_id"], data, message=message)
        await self.dispatch("INTERACTION_CREATE", payload)
        return self.interactions[payload["id"]]

    async def submit_modal(self, user_id: str, opened_by: Interaction, values: dict[str, str]) -> Interaction:
        """A member submits the modal the bot opened in answer to ``opened_by`` (INTERACTION_CREATE type 5).

        The submission echoes the modal's own layout (labels wrapping inputs), with the values filled in."""
        modal = opened_by.modal
        if modal is None:
            raise AssertionError("the bot did not open a modal")

        def fill(component: dict[str, Any]) -> dict[str, Any]:
            if component.get("type") == 18:
                return {"type": 18, "id": component.get("id", 1), "component": fill(component["component"])}
            if component.get("type") == 1:
                return {"type": 1, "id": component.get("id", 1),
                        "components": [fill(c) for c in component.get("components", [])]}
            cid = component.get("custom_id")
            return {"type": component["type"], "id": component.get("id", 2), "custom_id": cid,
                    "value": values.get(cid, component.get("value", ""))}

        data = {"custom_id": modal["custom_id"], "components": [fill(c) for c in modal["components"]]}
        message = self.messages.get(opened_by.message_id or "")
        payload = self._interaction(5, user_id, opened_by.channel_id, data, message=message)
        await self.dispatch("INTERACTION_CREATE", payload)
        return self.interactions[payload["id"]]

    # ------------------------------------------------------------------ assertions

    def calls_to(self, method: str, path_regex: str) -> list[Call]:
        regex = re.compile(path_regex)
        return [c for c in self.calls if c.method == method and regex.fullmatch(c.path)]

    def bot_messages(self, channel_id: str) -> list[dict[str, Any]]:
        return [m for m in self.messages.values() if m["channel_id"] == channel_id and m["author"]["id"] == self.bot_id]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last REST calls: {self.calls[-8:]}")
            await asyncio.sleep(0.01)
