"""The safety layer's hooks in the conversation core, kept out of ``bot/core.py``.

The core calls these at a few well-marked points:

* top of ``handle_message``: :meth:`SafetyLayer.is_forget_command` / :meth:`forget_me`
  (a patient typing ``/forget-me`` on any platform) and :meth:`over_limit`; after the message
  is stored and triaged (crisis first), :meth:`rate_limited` (the per-patient rate limit);
* ``_answer_locked`` before the model: :meth:`triage`, then :meth:`before_model` (a message
  in an unsupported language or out of scope gets its fixed answer and the model is not
  asked), :meth:`extra_system` (the prompt-injection guard) and :meth:`model_slot` (fair
  access to the model);
* after the model: :meth:`check_reply` (a failing reply is held and marked blocked);
* ``forget_patient``: :meth:`cards_of` / :meth:`redact_cards` (review cards already posted
  on a platform are replaced by a placeholder) and :meth:`forget_state`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator

from bot.platform import IncomingMessage, PatientView, ReviewCard, ViewKind
from bot.safety.ratelimit import FairGate, RateLimiter
from bot.safety.reply_checks import ReplyCheck, check_reply
from bot.safety.detector import crisis_model, loggable, triage
from bot.safety.language import language_notice
from bot.safety.policy import combine, with_reply_layers
from bot.safety.remote import SafetyClassifier, build_layers, run_layers
from bot.safety.rules import INJECTION_GUARD
from bot.safety.scope import BOUNDARY
from bot.safety.verdict import Triage

if TYPE_CHECKING:
    from bot.core import ConversationCore, HandleResult

log = logging.getLogger(__name__)

LONG_MESSAGE_CHARS = 1500
FORGET_COMMAND = re.compile(r"^\s*[/!]\s*forget[\s_-]?me\s*[.!]*\s*$", re.IGNORECASE)

NOTICE_RATE_LIMITED = (
    "You're sending messages faster than I can answer them well. Your message is saved, but I won't answer "
    "it; please wait about {seconds} seconds and send your question again. If you are in danger, please "
    "call your local emergency number now."
)
NOTICE_FORGOTTEN = (
    "Done: everything stored about you has been deleted — your messages, my replies, their reviews and any "
    "training example made from them."
)


@dataclass
class ForgetReport:
    """What a /forget-me did, so the patient's confirmation says exactly that (:meth:`text`)."""

    removed: int = 0  # patient records deleted (0: there was nothing)
    snapshot_files: int = 0  # kept training snapshots / exports rewritten without their lines
    adapters: list[str] = field(default_factory=list)  # model versions trained on their data, now marked
    cards: int = 0  # posted review cards replaced by a deletion note
    bot_messages: int = 0  # the bot's own messages deleted in their threads / DMs
    bot_messages_left: int = 0  # ... that could not be deleted (permissions, too old)

    def __bool__(self) -> bool:
        return bool(self.removed)

    def text(self) -> str:
        if not self.removed:
            return NOTICE_NOTHING_TO_FORGET
        parts = [NOTICE_FORGOTTEN]
        if self.snapshot_files:
            parts.append(f"Your words were also removed from {self.snapshot_files} saved training data "
                         f"file{'s' if self.snapshot_files != 1 else ''}.")
        if self.adapters:
            versions = ", ".join(self.adapters)
            parts.append(f"{len(self.adapters)} trained model version{'s' if len(self.adapters) != 1 else ''} "
                         f"({versions}) had learned from your conversation: "
                         f"{'they are' if len(self.adapters) != 1 else 'it is'} marked for replacement, and the "
                         "next retraining leaves your data out.")
        else:
            parts.append("No trained model had learned from your conversation, and none will.")
        if self.cards:
            parts.append(f"{self.cards} review card{'s' if self.cards != 1 else ''} shown to specialists now "
                         f"show{'s' if self.cards == 1 else ''} only a deletion note.")
        if self.bot_messages or self.bot_messages_left:
            parts.append(f"I deleted {self.bot_messages} of my messages to you"
                         + (f"; {self.bot_messages_left} could not be deleted (the platform did not allow it)"
                            if self.bot_messages_left else "") + ".")
        parts.append("If you write again, we start fresh.")
        return " ".join(parts)
NOTICE_NOTHING_TO_FORGET = "There was nothing stored about you, so there was nothing to delete."
REDACTED = "[deleted at the patient's request]"


def patient_key(platform: str, user_id: str) -> str:
    return f"{platform}:{user_id}"


