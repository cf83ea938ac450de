"""The Discord platform: discord.py events in, the core's views and cards out.

Patients write in the support channels (or categories) named in settings, or in DMs when
allowed. A question posted in a support channel gets its own thread, created from the
patient's message; the patient's follow-ups in that thread continue the conversation. Where
a thread cannot be made (no permission, a channel type without threads, someone else's
thread) a patient who mentions the bot or replies to it is answered in place.

Reviewers decide on cards in the reviewer channel (buttons, rubric selects, an Edit form, or
✅ / ❌ reactions). Moderators use slash commands. Roles are read from the member's Discord
roles at every action and handed to the core, which decides what each role may do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, TypeVar

import discord
from discord import app_commands

from pathlib import Path

from bot import catchup
from bot.live import hub_for, job_line
from bot.platform import ConnectionState, PlatformHealth, PlatformStartError
from bot.discord_platform import render
from bot.discord_platform.components import DYNAMIC_ITEMS
from bot.discord_platform.throttle import CoalescingThrottle
from bot.platform import ConversationRef, IncomingMessage, PatientView, ReviewCard, ViewKind, dm_key, is_dm_key
from bot.settings import DiscordSettings
from bot.supervisor import ConnectionEnded
from bot.text import split_message
from reviewers.models import (
    MODERATOR_ROLE,
    REVIEWER_ROLE,
    RUBRIC_CRITERIA,
    Action,
    Actor,
    PermissionDenied,
    ReviewError,
    Rubric,
    scores_needed,
)

if TYPE_CHECKING:
    from bot.service import Service

log = logging.getLogger(__name__)

PLATFORM = "discord"
REFUSAL = "Only members with the reviewer role can review replies."
THREAD_NAME_CHARS = 100
_THREAD_CHANNEL_TYPES = (discord.ChannelType.text, discord.ChannelType.news)


class DiscordStartError(PlatformStartError):
    """The bot could not join Discord; the message says why in one line for the operator."""


def intents() -> discord.Intents:
    """The gateway intents the bot asks for (Message Content is privileged: enable it in the portal)."""
    value = discord.Intents.none()
    value.guilds = True
    value.guild_messages = True
    value.dm_messages = True
    value.guild_reactions = True
    value.message_content = True
    return value


class L4SClient(discord.Client):
    """discord.Client with the platform attached, the command tree, and persistent components."""

    def __init__(self, platform: "DiscordPlatform", **options: Any):
        options.setdefault("intents", intents())
        options.setdefault("chunk_guilds_at_startup", False)
        options.setdefault("allowed_mentions", discord.AllowedMentions.none())
        options.setdefault("max_messages", 1000)
        # The bot never joins voice: skip discord.py's start-up warnings about voice libraries.
        discord.VoiceClient.warn_nacl = False
        discord.VoiceClient.warn_dave = False
        super().__init__(**options)
        self.platform = platform
        self.tree = app_commands.CommandTree(self)
        self.tree.on_error = platform.on_command_error  # type: ignore[method-assign]
        _add_commands(self.tree, platform)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(*DYNAMIC_ITEMS)
        await self.platform.sync_commands()

    async def on_ready(self) -> None:
        log.info("Discord: connected as %s (%d guild(s))", self.user, len(self.guilds))
        self.platform.health.set(ConnectionState.CONNECTED)
        self.platform.ready.set()
        # A new session (not a resume): Discord replays nothing, so look for what was missed.
        self.platform._spawn(self.platform.catch_up(), "discord-catch-up")

    async def on_resumed(self) -> None:
        log.info("Discord: gateway session resumed")
        self.platform.health.set(ConnectionState.CONNECTED)

    async def on_disconnect(self) -> None:
        if not self.is_closed() and self.platform.health.state == ConnectionState.CONNECTED:
            self.platform.health.set(ConnectionState.CONNECTING, "gateway connection lost; discord.py is reconnecting")

    async def on_message(self, message: discord.Message) -> None:
        await self.platform.on_message(message)

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        await self.platform.on_message_edit(payload)

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self.platform.on_reaction(payload)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        if interaction.type is discord.InteractionType.modal_submit:
            await self.platform.on_form_submit(interaction)


K = TypeVar("K")
V = TypeVar("V")


class _Lru(OrderedDict[K, V]):
    """A dict that forgets its oldest entries beyond ``limit``."""

    def __init__(self, limit: int = 10_000):
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


@dataclass
class _Owner:
    parent_id: int | None
    owner_id: int | None


class DiscordPlatform:
    name = PLATFORM
    max_message_chars = render.MAX_MESSAGE_CHARS

    def __init__(self, service: "Service", cfg: DiscordSettings | None = None, health: PlatformHealth | None = None,
                 **client_options: Any):
        self.service = service
        self.cfg = cfg or service.settings.discord
        self.health = health or PlatformHealth()
        self.client = L4SClient(self, **client_options)
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Small in-memory caches; each is rebuilt from Discord or the database after a restart.
        self._threads: _Lru[int, _Owner] = _Lru()  # thread id -> parent channel and patient
        self._reply_to: _Lru[tuple[str, str], int] = _Lru()  # in-place conversation -> last patient message
        self._card_items: _Lru[int, int] = _Lru()  # card message id -> review item id
        # Rubric scores a reviewer chose on a card, recorded with their decision (lost on restart).
        self._rubrics: _Lru[tuple[int, str], dict[str, int]] = _Lru()
        self._background: set[asyncio.Task[Any]] = set()
        self._handled: _Lru[int, bool] = _Lru()  # message ids handed to the core by this process
        self.caught_up = asyncio.Event()  # set when a catch-up pass has finished
        self.cards = CoalescingThrottle(self.cfg.card_edit_interval_s, self._edit_card)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, token: str, timeout: float = 60.0) -> None:
        self._task = asyncio.create_task(self.client.start(token), name="discord-client")
        self._task.add_done_callback(self._client_ended)
        ready = asyncio.create_task(self.ready.wait())
        done, _ = await asyncio.wait({self._task, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if ready in done:
            return
        ready.cancel()
        if self._task in done:
            exc = self._task.exception()
            await self.close()
            reason, retryable = _explain_start_failure(exc)
            raise DiscordStartError(reason, retryable=retryable) from exc
        await self.close()
        raise DiscordStartError(f"Discord did not get ready within {timeout:.0f} s", retryable=True)

    def _client_ended(self, task: asyncio.Task[None]) -> None:
        """The client task ends only when discord.py gives up (or we close it): say so in the health
        state at once, whoever watches (the supervisor logs, alerts and records it)."""
        if not self.ready.is_set() or task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return  # closed by us
        reason, retryable = _explain_start_failure(exc, running=True)
        self.health.set(ConnectionState.CONNECTING if retryable else ConnectionState.FAILED, reason)

    async def wait_closed(self) -> ConnectionEnded:
        """Wait until the gateway connection ends for good (discord.py reconnects by itself until then)."""
        assert self._task is not None
        try:
            await asyncio.shield(self._task)
        except asyncio.CancelledError:
            if not self._task.done():
                raise
        except Exception:
            pass
        exc = None if self._task.cancelled() else self._task.exception()
        if exc is None:
            return ConnectionEnded("the Discord client stopped", retryable=True)
        reason, retryable = _explain_start_failure(exc, running=True)
        return ConnectionEnded(reason, retryable)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.cards.flush(timeout=5)
        await self.cards.close()
        for task in list(self._background):
            task.cancel()
        if not self.client.is_closed():
            await self.client.close()
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, 10)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def sync_commands(self) -> None:
        """Register the slash commands with Discord: per guild (instant) or globally."""
        tree = self.client.tree
        if not self.cfg.guild_ids:
            try:
                await tree.sync()
                log.info("Discord: slash commands synced globally (no guild ids set)")
            except discord.HTTPException as exc:
                log.error("Discord: syncing slash commands failed: %s", exc)
            return
        for guild_id in self.cfg.guild_ids:
            guild = discord.Object(id=guild_id)
            tree.copy_global_to(guild=guild)
            try:
                synced = await tree.sync(guild=guild)
                log.info("Discord: %d slash commands synced to guild %s", len(synced), guild_id)
            except discord.Forbidden:
                log.error("Discord: no permission to add slash commands in guild %s; invite the bot with the "
                          "applications.commands scope", guild_id)
            except discord.HTTPException as exc:
                log.error("Discord: syncing slash commands to guild %s failed: %s", guild_id, exc)

    # ------------------------------------------------------------------ roles

    def actor(self, user: discord.abc.User | None) -> Actor:
        """Who is acting, with roles read from their Discord roles right now."""
        if user is None:
            return Actor(PLATFORM, "unknown")
        roles: set[str] = set()
        for role in getattr(user, "roles", ()) or ():
            if _role_matches(role, self.cfg.reviewer_role):
                roles.add(REVIEWER_ROLE)
            if _role_matches(role, self.cfg.moderator_role):
                roles.add(MODERATOR_ROLE)
        return Actor(PLATFORM, str(user.id), getattr(user, "display_name", "") or user.name, frozenset(roles))

    # ------------------------------------------------------------------ patients in

    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or message.author.system or message.webhook_id is not None:
            return
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return
        # At most once: a live event and the catch-up may bring the same message (bot/catchup.py).
        if message.id in self._handled:
            return
        self._handled[message.id] = True
        try:
            if await catchup.is_stored(self.service.db, PLATFORM, str(message.id)):
                return
            await self._route(message)
        except Exception:
            log.exception("Discord: handling message %s failed", message.id)

    async def on_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        """A patient edited a message: the core triages it again (a crisis edit gets help, once)."""
        author = payload.data.get("author") or {}
        if author.get("bot") or "content" not in payload.data or not author.get("id"):
            return  # a bot, or an update without new text (an embed appearing)
        try:
            await self.service.core.handle_edit(IncomingMessage(
                PLATFORM, str(author["id"]), "", "", _strip_own_mention(payload.data.get("content") or "", self.client.user),
                platform_message_id=str(payload.message_id)))
        except Exception:
            log.exception("Discord: handling an edit of message %s failed", payload.message_id)

    async def catch_up(self) -> int:
        """Hand the core what patients wrote while the bot was away (bot/catchup.py): follow-ups in
        the threads and DMs of recent conversations, and new questions in the support channels
        after the newest one stored. Returns how many messages were looked at."""
        self.caught_up.clear()
        seen = 0
        try:
            known = await catchup.known_conversations(self.service.db, PLATFORM, int)
            places: dict[int, int] = {}  # channel or thread id -> read after this message id
            for k in known:
                # a thread, or a DM channel; conversations answered in place have no channel of their own
                where = k.channel_id if is_dm_key(k.channel_id, k.thread_id) else k.thread_id
                if where.isdigit():
                    places[int(where)] = max(places.get(int(where), 0), int(k.last_message_id))
            for channel_id in self._support_channel_ids():
                newest = catchup.newest_in_channel(known, str(channel_id), int)
                if newest is not None:
                    places[channel_id] = max(places.get(channel_id, 0), int(newest))
            for channel_id, after in places.items():
                seen += await self._catch_up_in(channel_id, after)
            if seen:
                log.info("Discord: looked at %d message(s) posted while the bot was away", seen)
        except Exception:
            log.exception("Discord: catching up on missed messages failed")
        finally:
            self.caught_up.set()
        return seen

    async def _catch_up_in(self, channel_id: int, after: int) -> int:
        try:
            channel = self.client.get_channel(channel_id) or await self.client.fetch_channel(channel_id)
            missed = [m async for m in channel.history(after=discord.Object(after), limit=catchup.MAX_MESSAGES_PER_PLACE,
                                                        oldest_first=True)]
        except discord.HTTPException as exc:
            log.warning("Discord: cannot read what was missed in channel %s (%s %s)", channel_id, exc.status, exc.text)
            return 0
        if len(missed) == catchup.MAX_MESSAGES_PER_PLACE:
            log.warning("Discord: %d or more messages were missed in channel %s; the first %d are answered",
                        len(missed), channel_id, len(missed))
        for message in missed:
            await self.on_message(message)
        return len(missed)

    def _support_channel_ids(self) -> list[int]:
        ids = set(self.cfg.support_channel_ids)
        for guild in self.client.guilds:
            ids.update(c.id for c in guild.text_channels if c.category_id in self.cfg.support_category_ids)
        return sorted(ids)

    async def _route(self, message: discord.Message) -> None:
        channel = message.channel
        if message.guild is None:
            await self._direct_message(message)
            return
        if channel.id == self.cfg.reviewer_channel_id or channel.id == self.cfg.alert_channel_id:
            return
        if isinstance(channel, discord.PartialMessageable) or getattr(channel, "type", None) is None:
            channel = await self._resolve_channel(channel.id)
            if channel is None:
                return
        if isinstance(channel, discord.Thread):
            await self._thread_message(message, channel)
            return
        if not self._in_scope(channel.id, getattr(channel, "category_id", None)):
            return
        if channel.type in _THREAD_CHANNEL_TYPES:
            thread = await self._start_thread(message)
            if thread is not None:
                await self._answer(message, thread.id, str(channel.id), str(thread.id))
                return
            await self._answer_in_place(message, channel.id)  # the question was meant for us
            return
        if self._addresses_bot(message):  # voice/stage text chats and other thread-less channels
            await self._answer_in_place(message, channel.id)

    async def _direct_message(self, message: discord.Message) -> None:
        if not self.cfg.allow_dms:
            log.info("Discord: direct message ignored (allow_dms is off)")
            with contextlib.suppress(discord.HTTPException):
                await message.channel.send("I only answer in the community's support channels. Please ask there.")
            return
        # One conversation per patient in their DM (bot.platform.dm_key); “new conversation” starts afresh.
        channel_id = str(message.channel.id)
        core = self.service.core
        if core.is_new_conversation_command(message.content):
            await core.start_new_conversation(IncomingMessage(
                PLATFORM, str(message.author.id), channel_id, dm_key(channel_id, str(message.id)), "",
                display_name=message.author.display_name, platform_message_id=str(message.id)))
            return
        await self._answer(message, message.channel.id, channel_id, await core.dm_conversation_key(PLATFORM, channel_id))

    async def _thread_message(self, message: discord.Message, thread: discord.Thread) -> None:
        owner = await self._thread_owner(thread)
        parent_category = thread.parent.category_id if thread.parent is not None else None
        if not self._in_scope(owner.parent_id, parent_category):
            return
        if owner.owner_id == message.author.id:
            await self._answer(message, thread.id, str(owner.parent_id), str(thread.id))
        elif self._addresses_bot(message):
            await self._answer_in_place(message, thread.id)

    async def _thread_owner(self, thread: discord.Thread) -> _Owner:
        known = self._threads.get(thread.id)
        if known is not None:
            return known
        owner_id = thread.owner_id
        me = self.client.user.id if self.client.user else None
        if owner_id == me:  # our thread, created from the patient's message (same id as the thread)
            owner_id = None
            try:
                starter = await self.client.get_partial_messageable(thread.parent_id).fetch_message(thread.id)
                owner_id = starter.author.id
            except discord.HTTPException:
                log.warning("Discord: cannot find who started thread %s", thread.id)
        info = _Owner(thread.parent_id, owner_id)
        self._threads[thread.id] = info
        return info

    async def _resolve_channel(self, channel_id: int) -> Any:
        try:
            return await self.client.fetch_channel(channel_id)
        except discord.HTTPException:
            log.warning("Discord: channel %s could not be fetched", channel_id)
            return None

    def _in_scope(self, channel_id: int | None, category_id: int | None) -> bool:
        return (channel_id is not None and channel_id in self.cfg.support_channel_ids) or (
            category_id is not None and category_id in self.cfg.support_category_ids
        )

    def _addresses_bot(self, message: discord.Message) -> bool:
        me = self.client.user
        if me is None:
            return False
        if me.id in message.raw_mentions:
            return True
        ref = message.reference
        resolved = ref.resolved if ref is not None else None
        return isinstance(resolved, discord.Message) and resolved.author.id == me.id

    async def _start_thread(self, message: discord.Message) -> discord.Thread | None:
        name = f"Question from {message.author.display_name}"[:THREAD_NAME_CHARS]
        try:
            thread = await message.create_thread(name=name, auto_archive_duration=self.cfg.thread_archive_minutes)
        except discord.HTTPException as exc:
            log.warning("Discord: cannot create a thread in channel %s (%s); answering in place",
                        message.channel.id, exc.status)
            return None
        self._threads[thread.id] = _Owner(message.channel.id, message.author.id)
        return thread

    async def _answer_in_place(self, message: discord.Message, channel_id: int) -> None:
        key = f"{channel_id}:u{message.author.id}"
        self._reply_to[(str(channel_id), key)] = message.id
        await self._answer(message, channel_id, str(channel_id), key)

    async def _answer(self, message: discord.Message, where: int, channel_id: str, thread_id: str) -> None:
        incoming = IncomingMessage(
            platform=PLATFORM,
            user_id=str(message.author.id),
            channel_id=channel_id,
            thread_id=thread_id,
            text=_strip_own_mention(message.content, self.client.user),
            display_name=message.author.display_name,
            attachments=len(message.attachments),
            platform_message_id=str(message.id),
        )
        async with self._typing(where):
            await self.service.core.handle_message(incoming)

    @contextlib.asynccontextmanager
    async def _typing(self, channel_id: int) -> AsyncIterator[None]:
        """'Bot is typing…' while the model works; a failure to show it never blocks the answer."""
        typing = self.client.get_partial_messageable(channel_id).typing()
        entered = False
        try:
            await typing.__aenter__()
            entered = True
        except discord.HTTPException as exc:
            log.debug("Discord: typing indicator failed: %s", exc)
        try:
            yield
        finally:
            if entered:
                await typing.__aexit__(None, None, None)

    # ------------------------------------------------------------------ patients out (Platform)

    def _target(self, conv: ConversationRef) -> tuple[discord.PartialMessageable, bool]:
        """Where a conversation's messages go, and whether it is an in-place (mention) conversation."""
        if is_dm_key(conv.channel_id, conv.thread_id):
            return self.client.get_partial_messageable(int(conv.channel_id)), False
        if conv.thread_id.isdigit():
            return self.client.get_partial_messageable(int(conv.thread_id)), False
        return self.client.get_partial_messageable(int(conv.channel_id)), True

    def where_visible(self, conv: ConversationRef) -> str:
        if is_dm_key(conv.channel_id, conv.thread_id):
            return "only you and this bot: this is a direct message."
        return ("this conversation is in a channel of this Discord server, so every member who can see the "
                "channel can read it. For privacy, send the bot a direct message instead, if the server allows it.")

    async def send_to_patient(self, conv: ConversationRef, view: PatientView) -> list[str]:
        target, in_place = self._target(conv)
        parts = render.patient_parts(view, self.max_message_chars)
        ids: list[str] = []
        for index, part in enumerate(parts):
            kwargs: dict[str, Any] = {"allowed_mentions": discord.AllowedMentions.none()}
            if view.kind is ViewKind.CONSENT and index == len(parts) - 1:
                kwargs["view"] = render.consent_components()
            if index == 0 and in_place:
                ref_id = self._reply_to.get((conv.channel_id, conv.thread_id))
                patient = discord.Object(id=int(conv.patient_user_id))
                if ref_id is not None:
                    kwargs["reference"] = discord.MessageReference(
                        message_id=ref_id, channel_id=target.id, fail_if_not_exists=False)
                    kwargs["allowed_mentions"] = discord.AllowedMentions(
                        everyone=False, roles=False, users=False, replied_user=True)
                else:
                    part = f"<@{conv.patient_user_id}> {part}"[: self.max_message_chars]
                    kwargs["allowed_mentions"] = discord.AllowedMentions(everyone=False, roles=False, users=[patient])
            sent = await target.send(part, **kwargs)
            ids.append(str(sent.id))
        return ids

    async def delete_bot_messages(self, conv: ConversationRef, known: list[str]) -> tuple[int, int]:
        """After /forget-me: delete the bot's own messages in the patient's thread or DM (every one
        found in its history; in a shared channel only the replies it knows). The patient's own
        messages are theirs: a bot may not delete them without Manage Messages. (deleted, left)."""
        target, in_place = self._target(conv)
        ids = {int(m) for m in known if str(m).isdigit()}
        me = self.client.user.id if self.client.user else None
        if not in_place and me is not None:
            try:
                async for message in target.history(limit=None):
                    if message.author.id == me:
                        ids.add(message.id)
            except discord.HTTPException as exc:
                log.warning("Discord: reading a forgotten conversation's history failed: %s", exc)
        deleted = left = 0
        for message_id in sorted(ids):
            try:
                await target.get_partial_message(message_id).delete()
                deleted += 1
            except discord.NotFound:
                pass  # already gone
            except discord.HTTPException as exc:
                log.warning("Discord: a forgotten patient's reply could not be deleted: %s", exc)
                left += 1
        return deleted, left

    async def update_patient_message(self, conv: ConversationRef, message_ids: list[str], view: PatientView) -> list[str]:
        target, _ = self._target(conv)
        parts = render.patient_parts(view, self.max_message_chars)
        ids: list[str] = []
        for index, part in enumerate(parts):
            if index < len(message_ids):
                try:
                    edited = await target.get_partial_message(int(message_ids[index])).edit(
                        content=part, allowed_mentions=discord.AllowedMentions.none())
                    ids.append(str(edited.id))
                    continue
                except discord.NotFound:
                    log.info("Discord: a reply message was deleted; posting the update anew")
            sent = await target.send(part, allowed_mentions=discord.AllowedMentions.none())
            ids.append(str(sent.id))
        for surplus in message_ids[len(parts):]:
            with contextlib.suppress(discord.NotFound):
                await target.get_partial_message(int(surplus)).delete()
        return ids

    # ------------------------------------------------------------------ other routes to a patient (crisis)

    def crisis_routes(self, conv: ConversationRef) -> list[str]:
        """Other ways to reach the patient when their conversation refuses a post (bot.incidents)."""
        if is_dm_key(conv.channel_id, conv.thread_id):
            return []  # a direct message is the last way already
        if conv.thread_id.isdigit():
            return ["channel", "dm"]  # the thread's channel, then a DM
        return ["dm"]  # answered in place: the conversation is the channel

    async def send_via(self, conv: ConversationRef, view: PatientView, route: str) -> list[str]:
        """Post ``view`` in the conversation's channel mentioning the patient (``channel``), or in a
        direct message to them (``dm``)."""
        patient = discord.Object(id=int(conv.patient_user_id))
        mention = f"<@{conv.patient_user_id}> "
        if route == "channel":
            target: Any = self.client.get_partial_messageable(int(conv.channel_id))
            allowed = discord.AllowedMentions(everyone=False, roles=False, users=[patient])
            parts = render.patient_parts(view, self.max_message_chars - len(mention))
            parts[0] = mention + parts[0]
        elif route == "dm":
            target = await self.client.create_dm(patient)
            allowed = discord.AllowedMentions.none()
            parts = render.patient_parts(view, self.max_message_chars)
        else:
            raise ValueError(f"unknown route {route!r}")
        ids = []
        for part in parts:
            sent = await target.send(part, allowed_mentions=allowed)
            ids.append(str(sent.id))
        return ids

    async def conversation_link(self, conv: ConversationRef, message_id: str | None) -> str | None:
        """A jump URL for moderators: the patient's message, or the thread."""
        if is_dm_key(conv.channel_id, conv.thread_id):
            where, guild_id = int(conv.channel_id), None
        else:
            where = int(conv.thread_id) if conv.thread_id.isdigit() else int(conv.channel_id)
            channel = self.client.get_channel(int(conv.channel_id))
            guild = getattr(channel, "guild", None)
            guild_id = guild.id if guild is not None else (self.cfg.guild_ids[0] if self.cfg.guild_ids else None)
        messageable = self.client.get_partial_messageable(where, guild_id=guild_id)
        if message_id and message_id.isdigit() and int(message_id) != where:
            return messageable.get_partial_message(int(message_id)).jump_url
        return messageable.jump_url

    # ------------------------------------------------------------------ review cards (Platform)

    async def post_review_card(self, card: ReviewCard) -> str | None:
        channel_id = self.cfg.reviewer_channel_id
        if channel_id is None:
            log.warning("Discord: no reviewer_channel_id set; review card %s not posted", card.item_id)
            return None
        channel = self.client.get_partial_messageable(channel_id)
        view = render.card_components(card.item_id, card.state == "pending")
        kwargs: dict[str, Any] = {"embed": render.card_embed(card)}
        if view is not None:
            kwargs["view"] = view
        message = await channel.send(**kwargs)
        self._card_items[message.id] = card.item_id
        return f"{channel_id}/{message.id}"

    async def update_review_card(self, card: ReviewCard) -> None:
        if not card.card_ref:
            return
        channel_id, _, message_id = card.card_ref.partition("/")
        self.cards.put(channel_id, message_id, card)

    async def _edit_card(self, card: Any) -> None:
        channel_id, _, message_id = card.card_ref.partition("/")
        message = self.client.get_partial_messageable(int(channel_id)).get_partial_message(int(message_id))
        await message.edit(embed=render.card_embed(card), view=render.card_components(card.item_id, card.state == "pending"))

    async def alert(self, text: str, urgent: bool = False, report: Any = None) -> None:
        channel_id = self.cfg.alert_channel_id or self.cfg.reviewer_channel_id
        if channel_id is None:
            log.warning("Discord: alert not posted (no alert or reviewer channel set)")
            return
        channel = self.client.get_partial_messageable(channel_id)
        allowed = discord.AllowedMentions.none()
        prefix = ""
        if urgent:
            prefix = "\N{POLICE CARS REVOLVING LIGHT} **Urgent** "
            role = self._moderator_role(channel_id)
            if role is not None:
                prefix = f"{role.mention} " + prefix
                allowed = discord.AllowedMentions(everyone=False, users=False, roles=[role])
        parts = split_message(prefix + text, self.max_message_chars)
        for part in parts[:-1] if report is not None else parts:
            await channel.send(part, allowed_mentions=allowed)
        if report is not None:  # the last part carries the tables as embed fields and the chart
            await channel.send(parts[-1] if parts else None, allowed_mentions=allowed, **_report_message(report))

    def _moderator_role(self, channel_id: int) -> discord.Role | None:
        channel = self.client.get_channel(channel_id)
        guild = getattr(channel, "guild", None)
        if guild is None:
            return None
        return next((r for r in guild.roles if _role_matches(r, self.cfg.moderator_role)), None)

    # ------------------------------------------------------------------ reviewers

    async def _item_for_card(self, channel_id: int, message_id: int) -> int | None:
        item = self._card_items.get(message_id)
        if item is not None:
            return item
        value = await self.service.db.fetchval(
            "SELECT id FROM review_items WHERE json_extract(card_ref, '$.discord') = ?", (f"{channel_id}/{message_id}",)
        )
        if value is not None:
            self._card_items[message_id] = int(value)
        return value

    async def _refuse(self, actor: Actor, item_id: int, what: str) -> None:
        log.warning("Discord: %s refused for %s on item %s (no reviewer role)", what, actor.label, item_id)
        await self.service.reviews.audit(item_id, actor.label, "refused", f"{what}: lacks the {REVIEWER_ROLE} role")

    def _rubric(self, item_id: int, actor: Actor) -> Rubric:
        scores = self._rubrics.get((item_id, actor.user_id), {})
        return Rubric(**{k: scores.get(k) for k in RUBRIC_CRITERIA})

    async def _decide(self, item_id: int, actor: Actor, action: Action, edited_text: str | None = None) -> str:
        """Hand a decision to the core; returns the sentence to show the reviewer."""
        try:
            outcome = await self.service.core.decide(item_id, actor, action, edited_text, self._rubric(item_id, actor))
        except (PermissionDenied, ReviewError) as exc:
            return str(exc)
        except Exception:
            log.exception("Discord: %s on review item %s failed", action.value, item_id)
            return "That did not work because of an error on our side; it has been logged. Please try again."
        if outcome.recorded:
            self._rubrics.pop((item_id, actor.user_id), None)
        message = outcome.message
        if outcome.closed_now:
            message += {
                "approved": " The patient now sees the reply marked as reviewed by a specialist.",
                "edited": " The patient now sees your edited reply.",
                "rejected": " The reply was withdrawn; the patient sees a holding message.",
            }.get(outcome.state.value, "")
        return message

    async def on_decision_click(self, interaction: discord.Interaction, item_id: int, action: Action) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)  # inside the 3-second window
        actor = self.actor(interaction.user)
        text = await self._decide(item_id, actor, action)
        await interaction.followup.send(text, ephemeral=True)

    async def on_consent_click(self, interaction: discord.Interaction, agree: bool) -> None:
        """A patient's answer to the consent question, for the member who pressed (told privately)."""
        try:
            text = await self.service.core.consent_from_button("discord", str(interaction.user.id), agree)
        except Exception:
            log.exception("Discord: recording a consent answer failed")
            text = "That did not work because of an error on our side; it has been logged. Please try again."
        await interaction.response.send_message(text, ephemeral=True)

    async def on_edit_click(self, interaction: discord.Interaction, item_id: int) -> None:
        actor = self.actor(interaction.user)
        if not actor.has(REVIEWER_ROLE):
            await self._refuse(actor, item_id, "edit")
            await interaction.response.send_message(REFUSAL, ephemeral=True)
            return
        item = await self.service.reviews.item(item_id)
        if item is None:
            await interaction.response.send_message(f"Review item {item_id} does not exist.", ephemeral=True)
            return
        if item["state"] != "pending":
            await interaction.response.send_message(f"This reply was already {item['state']}; nothing to edit.",
                                                    ephemeral=True)
            return
        rubric = self._rubric(item_id, actor)
        unscored = scores_needed(Action.EDIT, rubric)
        if unscored:  # before the form opens: a refusal after typing would lose the edit
            await interaction.response.send_message(unscored + " The score menus are on the card.", ephemeral=True)
            return
        text = item["final_text"] or item["reply_text"]
        form = render.edit_form(item_id, text, "".join(str(getattr(rubric, c)) for c in RUBRIC_CRITERIA))
        if form is None:
            await interaction.response.send_message(
                f"This reply is {len(text):,} characters, more than a Discord form holds "
                f"({render.MAX_EDIT_PARTS} × {render.MAX_EDIT_CHARS:,}). Edit it in the console's reviewer queue"
                f"{(' (' + self.service.settings.local.public_url + '/#reviewer)') if self.service.settings.local.public_url else ''}"
                ", or Approve / Reject it here.", ephemeral=True)
            return
        await interaction.response.send_modal(form)

    async def on_form_submit(self, interaction: discord.Interaction) -> None:
        data = interaction.data or {}
        components = data.get("components", [])
        parsed = render.parse_edit_form(str(data.get("custom_id", "")), lambda cid: _form_value(components, cid))
        if parsed is None:
            return
        item_id, text = parsed
        await interaction.response.defer(ephemeral=True, thinking=True)
        actor = self.actor(interaction.user)
        scores = render.form_scores(str(data.get("custom_id", "")))
        if len(scores) == len(RUBRIC_CRITERIA) and all(c in "12345" for c in scores):  # chosen before the form opened
            self._rubrics[(item_id, actor.user_id)] = {c: int(v) for c, v in zip(RUBRIC_CRITERIA, scores)}
        result = await self._decide(item_id, actor, Action.EDIT, text or "")
        await interaction.followup.send(result, ephemeral=True)

    async def on_rate(self, interaction: discord.Interaction, item_id: int, criterion: str, value: str | None) -> None:
        actor = self.actor(interaction.user)
        if not actor.has(REVIEWER_ROLE):
            await self._refuse(actor, item_id, f"rating {criterion}")
            await interaction.response.send_message(REFUSAL, ephemeral=True)
            return
        try:
            score = int(value or "")
            Rubric(**{criterion: score})
        except (TypeError, ValueError):
            await interaction.response.send_message("Choose a score from 1 to 5.", ephemeral=True)
            return
        self._rubrics.setdefault((item_id, actor.user_id), {})[criterion] = score
        await interaction.response.send_message(
            f"{render.CRITERION_LABEL[criterion]}: {score}. It is recorded with your decision on this reply.",
            ephemeral=True)

    async def on_reaction(self, payload: discord.RawReactionActionEvent) -> None:
        if payload.channel_id != self.cfg.reviewer_channel_id:
            return
        if self.client.user is not None and payload.user_id == self.client.user.id:
            return
        emoji = str(payload.emoji)
        action = {render.APPROVE_EMOJI: Action.APPROVE, render.REJECT_EMOJI: Action.REJECT}.get(emoji)
        if action is None:
            return
        try:
            item_id = await self._item_for_card(payload.channel_id, payload.message_id)
            if item_id is None:
                return
            actor = self.actor(payload.member)
            try:
                await self.service.core.decide(item_id, actor, action, rubric=self._rubric(item_id, actor))
                self._rubrics.pop((item_id, actor.user_id), None)
            except PermissionDenied:
                # A reaction cannot get a private answer: take it off so the card does not mislead.
                message = self.client.get_partial_messageable(payload.channel_id).get_partial_message(payload.message_id)
                with contextlib.suppress(discord.HTTPException):
                    await message.remove_reaction(payload.emoji, discord.Object(id=payload.user_id))
            except ReviewError as exc:
                # Not recorded (say, an approval without rubric scores): take the reaction off and
                # tell the reviewer privately why.
                log.info("Discord: reaction on item %s: %s", item_id, exc)
                message = self.client.get_partial_messageable(payload.channel_id).get_partial_message(payload.message_id)
                with contextlib.suppress(discord.HTTPException):
                    await message.remove_reaction(payload.emoji, discord.Object(id=payload.user_id))
                if payload.member is not None:
                    with contextlib.suppress(discord.HTTPException):
                        await payload.member.send(f"Review item {item_id}: {exc}")
        except Exception:
            log.exception("Discord: handling a reaction on message %s failed", payload.message_id)

    # ------------------------------------------------------------------ moderators

    async def run_command(self, interaction: discord.Interaction, command: str, argument: str | None = None) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        actor = self.actor(interaction.user)
        try:
            reply = await self.service.commands.run(actor, command, argument)
        except PermissionDenied as exc:
            await interaction.followup.send(str(exc), ephemeral=True)
            return
        except Exception:
            log.exception("Discord: /%s failed", command)
            await interaction.followup.send("That did not work because of an error on our side; it has been logged.",
                                            ephemeral=True)
            return
        parts = split_message(reply.text, self.max_message_chars) or ["(no output)"]
        for part in parts[:-1] if reply.report is not None else parts:
            await interaction.followup.send(part, ephemeral=True)
        if reply.report is not None:  # tables as embed fields, the chart attached
            await interaction.followup.send(parts[-1], ephemeral=True, **_report_message(reply.report))
        if command == "retrain" and reply.data.get("created") and interaction.channel_id is not None:
            self._spawn(self._follow_job(interaction.channel_id, int(reply.data["job_id"])), "discord-job-progress")

    async def _follow_job(self, channel_id: int, job_id: int) -> None:
        """Report a long job's progress by editing one message until it ends."""
        from pipeline import jobs

        channel = self.client.get_partial_messageable(channel_id)
        shown = ""
        message = None
        while True:
            job = await jobs.get(self.service.db, job_id)
            if job is None:
                return
            text = _job_line(job, hub_for(self.service.db).jobs.get(job_id))  # with the progress bar
            if text != shown:
                try:
                    if message is None:
                        message = await channel.send(text, allowed_mentions=discord.AllowedMentions.none())
                    else:
                        await message.edit(content=text)
                    shown = text
                except discord.HTTPException as exc:
                    log.warning("Discord: job progress message failed: %s", exc)
            if job["status"] not in ("queued", "running"):
                return
            await asyncio.sleep(self.cfg.progress_interval_s)

    async def forget_me(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        report = await self.service.core.forget_patient(PLATFORM, str(interaction.user.id))
        await interaction.followup.send(report.text(), ephemeral=True)

    async def on_command_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        log.error("Discord: slash command failed: %s", error, exc_info=error)
        text = "That did not work because of an error on our side; it has been logged."
        with contextlib.suppress(discord.HTTPException):
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)


