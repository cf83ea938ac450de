"""Slack as a platform of the conversation core: bolt listeners in, Web API calls out.

Everything here translates. Slack events become ``IncomingMessage`` / ``Actor`` objects for the
core, and what the core hands back (``PatientView``, ``ReviewCard``, alerts) becomes Block Kit.
Who may review or moderate is decided by the core; this module only looks up, on every action,
which roles the Slack user holds (reviewer user group or listed ids; listed moderator ids).

The same listeners serve Socket Mode and HTTP mode (see ``bot.slack_platform.runner``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web.async_client import AsyncWebClient

from bot import catchup
from bot.live import hub_for, job_line
from bot.commands import COMMANDS
from bot.platform import ConversationRef, IncomingMessage, PatientView, PlatformHealth, ReviewCard, dm_key, is_dm_key
from bot.settings import SlackSettings
from bot.slack_platform import blocks
from pipeline import jobs
from reviewers.models import (MODERATOR_ROLE, REVIEWER_ROLE, Action, Actor, PermissionDenied, ReviewError, Rubric,
                              scores_needed)
from reviewers.service import MAX_EDIT_CHARS

if TYPE_CHECKING:
    from bot.service import Service

log = logging.getLogger(__name__)

PLATFORM = "slack"
FORGET_COMMAND = "forget-me"
APPROVE_REACTIONS = frozenset({"white_check_mark", "heavy_check_mark"})  # ✅ ✔️
REJECT_REACTIONS = frozenset({"x", "heavy_multiplication_x"})  # ❌ ✖️
# Message subtypes that are a person writing; edits, joins, deletions and bot posts are not.
PATIENT_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})
ACK_BUDGET_S = 2.0  # a slash command result faster than this goes in the ack itself (Slack allows 3 s)
EDIT_LIMIT = MAX_EDIT_CHARS
_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(\|[^>]*)?>")


class _Seen:
    """A bounded, time-limited set: Slack retries an event for about five minutes."""

    def __init__(self, ttl_s: float = 3600.0, max_items: int = 20_000):
        self.ttl_s = ttl_s
        self.max_items = max_items
        self._items: OrderedDict[str, float] = OrderedDict()

    def add(self, key: str) -> bool:
        """Remember ``key``; False when it was already there (a duplicate)."""
        now = time.monotonic()
        while self._items:
            oldest, at = next(iter(self._items.items()))
            if now - at < self.ttl_s and len(self._items) < self.max_items:
                break
            self._items.popitem(last=False)
        if key in self._items:
            return False
        self._items[key] = now
        return True

    def __contains__(self, key: str) -> bool:
        return key in self._items


class ReviewerRoster:
    """Members of the reviewer user group, kept in memory so that no acknowledgement waits on Slack.

    ``usergroups.users.list`` is rate limited (Tier 2); under a 429 the SDK waits ``Retry-After``
    seconds, longer than Slack's 3-second window for acknowledging a request. So the list is
    cached: a member found in a list younger than ``ttl_s`` is trusted without a call (someone
    removed from the group loses the role within ``ttl_s``); anyone not in it is looked up again
    at once (someone just added may review at once). Concurrent lookups share one call, and a
    failed lookup keeps the last list that Slack gave."""

    def __init__(self, client: AsyncWebClient, group: str | None, ttl_s: float = 60.0):
        self.client = client
        self.group = group
        self.ttl_s = ttl_s
        self._members: frozenset[str] | None = None
        self._fetched_at = float("-inf")
        self._inflight: asyncio.Task[frozenset[str] | None] | None = None

    def cached(self, user_id: str) -> bool | None:
        """True when a fresh list has the user; None when only Slack can tell."""
        if self._members is not None and user_id in self._members and self.fresh:
            return True
        return None

    @property
    def fresh(self) -> bool:
        return time.monotonic() - self._fetched_at < self.ttl_s

    async def contains(self, user_id: str) -> bool:
        if not self.group:
            return False
        if self.cached(user_id):
            return True
        members = await self.refresh()
        return members is not None and user_id in members

    async def refresh(self) -> frozenset[str] | None:
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._fetch())
        return await asyncio.shield(self._inflight)

    async def _fetch(self) -> frozenset[str] | None:
        try:
            response = await self.client.usergroups_users_list(usergroup=self.group)
        except SlackApiError as exc:
            log.error("slack: cannot read the reviewer user group %s (%s); %s", self.group, _error(exc),
                      "using the list read earlier" if self._members is not None else "only listed reviewer ids count")
            return self._members
        self._members = frozenset(response.get("users") or [])
        self._fetched_at = time.monotonic()
        return self._members


def command_names(cfg: SlackSettings) -> dict[str, str]:
    """Slash command for each moderator command and the patient's forget-me, with overrides."""
    names = {name: f"/{cfg.command_prefix}{name}" for name in COMMANDS}
    names[FORGET_COMMAND] = "/forget-me"
    unknown = set(cfg.command_names) - set(names)
    if unknown:
        raise ValueError(
            f"setting slack.command_names: unknown command(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(names)}"
        )
    for name, slash in cfg.command_names.items():
        names[name] = slash if slash.startswith("/") else "/" + slash
    return names