class SafetyLayer:
    def __init__(self, core: "ConversationCore"):
        self.core = core
        cfg = core.settings.safety
        self.cfg = cfg
        self.limiter = RateLimiter(cfg.rate_limit_messages, cfg.rate_limit_window_s)
        self.gate = FairGate(per_key=cfg.per_patient_concurrency)
        # The learned model now, not on a patient's message (cached in the data dir by corpus hash).
        crisis_model(core.pack, cache_dir=core.settings.data_dir / "cache")
        # Remote second opinions (Llama Guard, OpenAI moderation) when configured; none by default.
        self.remote: list[SafetyClassifier] = build_layers(cfg)
        self.reply_layers: list[SafetyClassifier] = [
            layer for layer in self.remote
            if (layer.name == "llama_guard" and cfg.llama_guard.check_replies)
            or (layer.name == "openai_moderation" and cfg.moderation.check_replies)
        ]
        if self.remote:
            log.info("remote safety layers: %s", ", ".join(layer.name for layer in self.remote))

    # ------------------------------------------------------------------ triage

    def triage(self, text: str) -> Triage:
        return triage(
            text,
            self.core.pack,
            reply_languages=self.cfg.reply_languages,
            threshold=self.cfg.crisis_threshold,
            possible_threshold=self.cfg.possible_crisis_threshold,
        )

    async def triage_async(self, text: str) -> Triage:
        """The offline :meth:`triage` combined with the remote layers (asked at once, within
        ``remote_deadline_s``) by the recall-first policy of :mod:`bot.safety.policy`. Without
        remote layers this is the offline verdict (off the event loop for long messages)."""
        if not self.remote:
            return await self._offline(text)
        offline, verdicts = await asyncio.gather(
            self._offline(text), run_layers(self.remote, text, "user", deadline_s=self.cfg.remote_deadline_s)
        )
        return combine(offline, verdicts)

    async def _offline(self, text: str) -> Triage:
        if len(text) > LONG_MESSAGE_CHARS:
            return await asyncio.to_thread(self.triage, text)
        return self.triage(text)

    def supported_languages(self) -> list[str]:
        pack_language = getattr(self.core.pack, "language", None) or "en"
        return list(dict.fromkeys([pack_language, *self.cfg.reply_languages]))

    # ------------------------------------------------------------------ /forget-me

    @staticmethod
    def is_forget_command(text: str) -> bool:
        return bool(FORGET_COMMAND.match(text or ""))

    async def forget_me(self, msg: IncomingMessage) -> "HandleResult":
        """Delete everything about the patient, then confirm (nothing of the command is stored)."""
        from bot.core import HandleResult

        report = await self.core.forget_patient(msg.platform, msg.user_id)
        view = PatientView(ViewKind.NOTICE, report.text())
        await self._send_raw(msg, view)
        log.info("forget-me on %s: %d patient record(s) deleted", msg.platform, report.removed)
        return HandleResult(None, None, views=[view], status="forgotten" if report else "nothing_to_forget")

    async def _send_raw(self, msg: IncomingMessage, view: PatientView) -> None:
        from bot.platform import ConversationRef

        platform = self.core.platforms.get(msg.platform)
        if platform is None:
            return
        ref = ConversationRef(0, msg.platform, msg.channel_id, msg.thread_id, msg.user_id)
        try:
            await platform.send_to_patient(ref, view)
        except Exception:
            log.exception("delivery of a safety notice on %s failed", msg.platform)

    async def prepare_forget(self, platform: str, user_id: str) -> list[tuple[int, str]]:
        """Before deleting: overwrite deleted content on disk, and note the posted review cards."""
        await self.core.db.each_connection(lambda conn: conn.execute("PRAGMA secure_delete = ON").fetchall())
        return await self.cards_of(platform, user_id)

    async def after_forget(self, platform: str, user_id: str, cards: list[tuple[int, str]]) -> int:
        """After deleting: redact posted cards, move the WAL into the (zeroed) database file, drop
        limits; returns how many posted cards were redacted."""
        redacted = await self.redact_cards(cards)
        self.forget_state(platform, user_id)
        try:
            busy = await self.core.db.run(
                lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone(), write=False
            )
        except Exception:
            busy = (1,)
        if busy and busy[0]:  # a busy reader only delays it: SQLite checkpoints again later
            log.warning("WAL checkpoint after forget-me did not complete; it will on the next checkpoint")
        return redacted

    async def cards_of(self, platform: str, user_id: str) -> list[tuple[int, str]]:
        """(item id, card refs) of the patient's review items that were posted on a platform."""
        rows = await self.core.db.fetchall(
            "SELECT i.id, i.card_ref FROM review_items i JOIN replies r ON r.id = i.reply_id"
            " JOIN conversations c ON c.id = r.conversation_id JOIN patients p ON p.id = c.patient_id"
            " WHERE p.platform = ? AND p.platform_user_id = ? AND i.card_ref IS NOT NULL",
            (platform, user_id),
        )
        return [(row[0], row[1]) for row in rows]

    async def redact_cards(self, cards: list[tuple[int, str]]) -> int:
        """Replace posted review cards of a forgotten patient with a placeholder; returns how many."""
        import json

        redacted = 0
        for item_id, card_ref in cards:
            try:
                refs = json.loads(card_ref) if card_ref else {}
            except ValueError:
                continue
            for platform in self.core.platforms.values():
                ref = refs.get(platform.name) if isinstance(refs, dict) else None
                if ref is None:
                    continue
                card = ReviewCard(
                    item_id=item_id, reply_id=0, patient_text=REDACTED, reply_text=REDACTED, task="",
                    risk_flags=[], adapter_version=None, state="rejected", card_ref=ref,
                )
                try:
                    await platform.update_review_card(card)
                    redacted += 1
                except Exception:
                    log.exception("redacting review card %s on %s failed", item_id, platform.name)
        return redacted

    def forget_state(self, platform: str, user_id: str) -> None:
        self.limiter.forget(patient_key(platform, user_id))

    # ------------------------------------------------------------------ rate limit

    def over_limit(self, msg: IncomingMessage) -> bool:
        return not self.limiter.hit(patient_key(msg.platform, msg.user_id))

    async def rate_limited(self, msg: IncomingMessage, conv: Any, message_id: int) -> "HandleResult":
        """A stored message over the limit: not answered; say so politely once. (The core has already
        triaged it: a crisis is never rate limited.)"""
        from bot.core import HandleResult

        await self.core._set_message_status(message_id, "rate_limited")
        result = HandleResult(message_id, conv.id, status="rate_limited")
        key = patient_key(msg.platform, msg.user_id)
        if self.limiter.notify_due(key):
            seconds = max(5, int(self.limiter.retry_after(key)) + 1)
            view = PatientView(ViewKind.NOTICE, NOTICE_RATE_LIMITED.format(seconds=seconds))
            result.views.append(await self.core._send(conv, view))
        log.info("rate limit: message %s from %s not answered", message_id, msg.platform)
        return result

    # ------------------------------------------------------------------ before the model

    async def before_model(self, row: Any, conv: Any, verdict: Triage, result: "HandleResult") -> "HandleResult | None":
        """A fixed answer for an unsupported language or an out-of-scope question (model not asked)."""
        if not verdict.language_supported:
            text, status = language_notice(verdict.language, self.supported_languages()), "language_unsupported"
        elif verdict.out_of_scope and not verdict.red_flags:
            text, status = BOUNDARY[verdict.out_of_scope], "out_of_scope"
        else:
            return None
        await self.core._set_message_status(row["id"], status)
        view = PatientView(ViewKind.NOTICE, text)
        result.views.append(await self.core._send(conv, view))
        result.status = status
        log.info("message %s: %s", row["id"], status)
        return result

    def extra_system(self, verdict: Triage) -> str:
        extra = self.core.settings.prompt.system_prompt_extra
        if verdict.injection:
            extra = (extra + "\n\n" + INJECTION_GUARD).strip()
        return extra

    @asynccontextmanager
    async def model_slot(self, conv: Any) -> AsyncIterator[None]:
        async with self.gate.slot(patient_key(conv.platform, conv.patient_user_id)):
            yield

    # ------------------------------------------------------------------ after the model

    async def check_reply_async(self, reply_text: str, verdict: Triage, patient_text: str = "") -> ReplyCheck:
        """:meth:`check_reply`, plus the remote layers configured for replies: a reply they flag,
        or cannot judge in time, is held for a specialist (``blocked:<layer>``)."""
        if not self.reply_layers:
            return self.check_reply(reply_text, verdict)
        verdicts = await run_layers(
            self.reply_layers, reply_text, "assistant", context=patient_text, deadline_s=self.cfg.remote_deadline_s
        )
        return self.check_reply(reply_text, verdict, remote=verdicts)

    def check_reply(self, reply_text: str, verdict: Triage, remote: Any = ()) -> ReplyCheck:
        checked = with_reply_layers(check_reply(reply_text, self.core.pack, red_flags=verdict.red_flags), remote)
        if not checked.ok:
            detail = ""
            if self.core.settings.log_message_text:  # off by default: logs carry no patient or reply text
                detail = " — " + "; ".join(loggable(f.detail, self.core.settings) for f in checked.failures)
            log.warning("reply blocked by checks: %s%s", ", ".join(checked.checks_failed), detail)
        return checked