# ---------------------------------------------------------------------- slash commands


def _add_commands(tree: app_commands.CommandTree, platform: DiscordPlatform) -> None:
    """The moderator commands. Default permissions hide them from ordinary members in Discord's
    UI; the moderator role is still checked by the command layer on every call."""

    def moderator_command(name: str, description: str):
        def decorate(func):
            func = app_commands.default_permissions(manage_guild=True)(func)
            func = app_commands.guild_only()(func)
            return tree.command(name=name, description=description)(func)
        return decorate

    @moderator_command("status", "Model, live adapter, review queue, last job")
    async def status(interaction: discord.Interaction) -> None:
        await platform.run_command(interaction, "status")

    @moderator_command("retrain", "Start retraining on the reviewed dataset")
    @app_commands.describe(force="Train even if no reviewed example is new since the live adapter")
    async def retrain(interaction: discord.Interaction, force: bool = False) -> None:
        await platform.run_command(interaction, "retrain", "force" if force else None)

    @moderator_command("promote", "Make a candidate adapter live, through the evaluation gate")
    @app_commands.describe(version="Adapter version to promote")
    async def promote(interaction: discord.Interaction, version: str) -> None:
        await platform.run_command(interaction, "promote", version)

    @moderator_command("rollback", "Make an earlier adapter live again")
    @app_commands.describe(version="Adapter version (default: the previous live one)")
    async def rollback(interaction: discord.Interaction, version: str | None = None) -> None:
        await platform.run_command(interaction, "rollback", version)

    @moderator_command("eval", "The latest evaluation table")
    async def evaluation(interaction: discord.Interaction) -> None:
        await platform.run_command(interaction, "eval")

    @moderator_command("dataset", "Dataset counts by task and source")
    async def dataset(interaction: discord.Interaction) -> None:
        await platform.run_command(interaction, "dataset")

    @moderator_command("pause", "Stop answering patients (their messages are saved)")
    async def pause(interaction: discord.Interaction) -> None:
        await platform.run_command(interaction, "pause")

    @moderator_command("resume", "Start answering again, saved messages first")
    async def resume(interaction: discord.Interaction) -> None:
        await platform.run_command(interaction, "resume")

    @tree.command(name="case", description="Crisis cases: list, show, take over, reply to the patient as a person, resolve")
    @app_commands.guild_only()
    @app_commands.describe(action="list, show, take, reply or resolve", case_id="The case number (#ID in the alert)",
                           text="reply: what the patient reads (signed as you); resolve: how the case ended")
    async def case(interaction: discord.Interaction, action: str = "list", case_id: str | None = None,
                   text: str | None = None) -> None:
        # Reviewers and moderators (checked by the command layer); no default permission hides it.
        await platform.run_command(interaction, "case", " ".join(x for x in (action, case_id, text) if x))

    @tree.command(name="forget-me", description="Delete everything stored about you")
    @app_commands.guild_only()
    async def forget_me(interaction: discord.Interaction) -> None:
        await platform.forget_me(interaction)