class SlackPlatform:
    """The ``Platform`` the core talks to, plus the bolt listeners that feed the core."""

    name = PLATFORM
    max_message_chars = blocks.SECTION_LIMIT

    def __init__(self, service: "Service", client: AsyncWebClient, cfg: SlackSettings):
        self.service = service
        self.client = client
        self.cfg = cfg
        self.health = PlatformHealth()
        self.on_tokens_revoked: Any = None  # set by the runner: Slack says the app lost its tokens
        self.commands = command_names(cfg)
        self.bot_user_id: str | None = None
        self.ack_budget_s = ACK_BUDGET_S
        self.job_poll_s = 10.0  # how often a /retrain watcher looks at its job
        self.job_watch_limit_s = 30 * 60.0  # a response_url is valid for 30 minutes
        self._events = _Seen()
        self._messages = _Seen()
        self.roster = ReviewerRoster(client, cfg.reviewer_usergroup_id)
        self._card_items: dict[str, int] = {}  # "channel:ts" of a card -> review item id
        self._names: dict[str, tuple[str, float]] = {}
        self._regions: dict[str, tuple[str | None, float]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.caught_up = asyncio.Event()  # set when a catch-up pass has finished
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # ================================================================== out: Platform protocol

    def where_visible(self, conv: ConversationRef) -> str:
        if is_dm_key(conv.channel_id, conv.thread_id):
            return "only you and this app: this is a direct message."
        return ("this conversation is in a Slack channel, so every member of the channel can read it. For "
                "privacy, send the app a direct message instead, if this workspace allows it.")

    @staticmethod
    def _thread_of(conv: ConversationRef) -> str | None:
        """Where a conversation's messages go: its thread, or the DM itself (one conversation per patient)."""
        return None if is_dm_key(conv.channel_id, conv.thread_id) else conv.thread_id

    async def send_to_patient(self, conv: ConversationRef, view: PatientView) -> list[str]:
        posted: list[str] = []
        for message in blocks.patient_messages(view):
            try:
                response = await self.client.chat_postMessage(
                    channel=conv.channel_id, thread_ts=self._thread_of(conv), text=message["text"],
                    blocks=message["blocks"], unfurl_links=False, unfurl_media=False,
                )
            except SlackApiError as exc:
                if not posted:
                    raise
                log.error("slack: part %d of a reply to conversation %s failed: %s",
                          len(posted) + 1, conv.id, _error(exc))
                break
            posted.append(response["ts"])
        return posted

    async def delete_bot_messages(self, conv: ConversationRef, known: list[str]) -> tuple[int, int]:
        """After /forget-me: delete the app's own messages in the patient's thread or DM with
        chat.delete (every one found in its history, and the replies it knows). The patient's own
        messages are theirs: a bot token cannot delete them. (deleted, left)."""
        thread = self._thread_of(conv)
        found = set(known)
        cursor = None
        try:
            while True:
                if thread:
                    page = await self.client.conversations_replies(channel=conv.channel_id, ts=thread, limit=200,
                                                                   cursor=cursor)
                else:
                    page = await self.client.conversations_history(channel=conv.channel_id, limit=200, cursor=cursor)
                for message in page.get("messages") or []:
                    if message.get("bot_id") or (self.bot_user_id and message.get("user") == self.bot_user_id):
                        found.add(message["ts"])
                cursor = (page.get("response_metadata") or {}).get("next_cursor")
                if not cursor:
                    break
        except SlackApiError as exc:
            log.warning("slack: reading a forgotten conversation's history failed: %s", _error(exc))
        deleted = left = 0
        for ts in sorted(found):
            try:
                await self.client.chat_delete(channel=conv.channel_id, ts=ts)
                deleted += 1
            except SlackApiError as exc:
                if _error(exc) != "message_not_found":
                    log.warning("slack: a forgotten patient's reply could not be deleted: %s", _error(exc))
                    left += 1
        return deleted, left

    async def update_patient_message(self, conv: ConversationRef, message_ids: list[str], view: PatientView) -> list[str]:
        showing: list[str] = []
        messages = blocks.patient_messages(view)
        for index, message in enumerate(messages):
            if index < len(message_ids):
                try:
                    await self.client.chat_update(channel=conv.channel_id, ts=message_ids[index],
                                                  text=message["text"], blocks=message["blocks"])
                    showing.append(message_ids[index])
                    continue
                except SlackApiError as exc:
                    if _error(exc) not in ("message_not_found", "cant_update_message", "edit_window_closed"):
                        raise
                    log.warning("slack: reply %s cannot be updated (%s); posting it again", message_ids[index], _error(exc))
            response = await self.client.chat_postMessage(
                channel=conv.channel_id, thread_ts=self._thread_of(conv), text=message["text"],
                blocks=message["blocks"], unfurl_links=False, unfurl_media=False,
            )
            showing.append(response["ts"])
        for ts in message_ids[len(messages):]:  # the new text needs fewer parts than the old one
            try:
                await self.client.chat_delete(channel=conv.channel_id, ts=ts)
            except SlackApiError as exc:
                log.warning("slack: could not delete the extra part %s: %s", ts, _error(exc))
        return showing

    # ------------------------------------------------------------------ other routes to a patient (crisis)

    def crisis_routes(self, conv: ConversationRef) -> list[str]:
        """Other ways to reach the patient when their thread refuses a post (bot.incidents)."""
        return [] if is_dm_key(conv.channel_id, conv.thread_id) else ["channel", "dm"]

    async def send_via(self, conv: ConversationRef, view: PatientView, route: str) -> list[str]:
        """Post ``view`` in the channel itself mentioning the patient (``channel``), or in the app's
        direct message with them (``dm``: chat.postMessage to the user id opens it)."""
        if route not in ("channel", "dm"):
            raise ValueError(f"unknown route {route!r}")
        channel = conv.channel_id if route == "channel" else conv.patient_user_id
        posted: list[str] = []
        for index, message in enumerate(blocks.patient_messages(view)):
            text, body = message["text"], message["blocks"]
            if route == "channel" and index == 0:
                text = f"<@{conv.patient_user_id}> {text}"
                body = [{"type": "section", "text": {"type": "mrkdwn", "text": f"<@{conv.patient_user_id}>"}}, *body]
            response = await self.client.chat_postMessage(channel=channel, text=text, blocks=body,
                                                          unfurl_links=False, unfurl_media=False)
            posted.append(response["ts"])
        return posted

    async def conversation_link(self, conv: ConversationRef, message_id: str | None) -> str | None:
        """The permalink of the patient's message (chat.getPermalink), for moderators."""
        response = await self.client.chat_getPermalink(channel=conv.channel_id, message_ts=message_id or conv.thread_id)
        return response.get("permalink")

    @staticmethod
    def describe_error(exc: BaseException) -> str:
        """Slack's error code (``is_archived``, ``not_in_channel`` …) rather than the SDK's long message."""
        return _error(exc) if isinstance(exc, SlackApiError) else f"{type(exc).__name__}: {exc}"

    async def post_review_card(self, card: ReviewCard) -> str | None:
        channel = self.cfg.reviewer_channel_id
        if not channel:
            log.warning("slack: no reviewer channel is set (slack.reviewer_channel_id); review card %s not posted",
                        card.item_id)
            return None
        rendered = blocks.review_card(card)
        response = await self.client.chat_postMessage(channel=channel, text=rendered["text"],
                                                      blocks=rendered["blocks"], unfurl_links=False, unfurl_media=False)
        ref = f"{response['channel'] or channel}:{response['ts']}"
        self._card_items[ref] = card.item_id
        return ref

    async def update_review_card(self, card: ReviewCard) -> None:
        if not card.card_ref or ":" not in card.card_ref:
            return
        channel, ts = card.card_ref.split(":", 1)
        rendered = blocks.review_card(card)
        await self.client.chat_update(channel=channel, ts=ts, text=rendered["text"], blocks=rendered["blocks"])

    async def alert(self, text: str, urgent: bool = False, report: Any = None) -> None:
        """Into the reviewer channel; a ``report`` adds its tables as Block Kit fields and its
        chart as a file shared in the alert's thread (files.uploadV2)."""
        channel = self.cfg.reviewer_channel_id
        if not channel:
            log.warning("slack: alert not posted, no reviewer channel is set")
            return
        prefix = ":rotating_light: " if urgent else ":warning: "
        if urgent:
            mentions = [f"<@{uid}>" for uid in self.cfg.moderator_user_ids]
            mentions.append(f"<!subteam^{self.cfg.reviewer_usergroup_id}>" if self.cfg.reviewer_usergroup_id else "<!here>")
            prefix += " ".join(mentions) + " "
        if report is None:
            await self.client.chat_postMessage(channel=channel, text=prefix + blocks.escape(text))
            return
        body = blocks.clip(prefix + blocks.escape(text), blocks.SECTION_LIMIT)
        posted = await self.client.chat_postMessage(
            channel=channel, text=body,
            blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": body}}, *blocks.report_blocks(report)][:50])
        if report.image and Path(report.image).is_file():
            # The alert is posted: a chart that cannot follow is logged, never a reason to post it again.
            try:
                await self.client.files_upload_v2(channel=channel, thread_ts=posted.get("ts"), file=report.image,
                                                  filename=Path(report.image).name, title=report.title)
            except (SlackApiError, SlackRequestError) as exc:
                detail = _error(exc) if isinstance(exc, SlackApiError) else str(exc)
                log.warning("slack: the chart of %r was not shared (%s)%s", report.title, detail,
                            "; add the files:write scope and reinstall the app" if "missing_scope" in detail else "")

    # ================================================================== roles

    async def actor(self, user_id: str, display_name: str = "", *, group: bool = True) -> Actor:
        """The user with the roles they hold (the reviewer group through :class:`ReviewerRoster`;
        ``group=False`` when only the listed ids matter, as for moderator commands)."""
        roles: set[str] = set()
        if user_id in self.cfg.reviewer_user_ids or (group and await self.roster.contains(user_id)):
            roles.add(REVIEWER_ROLE)
        if user_id in self.cfg.moderator_user_ids:
            roles.add(MODERATOR_ROLE)
        return Actor(PLATFORM, user_id, display_name or await self._display_name(user_id), frozenset(roles))

    async def _display_name(self, user_id: str) -> str:
        """A name for audit trails and cards (cached an hour; names are not permissions)."""
        cached = self._names.get(user_id)
        if cached and time.monotonic() - cached[1] < 3600:
            return cached[0]
        name = user_id
        try:
            user = (await self.client.users_info(user=user_id)).get("user") or {}
            profile = user.get("profile") or {}
            name = profile.get("display_name") or user.get("real_name") or user.get("name") or user_id
        except SlackApiError as exc:
            log.info("slack: users.info for %s failed (%s)", user_id, _error(exc))
        self._names[user_id] = (name, time.monotonic())
        return name

    async def _region(self, user_id: str) -> str | None:
        """The patient's country from their Slack locale ("en-GB" -> "GB"), for crisis resources."""
        cached = self._regions.get(user_id)
        if cached and time.monotonic() - cached[1] < 3600:
            return cached[0]
        region = None
        try:
            user = (await self.client.users_info(user=user_id, include_locale=True)).get("user") or {}
            locale = str(user.get("locale") or "")
            if "-" in locale:
                region = locale.rsplit("-", 1)[1].upper() or None
        except SlackApiError as exc:
            log.info("slack: users.info for %s failed (%s)", user_id, _error(exc))
        self._regions[user_id] = (region, time.monotonic())
        return region

    async def _region_soon(self, user_id: str) -> str | None:
        """The region if Slack says it quickly: the message must be stored without delay."""
        try:
            return await asyncio.wait_for(self._region(user_id), timeout=1.5)
        except asyncio.TimeoutError:
            return None

    # ================================================================== in: bolt listeners

    def register(self, app: AsyncApp) -> None:
        track = self._tracked
        app.middleware(self._dedup_events)
        app.event("message")(track(self._on_message))
        app.event("app_mention")(track(self._on_mention))
        app.event("reaction_added")(track(self._on_reaction))
        app.event("tokens_revoked")(self._on_revoked)
        app.event("app_uninstalled")(self._on_revoked)
        app.action(blocks.ACTION_APPROVE)(track(self._on_approve))
        app.action(blocks.ACTION_REJECT)(track(self._on_reject))
        app.action(blocks.ACTION_EDIT)(track(self._on_edit))
        app.action(re.compile(f"^{blocks.RUBRIC_ACTION_PREFIX}"))(self._ack_only)
        app.view(blocks.EDIT_CALLBACK)(track(self._on_edit_submit))
        app.action(blocks.ACTION_CONSENT_AGREE)(track(self._on_consent))
        app.action(blocks.ACTION_CONSENT_DECLINE)(track(self._on_consent))
        app.action(blocks.ACTION_FORGET_CONFIRM)(track(self._on_forget_confirm))
        app.action(blocks.ACTION_FORGET_CANCEL)(self._on_forget_cancel)
        for name, slash in self.commands.items():
            if name == FORGET_COMMAND:
                app.command(slash)(self._on_forget_command)
            else:
                app.command(slash)(track(self._command_handler(name)))

    def _tracked(self, func: Any) -> Any:
        """Count a listener while it runs (bolt runs them after the ack), so shutdown can wait."""

        @functools.wraps(func)
        async def listener(*args: Any, **kwargs: Any) -> Any:
            self._inflight += 1
            self._idle.clear()
            try:
                return await func(*args, **kwargs)
            finally:
                self._inflight -= 1
                if not self._inflight:
                    self._idle.set()

        return listener

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for listeners still working on acknowledged requests (replies being posted)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("slack: %d request(s) still in progress at shutdown", self._inflight)

    async def _dedup_events(self, body: dict, req: Any, context: Any, next: Any) -> BoltResponse | None:
        """Slack redelivers an event it thinks was not acknowledged in time; answer it only once."""
        if isinstance(body, dict) and body.get("type") == "event_callback":
            if context.get("bot_user_id") and not self.bot_user_id:
                self.bot_user_id = context.get("bot_user_id")
            event_id = body.get("event_id")
            if event_id and not self._events.add(event_id):
                retry = (req.headers.get("x-slack-retry-num") or ["?"])[0]
                reason = (req.headers.get("x-slack-retry-reason") or ["?"])[0]
                log.info("slack: event %s redelivered (retry %s, %s); already handled", event_id, retry, reason)
                return BoltResponse(status=200, body="")
        await next()
        return None

    async def _ack_only(self, ack: Any) -> None:
        await ack()

    async def _on_revoked(self, event: dict) -> None:
        what = "installation" if event.get("type") == "app_uninstalled" else "tokens"
        if self.on_tokens_revoked is not None:
            self.on_tokens_revoked(what)

    # ------------------------------------------------------------------ patients

    async def _on_message(self, event: dict, context: Any) -> None:
        if event.get("subtype") == "message_changed":
            await self._on_message_changed(event, context)
            return
        if event.get("subtype") not in PATIENT_SUBTYPES or event.get("bot_id") or not event.get("user"):
            return
        channel = event.get("channel", "")
        if channel == self.cfg.reviewer_channel_id:
            return
        thread_ts = event.get("thread_ts") or event["ts"]
        if event.get("channel_type") == "im":
            if not self.cfg.allow_dms:
                await self._dm_not_enabled(event)
                return
            await self._direct_message(event, context)
            return
        if channel not in self.cfg.support_channel_ids:
            # Elsewhere only follow-ups in a thread the patient started by mentioning the bot;
            # new mentions arrive as app_mention.
            if not event.get("thread_ts") or self._mentions_bot(event.get("text", "")):
                return
            if await self._thread_owner(channel, thread_ts) is None:
                return
        await self._patient_message(event, thread_ts, context, explicit=False)

    async def _on_message_changed(self, event: dict, context: Any) -> None:
        """A person edited a message (``message_changed``): the core triages the new text again."""
        changed = event.get("message") or {}
        before = event.get("previous_message") or {}
        if changed.get("bot_id") or not changed.get("user") or changed.get("text") == before.get("text"):
            return  # a bot's edit, or an unfurl / reaction that left the text as it was
        bot_user = context.get("bot_user_id") or self.bot_user_id
        text = changed.get("text") or ""
        if bot_user:
            text = re.sub(rf"<@{bot_user}(\|[^>]*)?>", "", text)
        try:
            await self.service.core.handle_edit(IncomingMessage(
                PLATFORM, changed["user"], event.get("channel", ""), "", text.strip(),
                platform_message_id=changed.get("ts")))
        except Exception:
            log.exception("slack: handling an edit of %s failed", changed.get("ts"))

    async def _on_mention(self, event: dict, context: Any) -> None:
        if event.get("bot_id") or not event.get("user") or event.get("channel") == self.cfg.reviewer_channel_id:
            return
        if event.get("channel_type") == "im" or str(event.get("channel", "")).startswith("D"):
            if self.cfg.allow_dms:
                await self._direct_message(event, context)
            return
        await self._patient_message(event, event.get("thread_ts") or event["ts"], context, explicit=True)

    async def _direct_message(self, event: dict, context: Any) -> None:
        """A DM is one conversation per patient (the core's key: bot.platform.dm_key); typing
        “new conversation” starts a fresh one. A reply inside one of the older per-message DM
        threads stays in that thread's conversation."""
        channel, ts = event["channel"], event["ts"]
        core = self.service.core
        if core.is_new_conversation_command(event.get("text") or ""):
            if self._messages.add(f"{channel}:{ts}"):
                await core.start_new_conversation(IncomingMessage(
                    PLATFORM, event["user"], channel, dm_key(channel, ts), "", platform_message_id=ts))
            return
        thread_ts = event.get("thread_ts")
        if thread_ts and await self._thread_owner(channel, thread_ts) is not None:
            key = thread_ts
        else:
            key = await core.dm_conversation_key(PLATFORM, channel)
        await self._patient_message(event, key, context, explicit=True)

    def _mentions_bot(self, text: str) -> bool:
        return bool(self.bot_user_id) and f"<@{self.bot_user_id}" in text

    async def _patient_message(self, event: dict, thread_ts: str, context: Any, explicit: bool) -> None:
        """Hand one patient message to the core. ``explicit``: addressed to the bot (mention, DM)."""
        channel, user, ts = event["channel"], event["user"], event["ts"]
        # A message mentioning the bot arrives twice (message + app_mention) under two event
        # ids, and a retry may arrive after a restart: the message itself is the key.
        if not self._messages.add(f"{channel}:{ts}") or await catchup.is_stored(self.service.db, PLATFORM, ts, channel):
            return
        if event.get("thread_ts"):
            owner = await self._thread_owner(channel, thread_ts)
            if owner is not None and owner != user:
                if not explicit:  # people talking to each other in a patient's thread
                    return
                await self._ephemeral(channel, user, "This thread is another person's conversation with the assistant. "
                                      "To ask your own question, post a new message.", thread_ts=thread_ts)
                return
        bot_user = context.get("bot_user_id") or self.bot_user_id
        text = event.get("text") or ""
        if bot_user:
            text = re.sub(rf"<@{bot_user}(\|[^>]*)?>", "", text)
        incoming = IncomingMessage(
            platform=PLATFORM,
            user_id=user,
            channel_id=channel,
            thread_id=thread_ts,
            text=text.strip(),
            attachments=len(event.get("files") or []),
            platform_message_id=ts,
            region=await self._region_soon(user),
        )
        try:
            await self.service.core.handle_message(incoming)
        except Exception:
            log.exception("slack: handling message %s in %s failed", ts, channel)

    # ------------------------------------------------------------------ what was missed

    def spawn_catch_up(self) -> None:
        self._spawn(self.catch_up())

    async def catch_up(self) -> int:
        """Hand the listeners what patients wrote while the app was away (bot/catchup.py): replies
        in the threads of recent conversations (``conversations.replies``), and top-level messages
        in DMs and support channels after the newest one stored (``conversations.history``).
        Returns how many messages were looked at."""
        self.caught_up.clear()
        seen = 0
        try:
            known = await catchup.known_conversations(self.service.db, PLATFORM, float)
            channels: dict[str, str] = {}  # channel -> top-level messages after this ts
            for k in known:
                if k.channel_id.startswith("D"):
                    channels[k.channel_id] = max(channels.get(k.channel_id, "0"), k.last_message_id, key=float)
                if not is_dm_key(k.channel_id, k.thread_id):
                    seen += await self._catch_up(k.channel_id, k.last_message_id, thread_ts=k.thread_id)
            for channel in self.cfg.support_channel_ids:
                newest = catchup.newest_in_channel(known, channel, float)
                if newest is not None:
                    channels[channel] = max(channels.get(channel, "0"), newest, key=float)
            for channel, oldest in channels.items():
                seen += await self._catch_up(channel, oldest)
            if seen:
                log.info("slack: looked at %d message(s) posted while the app was away", seen)
        except Exception:
            log.exception("slack: catching up on missed messages failed")
        finally:
            self.caught_up.set()
        return seen

    async def _catch_up(self, channel: str, oldest: str, thread_ts: str | None = None) -> int:
        missed: list[dict] = []
        cursor = None
        try:
            while len(missed) < catchup.MAX_MESSAGES_PER_PLACE:
                if thread_ts:
                    page = await self.client.conversations_replies(channel=channel, ts=thread_ts, oldest=oldest,
                                                                   limit=100, cursor=cursor)
                else:
                    page = await self.client.conversations_history(channel=channel, oldest=oldest, limit=100,
                                                                   cursor=cursor)
                missed += [m for m in page.get("messages") or [] if float(m.get("ts", 0)) > float(oldest)]
                cursor = (page.get("response_metadata") or {}).get("next_cursor")
                if not page.get("has_more") or not cursor:
                    break
        except SlackApiError as exc:
            log.warning("slack: cannot read what was missed in %s (%s)", channel, _error(exc))
        missed = sorted(missed, key=lambda m: float(m["ts"]))[: catchup.MAX_MESSAGES_PER_PLACE]
        context = {"bot_user_id": self.bot_user_id}
        for message in missed:
            event = {**message, "type": "message", "channel": channel,
                     "channel_type": "im" if channel.startswith("D") else "channel"}
            await self._on_message(event, context)
        return len(missed)

    async def _thread_owner(self, channel: str, thread_ts: str) -> str | None:
        row = await self.service.db.fetchone(
            "SELECT p.platform_user_id FROM conversations c JOIN patients p ON p.id = c.patient_id"
            " WHERE c.platform = ? AND c.channel_id = ? AND c.thread_id = ?",
            (PLATFORM, channel, thread_ts),
        )
        return row[0] if row else None

    async def _dm_not_enabled(self, event: dict) -> None:
        channels = ", ".join(f"<#{c}>" for c in self.cfg.support_channel_ids)
        text = "I don't answer direct messages here." + (f" Please ask in {channels}." if channels else "")
        try:
            await self.client.chat_postMessage(channel=event["channel"], thread_ts=event["ts"], text=text)
        except SlackApiError as exc:
            log.warning("slack: DM notice failed: %s", _error(exc))

    # ------------------------------------------------------------------ experts

    async def _on_approve(self, ack: Any, body: dict, action: dict) -> None:
        await ack()
        await self._button_decision(body, action, Action.APPROVE)

    async def _on_reject(self, ack: Any, body: dict, action: dict) -> None:
        await ack()
        await self._button_decision(body, action, Action.REJECT)

    async def _button_decision(self, body: dict, action: dict, decision: Action) -> None:
        user = body.get("user") or {}
        channel = (body.get("channel") or {}).get("id") or self.cfg.reviewer_channel_id or ""
        rubric = blocks.rubric_from_values((body.get("state") or {}).get("values") or {})
        await self._decide(_int(action.get("value")), user.get("id", ""), _user_name(user), channel, decision,
                           rubric=rubric)

    async def _on_reaction(self, event: dict) -> None:
        item = event.get("item") or {}
        name = (event.get("reaction") or "").split("::")[0]  # skin tones: "+1::skin-tone-3"
        if item.get("type") != "message" or item.get("channel") != self.cfg.reviewer_channel_id:
            return
        if name in APPROVE_REACTIONS:
            decision = Action.APPROVE
        elif name in REJECT_REACTIONS:
            decision = Action.REJECT
        else:
            return
        item_id = await self._card_item(item["channel"], item.get("ts", ""))
        if item_id is None:
            return
        await self._decide(item_id, event.get("user", ""), "", item["channel"], decision)

    async def _card_item(self, channel: str, ts: str, attempts: int = 3) -> int | None:
        """The review item of a card. A card is known a moment after Slack shows it, so a
        reaction on an unknown message is looked up again briefly before it is ignored."""
        ref = f"{channel}:{ts}"
        for attempt in range(attempts):
            if ref in self._card_items:
                return self._card_items[ref]
            row = await self.service.db.fetchone(
                "SELECT id FROM review_items WHERE json_extract(card_ref, '$.slack') = ?", (ref,)
            )
            if row is not None:
                self._card_items[ref] = int(row[0])
                return int(row[0])
            if attempt < attempts - 1:
                await asyncio.sleep(0.5)
        return None

    async def _decide(self, item_id: int | None, user_id: str, name: str, channel: str, decision: Action,
                      edited_text: str | None = None, rubric: Rubric | None = None) -> None:
        if item_id is None or not user_id:
            return
        actor = await self.actor(user_id, name)
        try:
            outcome = await self.service.core.decide(item_id, actor, decision, edited_text=edited_text, rubric=rubric)
        except (PermissionDenied, ReviewError) as exc:
            await self._ephemeral(channel, user_id, str(exc))
            return
        except Exception:
            log.exception("slack: %s on review item %s by %s failed", decision.value, item_id, actor.label)
            await self._ephemeral(channel, user_id, "Something went wrong while recording your decision. "
                                  "Please check the card and try again.")
            return
        if not outcome.closed_now:
            await self._ephemeral(channel, user_id, outcome.message)

    async def _on_edit(self, ack: Any, body: dict, action: dict, client: AsyncWebClient) -> None:
        await ack()
        trigger_id = body.get("trigger_id")
        user = body.get("user") or {}
        channel = (body.get("channel") or {}).get("id") or self.cfg.reviewer_channel_id or ""
        item_id = _int(action.get("value"))
        if item_id is None:
            return
        card = await self.service.core.review_card(item_id)
        if card is None:
            await self._ephemeral(channel, user.get("id", ""), f"Review item {item_id} no longer exists.")
            return
        try:  # no edit window for non-reviewers; a slow lookup must not outlive the trigger_id
            actor = await asyncio.wait_for(self.actor(user.get("id", ""), _user_name(user)), timeout=1.2)
        except asyncio.TimeoutError:
            actor = None  # open it anyway: the submission is checked again
        if actor is not None and not actor.has(REVIEWER_ROLE):
            await self.service.reviews.audit(item_id, actor.label, "refused", "edit: lacks the reviewer role")
            await self._ephemeral(channel, actor.user_id, "Only members of the reviewer group can review replies.")
            return
        rubric = blocks.rubric_from_values((body.get("state") or {}).get("values") or {})
        metadata = {"item_id": item_id, "channel": channel}
        modal = blocks.edit_modal(card, metadata, rubric)
        if modal is None:
            await self._ephemeral(channel, user.get("id", ""),
                                  f"This reply is {len(card.reply_text):,} characters, more than the edit window holds "
                                  f"({blocks.MAX_EDIT_PARTS} × {blocks.MODAL_INPUT_LIMIT:,}). Edit it in the console's "
                                  "reviewer queue, or approve or reject it here.")
            return
        try:
            # A trigger_id lives 3 seconds: the modal opens before anything slow happens.
            await self.client.views_open(trigger_id=trigger_id, view=modal)
        except SlackApiError as exc:
            log.warning("slack: the edit modal for item %s did not open: %s", item_id, _error(exc))
            await self._ephemeral(channel, user.get("id", ""),
                                  "The edit window could not be opened (Slack said: "
                                  f"{_error(exc)}). Please press Edit again.")

    async def _on_edit_submit(self, ack: Any, body: dict, view: dict) -> None:
        values = (view.get("state") or {}).get("values") or {}
        try:
            metadata = json.loads(view.get("private_metadata") or "{}")
        except ValueError:
            metadata = {}
        text, part_errors = blocks.edited_text(values, str(metadata.get("cuts") or ""))
        if part_errors:
            await ack(response_action="errors", errors=part_errors)
            return
        if not text:
            await ack(response_action="errors",
                      errors={blocks.EDIT_BLOCK: "The corrected reply is empty. Write the text the patient should see."})
            return
        if len(text) > EDIT_LIMIT:
            await ack(response_action="errors",
                      errors={blocks.EDIT_BLOCK: f"The reply is {len(text)} characters; the limit is {EDIT_LIMIT}."})
            return
        user = body.get("user") or {}
        # Refusing inside the modal needs the answer before the ack; Slack allows 3 s for the ack,
        # so the role lookup gets a budget, after which the modal closes and the core checks again.
        lookup = asyncio.ensure_future(self.actor(user.get("id", ""), _user_name(user)))
        done, _ = await asyncio.wait({lookup}, timeout=self.ack_budget_s / 2)
        if lookup in done and not lookup.result().has(REVIEWER_ROLE):
            await ack(response_action="errors",
                      errors={blocks.EDIT_BLOCK: "Only members of the reviewer group can review replies."})
            return
        rubric = blocks.rubric_from_values(values)
        if scores_needed(Action.EDIT, rubric):  # kept in the modal: the reviewer's text is not lost
            await ack(response_action="errors",
                      errors={f"{blocks.RUBRIC_BLOCK_PREFIX}{name}": "Choose a score from 1 to 5."
                              for name in rubric.missing()})
            return
        await ack()
        actor = await lookup
        channel = metadata.get("channel") or self.cfg.reviewer_channel_id or ""
        await self._decide(_int(metadata.get("item_id")), actor.user_id, actor.display_name, channel, Action.EDIT,
                           edited_text=text, rubric=rubric)

    async def _ephemeral(self, channel: str, user: str, text: str, thread_ts: str | None = None) -> None:
        if not channel or not user:
            return
        try:
            await self.client.chat_postEphemeral(channel=channel, user=user, text=text, thread_ts=thread_ts)
        except SlackApiError as exc:
            log.warning("slack: ephemeral message to %s failed: %s", user, _error(exc))

    # ------------------------------------------------------------------ moderators

    def _command_handler(self, name: str):
        async def handle(ack: Any, command: dict, respond: Any) -> None:
            await self._run_command(name, ack, command, respond)

        handle.__name__ = f"slash_{name}"
        return handle

    async def _run_command(self, name: str, ack: Any, command: dict, respond: Any) -> None:
        slash = self.commands[name]
        argument = (command.get("text") or "").strip() or None

        async def run() -> Any:
            # Moderator commands need the moderator ids only: no user-group call before the ack;
            # crisis cases are for reviewers too (the group, cached by the roster).
            actor = await self.actor(command.get("user_id", ""), command.get("user_name", ""), group=name == "case")
            return await self.service.commands.run(actor, name, argument)

        task = asyncio.ensure_future(run())
        done, _ = await asyncio.wait({task}, timeout=self.ack_budget_s)
        if task in done:
            await ack(text=self._command_text(name, task), response_type="ephemeral",
                      **self._command_blocks(name, task))
        else:  # long work: acknowledge now (Slack's 3 s), report through the response_url
            await ack(text=f":hourglass_flowing_sand: Working on `{slash}`…", response_type="ephemeral")
            await asyncio.wait({task})
            await self._respond(respond, self._command_text(name, task), **self._command_blocks(name, task))
        if not task.cancelled() and task.exception() is None:
            reply = task.result()
            if name == "retrain" and reply.data.get("created"):
                self._spawn(self._watch_job(int(reply.data["job_id"]), respond))

    def _command_text(self, name: str, task: asyncio.Future) -> str:
        exc = task.exception()
        if isinstance(exc, PermissionDenied):
            return f":no_entry: {exc}"
        if exc is not None:
            log.error("slack: /%s failed", name, exc_info=exc)
            detail = self.service.settings.redact(str(exc))  # an upstream error may quote a key
            return f":x: `{self.commands[name]}` failed: {blocks.escape(detail)[:500]}"
        reply = task.result()
        return blocks.clip(("" if reply.ok else ":warning: ") + blocks.escape(reply.text), blocks.SECTION_LIMIT)

    def _command_blocks(self, name: str, task: asyncio.Future) -> dict[str, Any]:
        """A reply's tables as Block Kit fields (``blocks=``), when it has a report."""
        if task.cancelled() or task.exception() is not None or task.result().report is None:
            return {}
        text = self._command_text(name, task)
        return {"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}},
                           *blocks.report_blocks(task.result().report)][:50]}

    async def _watch_job(self, job_id: int, respond: Any) -> None:
        """Show a retraining job's progress in ONE message in the reviewer channel, edited in
        place (chat.update) as it goes, with a progress bar; tell the moderator how it ended
        through the command's response_url (valid for 30 minutes)."""
        started = time.monotonic()
        channel = self.cfg.reviewer_channel_id
        ts: str | None = None
        shown = ""
        while True:
            job = await jobs.get(self.service.db, job_id)
            if job is None:
                return
            text = job_line(job, hub_for(self.service.db).jobs.get(job_id))
            if channel and text != shown:
                try:
                    body = blocks.clip(blocks.escape(text), blocks.SECTION_LIMIT)
                    if ts is None:
                        ts = (await self.client.chat_postMessage(channel=channel, text=body)).get("ts")
                    else:
                        await self.client.chat_update(channel=channel, ts=ts, text=body)
                    shown = text
                except SlackApiError as exc:
                    log.warning("slack: job progress message failed (%s)", _error(exc))
            if job["status"] not in ("queued", "running"):
                if time.monotonic() - started < self.job_watch_limit_s:
                    detail = job.get("error") or job.get("progress") or ""
                    await self._respond(respond, f"Retraining job #{job_id} {job['status']}"
                                                 f"{': ' + blocks.escape(str(detail))[:1500] if detail else '.'}")
                return
            await asyncio.sleep(self.job_poll_s)

    async def _respond(self, respond: Any, text: str, **extra: Any) -> None:
        try:
            await respond(text=text, response_type="ephemeral", replace_original=False, **extra)
        except Exception as exc:  # the response_url expired or Slack is unreachable
            log.warning("slack: could not report a command result: %s", exc)

    # ------------------------------------------------------------------ patients' own commands

    async def _on_forget_command(self, ack: Any) -> None:
        await ack(text="Delete everything stored about you?", blocks=blocks.forget_me_prompt())

    async def _on_consent(self, ack: Any, body: dict, action: dict) -> None:
        """A patient's answer to the consent question, for the user who pressed (told privately)."""
        await ack()
        user = (body.get("user") or {}).get("id", "")
        channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id") or ""
        message = body.get("message") or {}
        agree = action.get("action_id") == blocks.ACTION_CONSENT_AGREE
        if not user:
            return
        try:
            text = await self.service.core.consent_from_button(PLATFORM, user, agree)
        except Exception:
            log.exception("slack: recording a consent answer failed")
            text = "That did not work because of an error on our side; it has been logged. Please try again."
        await self._ephemeral(channel, user, text, thread_ts=message.get("thread_ts"))

    async def _on_forget_confirm(self, ack: Any, body: dict, respond: Any) -> None:
        await ack()
        user = (body.get("user") or {}).get("id", "")
        if not user:
            return
        text = (await self.service.core.forget_patient(PLATFORM, user)).text()
        try:
            await respond(text=text, replace_original=True)
        except Exception as exc:
            log.warning("slack: forget-me confirmation could not be shown: %s", exc)

    async def _on_forget_cancel(self, ack: Any, respond: Any) -> None:
        await ack()
        try:
            await respond(text="Nothing was deleted.", replace_original=True)
        except Exception as exc:
            log.warning("slack: forget-me cancel could not be shown: %s", exc)

    # ------------------------------------------------------------------ plumbing

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _error(exc: SlackApiError) -> str:
    try:
        return str(exc.response.get("error") or exc)
    except Exception:
        return str(exc)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _user_name(user: dict) -> str:
    return user.get("name") or user.get("username") or ""