# ---------------------------------------------------------------------- helpers


def _role_matches(role: Any, wanted: str) -> bool:
    wanted = (wanted or "").strip()
    if not wanted:
        return False
    return str(getattr(role, "id", "")) == wanted or str(getattr(role, "name", "")).casefold() == wanted.casefold()


def _strip_own_mention(content: str, me: discord.ClientUser | None) -> str:
    if me is None:
        return content
    for mention in (f"<@{me.id}>", f"<@!{me.id}>"):
        content = content.replace(mention, "")
    return content.strip()


def _form_value(components: list[dict[str, Any]], custom_id: str) -> str | None:
    """The value of one input in a modal submission (inputs may sit in action rows or labels)."""
    for component in components:
        if component.get("custom_id") == custom_id:
            return component.get("value")
        nested = list(component.get("components", []))
        if "component" in component:
            nested.append(component["component"])
        found = _form_value(nested, custom_id)
        if found is not None:
            return found
    return None


def _report_message(report: Any) -> dict[str, Any]:
    """``send`` keyword arguments for a report: embeds with its tables as fields and, when the
    chart file exists, the file they show as their image."""
    image = report.image if report.image and Path(report.image).is_file() else None
    kwargs: dict[str, Any] = {"embeds": render.report_embeds(report, with_image=image is not None)}
    if image is not None:
        kwargs["file"] = discord.File(image, filename=render.CHART_FILENAME)
    return kwargs


def _job_line(job: dict[str, Any], state: dict[str, Any] | None = None) -> str:
    return job_line(job, state)[: render.MAX_MESSAGE_CHARS]


# Gateway close codes after which reconnecting cannot help (https://discord.com/developers/docs/topics/
# opcodes-and-status-codes#gateway-gateway-close-event-codes): a person must fix the token or settings.
_FINAL_CLOSE_CODES = {
    4004: "the bot token is not valid any more (close code 4004, authentication failed): reset it in the developer "
          "portal (Bot → Reset Token), set LLM4SWEAT_DISCORD__TOKEN and restart",
    4010: "Discord refused the shard (close code 4010)",
    4011: "the bot is in too many servers for one connection (close code 4011, sharding required)",
    4012: "Discord refused the gateway version (close code 4012)",
    4013: "Discord refused the gateway intents (close code 4013, invalid intents)",
    4014: "Discord refused the connection: enable the Message Content intent for the bot in the developer "
          "portal (Bot → Privileged Gateway Intents) (close code 4014)",
}


def _explain_start_failure(exc: BaseException | None, running: bool = False) -> tuple[str, bool]:
    """One line for the operator, and whether connecting again can help."""
    if isinstance(exc, discord.LoginFailure):
        return ("Discord refused the bot token (LLM4SWEAT_DISCORD__TOKEN); create a new token in the developer portal",
                False)
    if isinstance(exc, discord.PrivilegedIntentsRequired):
        return _FINAL_CLOSE_CODES[4014], False
    if isinstance(exc, discord.ConnectionClosed) and exc.code in _FINAL_CLOSE_CODES:
        prefix = "Discord ended the connection: " if running else ""
        return prefix + _FINAL_CLOSE_CODES[exc.code], False
    if exc is None:
        return "Discord connection failed", True
    return f"Discord connection failed: {exc.__class__.__name__}: {exc}", True


# ---------------------------------------------------------------------- entry point


class DiscordRunner:
    """What ``start_discord`` returns: the running platform, stopped with ``cleanup()``."""

    def __init__(self, service: "Service", platform: DiscordPlatform):
        self.service = service
        self.platform = platform

    async def cleanup(self) -> None:
        await self.platform.close()
        if self.service.core.platforms.get(PLATFORM) is self.platform:
            del self.service.core.platforms[PLATFORM]

    def _client_ended(self, task: asyncio.Task[None]) -> None:
        """The client task ends only when discord.py gives up (or we close it): say so in the health
        state at once, whoever watches (the supervisor logs, alerts and records it)."""
        if not self.ready.is_set() or task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return  # closed by us
        reason, retryable = _explain_start_failure(exc, running=True)
        self.health.set(ConnectionState.CONNECTING if retryable else ConnectionState.FAILED, reason)

    async def wait_closed(self) -> ConnectionEnded:
        return await self.platform.wait_closed()

    def __repr__(self) -> str:
        return "DiscordRunner()"


async def start_discord(service: "Service", *, token: str | None = None, ready_timeout: float = 60.0,
                        health: PlatformHealth | None = None, **client_options: Any) -> DiscordRunner:
    """Join Discord with the service's settings; returns once the bot is connected and ready."""
    cfg = service.settings.discord
    if token is None:
        if cfg.token is None:
            raise DiscordStartError("no Discord bot token: set LLM4SWEAT_DISCORD__TOKEN")
        token = cfg.token.get_secret_value()
    if cfg.reviewer_channel_id is None:
        log.warning("Discord: reviewer_channel_id is not set; replies will not be shown to reviewers on Discord")
    if not cfg.support_channel_ids and not cfg.support_category_ids and not cfg.allow_dms:
        log.warning("Discord: no support channels, categories or DMs configured; the bot will answer nobody")
    platform = DiscordPlatform(service, cfg, health, **client_options)
    service.add_platform(platform)
    try:
        await platform.start(token, ready_timeout)
    except BaseException:
        service.core.platforms.pop(PLATFORM, None)
        raise
    return DiscordRunner(service, platform)
