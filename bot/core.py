"""The platform-neutral conversation core: every rule about answering patients lives here.

Patient message in → committed to the database first (a crash after this loses nothing) →
triage → prompt within a token budget → model → reply stored with its model and adapter →
review item → delivered according to the review mode. Expert decisions come back through
``decide``, which updates what the patient sees and feeds the dataset.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

from bot import consent, effects, metrics
from bot.effects import EffectApplier
from bot.incidents import CRISIS_HOLD, TAKEN_OVER, CrisisCases, conversation_case, hold_reason_text
from bot.inference.base import InferenceBackend, ModelUnavailable
from bot.outbox import Claimed, Outbox
from bot.platform import ConversationRef, IncomingMessage, PatientView, Platform, ReviewCard, Turn, ViewKind, is_dm_key
from bot.prompt import build_prompt
from bot.safety import SafetyLayer, Triage, crisis_text
from bot.safety.layer import ForgetReport
from bot.settings import Settings
from bot.storage import Database, dumps, now
from bot.tasks import classify_task
from bot.triage_worker import TriageWorker
from pipeline import dataset
from pipeline.privacy import scrub
from reviewers import judge
from reviewers.models import Action, Actor, DecisionOutcome, ReviewState, Rubric
from reviewers.service import ReviewService, decision_rows, insert_review_item, item_row

log = logging.getLogger(__name__)

CARD_THREAD_TURNS = 6  # earlier turns shown on a review card (platforms shorten older ones first)
MAX_STORED_CHARS = 100_000  # beyond this a message is cut before storing (and the patient told)

NOTICE_EMPTY = "Your message was empty. Please type your question in words and send it again."
NOTICE_ATTACHMENT_ONLY = (
    "I can only read text, not attachments or images. Could you describe your question in words? "
    "Your attachment was not shared with anyone."
)
NOTICE_TOO_LONG = (
    "Your message is very long, so I read the first part of it ({chars} characters). "
    "Everything you wrote is saved; feel free to send the rest as a follow-up."
)
NOTICE_UNAVAILABLE = (
    "I'm sorry — the assistant is temporarily unavailable. Your message is saved and will be "
    "answered as soon as it is back."
)
NOTICE_SLOW = (
    "This is taking longer than usual. Your message is saved; my answer will appear here as soon as it is ready."
)
NOTICE_PAUSED = (
    "The assistant is paused by the moderators for a short while. Your message is saved and will "
    "be answered when it resumes."
)
NOTICE_NEW_CONVERSATION = (
    "A new conversation starts here: I won't use what we talked about before. Your earlier messages "
    "stay stored until you ask to have them deleted with /forget-me."
)
# A direct message holds one conversation per patient; this message starts a new one.
NEW_CONVERSATION_COMMAND = re.compile(r"^\s*[\"“']?new\s+conversation[\"”']?\s*[.!]*\s*$", re.IGNORECASE)
GATED_TEXT = "Thank you for your question. A specialist is reviewing my answer before you see it; it will appear here."
WITHDRAWN_TEXT = (
    "A specialist reviewed my earlier answer and withdrew it because it was not good enough. "
    "They or a colleague may follow up; for anything urgent or personal, please talk to your doctor."
)
LABEL_PENDING = "AI-written · pending review by a specialist"
LABEL_APPROVED = "AI-written · reviewed by a specialist"
LABEL_EDITED = "Reviewed and edited by a specialist"
# A demo is reviewed by demo accounts, not specialists (the pack's demo disclaimer says so):
# its reviewed replies must not claim a specialist.
LABEL_APPROVED_DEMO = "AI-written · approved by a demo reviewer, not a specialist"
LABEL_EDITED_DEMO = "Edited by a demo reviewer, not a specialist"
LABEL_DEMO = "DEMO MODEL — not medical advice"
LABEL_NOT_REVIEWED = "AI-written · NOT reviewed: no specialist could check this answer in time"
EXPIRED_HELD_TEXT = (
    "I'm sorry: no specialist could check my answer to your question in time, so I am not showing you an answer "
    "that nobody has checked. Please ask your question again here, or ask your doctor or another clinician. "
    "If you feel unwell or it is urgent, contact a doctor now."
)
LABEL_GENERAL = "small general model, not fine-tuned yet"

# Statuses of a stored message that still wants an answer; 'answering' is a claim (see ``answer``).
CLAIMABLE_STATUSES = ("received", "queued_retry", "paused")
CLAIM_MARGIN_S = 30.0  # a claim older than the model deadline plus this is abandoned (crashed process)

_ANSWER_ROW_SQL = (
    "SELECT m.*, c.platform, c.channel_id, c.thread_id, c.status AS conv_status, p.platform_user_id, p.region"
    " FROM messages m JOIN conversations c ON c.id = m.conversation_id"
    " JOIN patients p ON p.id = c.patient_id WHERE m.id = ?"
)


def history_rows(conn: sqlite3.Connection, conversation_id: int, before_message_id: int) -> list[Any]:
    """The conversation before a message as the patient saw it: their messages, the replies shown
    to them (``shown_text``: as edited; never a held, rejected or expired-unseen reply) and the
    crisis resources they were given (inside the caller's visit to the database)."""
    return conn.execute(
        "SELECT m.text, m.status, m.response_text, r.shown_text FROM messages m"
        " LEFT JOIN replies r ON r.message_id = m.id"
        " WHERE m.conversation_id = ? AND m.id < ? AND m.status IN ('answered', 'crisis') ORDER BY m.id",
        (conversation_id, before_message_id),
    ).fetchall()


@dataclass
class HandleResult:
    message_id: int | None
    conversation_id: int | None
    reply_id: int | None = None
    item_id: int | None = None
    views: list[PatientView] = field(default_factory=list)
    status: str = ""


class ConversationCore:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        backend: InferenceBackend,
        pack: Any,
        reviews: ReviewService,
        platforms: dict[str, Platform] | None = None,
        demo: bool = False,
        general_model: str | None = None,
    ):
        self.settings = settings
        self.db = db
        self.backend = backend
        self.pack = pack
        self.reviews = reviews
        self.platforms: dict[str, Platform] = dict(platforms or {})
        self.demo = demo
        # A small general model served by `llm4sweat demo` (not trained for the condition): its
        # replies say so until an adapter trained on reviewed answers is live.
        self.general_model = general_model
        self._conversation_locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._working: set[int] = set()  # message ids this process is answering (claim held, maybe slow)
        self._background: set[asyncio.Future[HandleResult]] = set()  # answers that outlived the live deadline
        self._last_outage_alert = float("-inf")  # monotonic time starts near 0 after a boot
        self._paused: bool | None = None  # cached; the database holds it across restarts
        self.safety = SafetyLayer(self)  # triage options, rate limit, fair model slots, reply checks
        self.cases = CrisisCases(self)  # crisis cases: confirmed delivery, honest alerts (bot/incidents.py)
        cfg = settings.outbox
        # What follows a decision is recorded with it and applied here at once, or by the worker later.
        self.outbox = Outbox(db, EffectApplier(self), retry_base_s=cfg.retry_base_s, retry_max_s=cfg.retry_max_s,
                             max_attempts=cfg.max_attempts, redact=settings.redact)
        # Told the id of each new review item once it is stored (the judge's worker wakes up).
        self.item_listeners: list[Callable[[int], None]] = []
        # The offline triage in a process of its own (bot/triage_worker.py), set by the Service
        # when settings.safety.triage_process is on; None: triage runs in this process.
        self.triage_worker: TriageWorker | None = None

    # ------------------------------------------------------------------ patients in

    async def handle_message(self, msg: IncomingMessage) -> HandleResult:
        """Store a patient's message, then answer it (or say clearly why not).

        Order: the message is committed first; then crisis triage, before every other branch
        (rate limit, pause, language, scope): a crisis always gets the resources and an alert
        (after the one-time consent notice on first contact, so the resources are shown last)."""
        text = msg.text.strip() if msg.text else ""
        # --- safety layer (bot/safety/layer.py): /forget-me on any platform
        if self.safety.is_forget_command(text):
            return await self.safety.forget_me(msg)
        # --- end safety layer
        choice = consent.choice_of(text)
        if choice is not None:  # "I agree" / "I do not agree": recorded, nothing of it stored as a message
            return await self.answer_consent(msg, choice)
        if not text and not msg.attachments:
            log.info("empty message from %s:%s ignored", msg.platform, msg.user_id)
            return await self._notice_only(msg, NOTICE_EMPTY, "empty")
        limited = bool(text) and self.safety.over_limit(msg)
        triaging = self._submit_triage(text) if text else None  # the triage process works while we store
        conv, message_id, first_contact = await self._store_incoming(msg, text[:MAX_STORED_CHARS])
        result = HandleResult(message_id, conv.id)
        verdict = await self._triage(text, triaging) if text else None
        crisis = verdict is not None and verdict.crisis
        if limited and not crisis:  # a crisis is never rate limited
            return await self.safety.rate_limited(msg, conv, message_id)
        if first_contact:  # (before the crisis resources, so that they are the last thing on screen)
            result.views.append(await self._send(conv, self.consent_view(conv)))
        if crisis:  # crisis first: paused, rate limited or in any language, resources and an alert
            self._merge(result, await self.answer(message_id, verdict=verdict, conversation_id=conv.id))
            return result
        if verdict is not None:  # a possible crisis, a red flag: help at once, even while paused
            result.views.extend(await self.cases.before_held_answer(message_id, msg.region, conv, verdict))
        if not text:
            await self._set_message_status(message_id, "unsupported")
            result.views.append(await self._send(conv, PatientView(ViewKind.NOTICE, NOTICE_ATTACHMENT_ONLY)))
            result.status = "unsupported"
            return result
        if len(text) > self.settings.prompt.max_message_chars:
            notice = NOTICE_TOO_LONG.format(chars=self.settings.prompt.max_message_chars)
            result.views.append(await self._send(conv, PatientView(ViewKind.NOTICE, notice)))
        if await self.is_paused():
            await self._set_message_status(message_id, "paused")
            result.views.append(await self._send(conv, PatientView(ViewKind.NOTICE, NOTICE_PAUSED)))
            result.status = "paused"
            return result
        self._merge(result, await self.answer(message_id, verdict=verdict, conversation_id=conv.id,
                                              deadline_s=self.settings.inference.deadline_s))
        return result

    async def handle_edit(self, msg: IncomingMessage) -> HandleResult:
        """A patient edited a stored message (``msg.platform_message_id``; ``msg.channel_id`` too
        where ids are only unique per channel, else empty): the new text is triaged again, and a
        crisis gets the crisis resources and an alert — once per message, however many edits or
        redeliveries arrive. Nothing else is answered again."""
        text = (msg.text or "").strip()
        if not text or not msg.platform_message_id:
            return HandleResult(None, None, status="ignored")
        sql = _ANSWER_ROW_SQL.replace("WHERE m.id = ?", "WHERE c.platform = ? AND m.platform_message_id = ?"
                                      + (" AND c.channel_id = ?" if msg.channel_id else "") + " ORDER BY m.id DESC")
        row = await self.db.fetchone(sql, (msg.platform, msg.platform_message_id,
                                           *([msg.channel_id] if msg.channel_id else [])))
        if row is None:
            return HandleResult(None, None, status="unknown_message")
        result = HandleResult(row["id"], row["conversation_id"])
        verdict = await self._triage(text)
        if not verdict.crisis:
            log.info("message %s was edited; triaged again: no crisis", row["id"])
            result.status = "edit_triaged"
            return result
        conv = ConversationRef(row["conversation_id"], row["platform"], row["channel_id"], row["thread_id"],
                               row["platform_user_id"])
        log.warning("message %s was edited into a crisis message", row["id"])
        return await self._crisis(row, conv, verdict, result)

    def _submit_triage(self, text: str) -> "asyncio.Future[Any] | None":
        """Hand ``text`` to the triage process now (None: it is not running, or remote layers are
        configured and :meth:`SafetyLayer.triage_async` combines them here)."""
        if self.triage_worker is None or self.safety.remote:
            return None
        return self.triage_worker.submit(text)

    async def _triage(self, text: str, submitted: "asyncio.Future[Any] | None" = None) -> Triage:
        """The safety verdict on a patient's text: from the triage process when it runs (``submitted``:
        the text was already handed to it), else — and whenever it fails or is late — computed here."""
        worker = self.triage_worker
        if worker is not None and not self.safety.remote:
            verdict = await worker.result(submitted if submitted is not None else worker.submit(text))
            if verdict is not None:
                return verdict
        return await self.safety.triage_async(text)

    @staticmethod
    def _merge(result: HandleResult, answered: HandleResult) -> None:
        result.reply_id, result.item_id, result.status = answered.reply_id, answered.item_id, answered.status
        result.views.extend(answered.views)

    async def _notice_only(self, msg: IncomingMessage, text: str, status: str) -> HandleResult:
        conv = await self._find_conversation(msg)
        view = PatientView(ViewKind.NOTICE, text)
        if conv is not None:
            await self._send(conv, view)
        else:
            platform = self.platforms.get(msg.platform)
            if platform is not None:
                ref = ConversationRef(0, msg.platform, msg.channel_id, msg.thread_id, msg.user_id)
                await platform.send_to_patient(ref, view)
        return HandleResult(None, conv.id if conv else None, views=[view], status=status)

    # ------------------------------------------------------------------ consent (bot/consent.py)

    def card_platforms(self) -> list[str]:
        """Connected platforms whose reviewer channel gets review cards (``review.platforms``)."""
        allowed = self.settings.review.platforms
        return [name for name in self.platforms if allowed is None or name in allowed]

    def consent_view(self, conv: ConversationRef) -> PatientView:
        """The first-contact notice, true for this conversation: who sees it, who reviews it and
        where, how long it is kept, and the question (platforms add the two buttons)."""
        platform = self.platforms.get(conv.platform)
        where = getattr(platform, "where_visible", None)
        visible = where(conv) if where is not None else "you and the people who run this service."
        text = consent.notice(
            self.pack.title, visible,
            consent.review_text(self.card_platforms(), console="local" in self.platforms),
            consent.retention_text(self.settings.privacy.retention_days, conv.platform),
            dm_hint=is_dm_key(conv.channel_id, conv.thread_id) and conv.platform != "local",
            outside=consent.outside_text(self._services_reading_messages()),
        )
        return PatientView(ViewKind.CONSENT, text)

    def _services_reading_messages(self) -> list[tuple[str, str]]:
        """(URL, purpose) of every service configured to receive patients' messages."""
        cfg = self.settings
        services = []
        if cfg.inference.backend == "openai":
            services += [(url, "the AI model that writes my answers")
                         for url in [cfg.inference.openai_base_url, *cfg.inference.openai_replica_urls]]
        if cfg.judge.enabled:
            services.append((cfg.judge.base_url, "an AI that pre-scores answers for the specialists"))
        for layer in self.safety.remote:
            client = getattr(layer, "client", None)
            if client is not None:
                services.append((str(client.base_url), "an automatic safety check"))
        return services

    async def record_consent(self, platform: str, user_id: str, agree: bool, *, display_name: str = "",
                             create: bool = True) -> bool:
        """Record a patient's answer; False when ``create`` is off and there is no such patient
        (a button pressed by someone who never wrote here)."""
        recorded = await self.db.run(lambda conn: consent.record(conn, platform, user_id, agree,
                                                                  display_name=display_name, create=create))
        if recorded:
            log.info("consent to training use %s on %s", "given" if agree else "declined", platform)
        return recorded

    async def answer_consent(self, msg: IncomingMessage, agree: bool) -> HandleResult:
        """"I agree" / "I do not agree" typed by the patient: recorded and confirmed where it was
        said; the notice comes first if they had never been shown it."""
        conv = await self._find_conversation(msg)
        ref = conv or ConversationRef(0, msg.platform, msg.channel_id, msg.thread_id, msg.user_id)
        asked = await self.db.fetchval(
            "SELECT consent_asked_at FROM patients WHERE platform = ? AND platform_user_id = ?", (msg.platform, msg.user_id))
        views = [] if asked is not None else [self.consent_view(ref)]
        await self.record_consent(msg.platform, msg.user_id, agree, display_name=msg.display_name)
        views.append(PatientView(ViewKind.NOTICE, consent.CONFIRM_AGREE if agree else consent.CONFIRM_DECLINE))
        for view in views:
            await self._send(ref, view)
        return HandleResult(None, conv.id if conv else None, views=views, status="consent" if agree else "declined")

    async def consent_from_button(self, platform: str, user_id: str, agree: bool) -> str:
        """A patient pressed "I agree" or "No" on the notice: recorded for the person who pressed
        (identity from the platform, never from the button); the sentence to show them privately."""
        if not await self.record_consent(platform, user_id, agree, create=False):
            return consent.NOT_THE_PATIENT
        return consent.CONFIRM_AGREE if agree else consent.CONFIRM_DECLINE

    # ------------------------------------------------------------------ direct messages

    @staticmethod
    def is_new_conversation_command(text: str) -> bool:
        return bool(NEW_CONVERSATION_COMMAND.match(text or ""))

    async def dm_conversation_key(self, platform: str, channel_id: str) -> str:
        """The key (``thread_id``) of the patient's current conversation in a direct-message
        channel: the newest one opened there (bot.platform.dm_key), or the channel itself."""
        rows = await self.db.fetchall(
            "SELECT thread_id FROM conversations WHERE platform = ? AND channel_id = ? ORDER BY created_at DESC, id DESC",
            (platform, channel_id),
        )
        return next((row[0] for row in rows if is_dm_key(channel_id, row[0])), channel_id)

    async def start_new_conversation(self, msg: IncomingMessage) -> HandleResult:
        """Open an empty conversation under ``msg``'s key (a new direct-message key the platform
        made from the command's message id) and tell the patient; the command itself is not stored.
        Idempotent: the same command seen again (a retry, a catch-up) changes nothing."""
        t = now()
        conversation_id, first_contact, new = await self.db.run(lambda conn: self._open_conversation(conn, msg, t))
        conv = ConversationRef(conversation_id, msg.platform, msg.channel_id, msg.thread_id, msg.user_id)
        result = HandleResult(None, conversation_id, status="new_conversation" if new else "already_started")
        if not new:
            return result
        log.info("conversation %s started afresh in a direct message on %s", conversation_id, msg.platform)
        if first_contact:
            result.views.append(await self._send(conv, self.consent_view(conv)))
        result.views.append(await self._send(conv, PatientView(ViewKind.NOTICE, NOTICE_NEW_CONVERSATION)))
        return result

    async def _find_conversation(self, msg: IncomingMessage) -> ConversationRef | None:
        row = await self.db.fetchone(
            "SELECT c.id FROM conversations c WHERE c.platform = ? AND c.channel_id = ? AND c.thread_id = ?",
            (msg.platform, msg.channel_id, msg.thread_id),
        )
        return ConversationRef(row[0], msg.platform, msg.channel_id, msg.thread_id, msg.user_id) if row else None

    @staticmethod
    def _open_conversation(conn: sqlite3.Connection, msg: IncomingMessage, t: float) -> tuple[int, bool, bool]:
        """Patient and conversation rows for ``msg`` (made if new): (conversation id, first contact,
        conversation new). First contact: the patient has not been asked about training use yet
        (new, or from before consent was asked); the caller shows the consent notice. Consent
        itself is recorded only by the patient's answer (bot/consent.py), never here."""
        (patient_id,) = conn.execute(
            "INSERT INTO patients (platform, platform_user_id, display_name, region, created_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (platform, platform_user_id)"
            " DO UPDATE SET region = COALESCE(excluded.region, region) RETURNING id",
            (msg.platform, msg.user_id, msg.display_name, msg.region, t),
        ).fetchone()
        first_contact = consent.ask(conn, patient_id, t)
        conversation_id, conversation_created = conn.execute(
            "INSERT INTO conversations (patient_id, platform, channel_id, thread_id, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (platform, channel_id, thread_id)"
            " DO UPDATE SET updated_at = excluded.updated_at RETURNING id, created_at",
            (patient_id, msg.platform, msg.channel_id, msg.thread_id, t, t),
        ).fetchone()
        return int(conversation_id), first_contact, conversation_created == t

    async def _store_incoming(self, msg: IncomingMessage, text: str) -> tuple[ConversationRef, int, bool]:
        """Patient, conversation and message in one committed transaction."""
        t = now()

        def store(conn: sqlite3.Connection) -> tuple[int, int, bool]:
            conversation_id, first_contact, _ = self._open_conversation(conn, msg, t)
            message_id = conn.execute(
                "INSERT INTO messages (conversation_id, text, attachments, platform_message_id, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (conversation_id, text, msg.attachments, msg.platform_message_id, t),
            ).lastrowid
            return conversation_id, message_id, first_contact

        conversation_id, message_id, first_contact = await self.db.run(store, here=True)
        conv = ConversationRef(int(conversation_id), msg.platform, msg.channel_id, msg.thread_id, msg.user_id)
        log.info("message %s stored (conversation %s, %d chars)", message_id, conversation_id, len(text))
        metrics.MESSAGES.labels(platform=msg.platform).inc()
        return conv, int(message_id), first_contact

    # ------------------------------------------------------------------ answering

    @property
    def claim_stale_s(self) -> float:
        """Age after which an 'answering' claim is taken as abandoned by a crashed process."""
        return self.settings.inference.deadline_s + CLAIM_MARGIN_S

    async def answer(self, message_id: int, verdict: Triage | None = None, *, deadline_s: float | None = None,
                     conversation_id: int | None = None) -> HandleResult:
        """The one way a stored message gets answered: live, retry loop, /resume and start-up recovery.

        The message is claimed in the database by a compare-and-set (``status`` → 'answering');
        whoever loses the race finds nothing to do, so a message is answered at most once
        whatever the entry points. The per-conversation lock keeps one message of a conversation
        in the model at a time. A claim older than :attr:`claim_stale_s` belongs to a process
        that died and may be taken again; this process never retakes its own (``_working``).

        ``deadline_s`` (the live path): if the answer is not ready by then, the patient is told
        once that it is coming, and the work goes on in the background; the reply is delivered
        when it arrives (status 'delayed' is returned meanwhile). ``conversation_id``: the message's
        conversation when the caller just stored it (saves a visit to the database)."""
        if message_id in self._working:
            return HandleResult(message_id, None, status="answering")
        if conversation_id is None:
            conversation_id = await self.db.fetchval("SELECT conversation_id FROM messages WHERE id = ?", (message_id,))
        if conversation_id is None:
            return HandleResult(None, None, status="missing")
        if verdict is not None and verdict.crisis:  # no model involved: never waits behind a slow answer
            return await self._answer_claimed(message_id, conversation_id, verdict)
        work = asyncio.ensure_future(self._answer_in_order(message_id, conversation_id, verdict))
        if deadline_s is None:
            return await work
        try:
            done, _ = await asyncio.wait({work}, timeout=deadline_s)
        except asyncio.CancelledError:  # the caller went away: the answer still goes out
            self._background.add(work)
            work.add_done_callback(self._background_done)
            raise
        if work in done:
            return work.result()
        self._background.add(work)
        work.add_done_callback(self._background_done)
        return await self._tell_it_is_coming(message_id, conversation_id)

    async def _answer_in_order(self, message_id: int, conversation_id: int, verdict: Triage | None) -> HandleResult:
        async with self._conversation_locks[conversation_id]:
            return await self._answer_claimed(message_id, conversation_id, verdict)

    async def _tell_it_is_coming(self, message_id: int, conversation_id: int) -> HandleResult:
        """The model deadline passed: a holding notice, once per message (outbox key), never the answer."""
        row = await self.db.fetchone(
            "SELECT c.platform, c.channel_id, c.thread_id, p.platform_user_id FROM conversations c"
            " JOIN patients p ON p.id = c.patient_id WHERE c.id = ?", (conversation_id,))
        view = PatientView(ViewKind.NOTICE, NOTICE_SLOW)
        if row is not None:
            conv = ConversationRef(conversation_id, row["platform"], row["channel_id"], row["thread_id"],
                                   row["platform_user_id"])
            claimed = await self.db.run(
                lambda conn: self.outbox.enqueue(conn, [effects.patient_notice(f"slow:{message_id}", conv, view)]))
            await self.outbox.apply(claimed)
        log.warning("message %s: no answer within %.0f s; the patient was told it is coming", message_id,
                    self.settings.inference.deadline_s)
        return HandleResult(message_id, conversation_id, views=[view], status="delayed")

    def _background_done(self, task: "asyncio.Future[HandleResult]") -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("answering in the background failed", exc_info=task.exception())

    async def close(self) -> None:
        """Stop answers still running in the background (their claims are given back for the retry loop)."""
        running = list(self._background)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def _answer_claimed(self, message_id: int, conversation_id: int, verdict: Triage | None) -> HandleResult:
        if message_id in self._working:
            return HandleResult(message_id, conversation_id, status="answering")
        claimed = await self._claim(message_id)
        if claimed is None:
            status = await self.db.fetchval("SELECT status FROM messages WHERE id = ?", (message_id,))
            return HandleResult(message_id, conversation_id, status=status or "missing")
        row, history = claimed
        conv = ConversationRef(row["conversation_id"], row["platform"], row["channel_id"], row["thread_id"],
                               row["platform_user_id"])
        self._working.add(message_id)
        try:
            result = await self._answer_locked(row, conv, verdict, self._history_from(history))
            metrics.REPLIES.labels(outcome=result.status).inc()
            return result
        except BaseException as exc:
            await self._release_claim(message_id, exc)
            raise
        finally:
            self._working.discard(message_id)

    async def _claim(self, message_id: int) -> tuple[Any, list[Any]] | None:
        """Compare-and-set the message to 'answering'; if this caller won, its row (with the
        conversation) and the conversation before it (:func:`history_rows`), read in the same visit
        to the database: the claimant holds the conversation's lock, so it cannot change meanwhile."""
        t = now()
        cutoff = t - self.claim_stale_s
        placeholders = ", ".join("?" * len(CLAIMABLE_STATUSES))

        def claim(conn: sqlite3.Connection) -> Any:
            won = conn.execute(
                f"UPDATE messages SET status = 'answering', claimed_at = ? WHERE id = ? AND (status IN ({placeholders})"
                " OR (status = 'answering' AND claimed_at < ?)) RETURNING id",
                (t, message_id, *CLAIMABLE_STATUSES, cutoff),
            ).fetchall()
            if not won:
                return None
            row = conn.execute(_ANSWER_ROW_SQL, (message_id,)).fetchone()
            return row, history_rows(conn, row["conversation_id"], message_id)

        return await self.db.run(claim, here=True)

    async def release_claims_of_a_previous_run(self) -> int:
        """At start, when this process alone serves the database (``Service.sole_instance``):
        messages stored or claimed by a previous run and never answered have no live handler any
        more, so they are queued for the retry loop's first round now rather than when their claim
        goes stale (``claim_stale_s``, tens of seconds after a kill -9). Returns how many."""
        return await self.db.run(lambda conn: conn.execute(
            "UPDATE messages SET status = 'queued_retry', claimed_at = NULL,"
            " last_error = 'interrupted: the service stopped' WHERE status IN ('received', 'answering')").rowcount)

    async def _release_claim(self, message_id: int, exc: BaseException) -> None:
        """Give a claim back after an unexpected error, queued so the retry loop answers it later."""
        try:
            await self.db.execute(
                "UPDATE messages SET status = 'queued_retry', claimed_at = NULL, last_error = ?"
                " WHERE id = ? AND status = 'answering'",
                (f"interrupted: {type(exc).__name__}", message_id),
            )
        except Exception:  # the database may be closing; a stale claim is retaken later anyway
            log.exception("releasing the claim on message %s failed", message_id)

    async def _answer_locked(self, row: Any, conv: ConversationRef, verdict: Triage | None,
                             history: list[tuple[str, str]]) -> HandleResult:
        message_id = row["id"]
        text = row["text"]
        result = HandleResult(message_id, conv.id)
        if verdict is None:  # retry, /resume, recovery: triage again (the classifiers may have changed)
            verdict = await self._triage(text)
        if verdict.crisis:
            return await self._crisis(row, conv, verdict, result)
        if row["conv_status"] == TAKEN_OVER:  # a person has this conversation: the model stays out
            await self.cases.patient_wrote(message_id, conv.id, text)
            result.status = "with_person"
            return result
        # --- safety layer: unsupported language / out of scope get a fixed answer, the model is not asked
        early = await self.safety.before_model(row, conv, verdict, result)
        if early is not None:
            return early
        # --- end safety layer
        # --- crisis path: a possible crisis gets a check-in with resources, a red flag interim advice, at once
        result.views.extend(await self.cases.before_held_answer(row["id"], row["region"], conv, verdict))
        advice = [flag.advice for flag in self.pack.red_flags if flag.id in verdict.red_flags]
        task = classify_task(text)  # also the prompt's task line, as in training
        messages = build_prompt(
            self.pack,
            history,
            text[: self.settings.prompt.max_message_chars],
            count_tokens=self.backend.count_tokens,
            budget=self.settings.prompt.token_budget,
            red_flag_advice=advice,
            extra_system=self.safety.extra_system(verdict),
            task=task,
        )
        try:
            async with self.safety.model_slot(conv):  # fair: one patient's flood cannot starve others
                generation = await self.backend.generate(messages)
        except ModelUnavailable as exc:
            metrics.MODEL_UNAVAILABLE.inc()
            return await self._model_failed(message_id, conv, str(exc), result)
        metrics.MODEL_SECONDS.labels(replica=generation.replica or "in-process").observe(generation.latency_s)
        reply_text = generation.text.strip() or "I'm sorry, I could not put an answer together. A specialist will look at your question."
        # --- safety layer: a reply failing the checks is not posted; it goes to review marked blocked
        checked = await self.safety.check_reply_async(reply_text, verdict, text)
        risk_flags = verdict.risk_flags + checked.flags
        review_first = verdict.review_first or not checked.ok
        # --- end safety layer
        platforms = self.card_platforms()

        def store(conn: sqlite3.Connection) -> tuple[int, int, bool, list[Claimed]]:
            # Read now, not before the model: a crisis may have put the conversation on hold meanwhile.
            (conv_status,) = conn.execute("SELECT status FROM conversations WHERE id = ?", (conv.id,)).fetchone()
            hold = conv_status in (CRISIS_HOLD, TAKEN_OVER)
            gated = self.settings.review.mode == "gated" or review_first or hold
            priority = "high" if review_first or hold else "normal"
            delivery = "held" if gated else "shown"
            reply_id = conn.execute(
                "INSERT INTO replies (message_id, conversation_id, prompt, text, shown_text, task, model, adapter_version,"
                " latency_ms, risk_flags, delivery, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (message_id, conv.id, dumps(messages), reply_text, None if gated else reply_text, task, generation.model,
                 generation.adapter_version, generation.latency_s * 1000, dumps(risk_flags), delivery, now(), now()),
            ).lastrowid
            conn.execute(
                "UPDATE messages SET status = 'answered', attempts = attempts + 1, last_error = NULL WHERE id = ?",
                (message_id,),
            )
            if row["attempts"]:
                conn.execute("UPDATE incidents SET resolved_at = ? WHERE message_id = ? AND resolved_at IS NULL",
                             (now(), message_id))
            item_id = insert_review_item(conn, reply_id, priority)
            # Delivery and the review cards are effects of this commit: a crash now loses neither.
            claimed = self.outbox.enqueue(conn, [
                effects.reply_view(reply_id, conv.platform, "new"),
                *(effects.review_card(item_id, name, "new", post=True) for name in platforms),
            ])
            return reply_id, item_id, gated, claimed

        reply_id, item_id, gated, claimed = await self.db.run(store, here=True)
        await self.outbox.apply(claimed)
        for listener in self.item_listeners:
            listener(item_id)
        view = self._gated_view() if gated else self._pending_view(reply_text)
        result.reply_id, result.item_id, result.status = reply_id, item_id, "held" if gated else "shown"
        result.views.append(view)
        return result

    async def _crisis(self, row: Any, conv: ConversationRef, verdict: Triage, result: HandleResult) -> HandleResult:
        """Crisis resources to the patient and an urgent alert, recorded as one crisis case
        (bot/incidents.py): the resources try other routes when refused, and the alert, posted
        after them, says whether they reached the patient."""
        message = crisis_text(self.pack.crisis_message(row["region"]), verdict.language)  # preface in their language
        view = PatientView(ViewKind.CRISIS, message)
        platforms = list(self.platforms)

        def store(conn: sqlite3.Connection) -> list[Claimed] | None:
            if conn.execute("SELECT 1 FROM incidents WHERE kind = 'crisis' AND message_id = ?", (row["id"],)).fetchone():
                return None  # this message already has its case (an edit seen twice, a redelivery)
            # The resources are kept with the message: the next prompt carries what the patient was shown.
            conn.execute("UPDATE messages SET status = 'crisis', response_text = ? WHERE id = ?", (message, row["id"]))
            conn.execute("UPDATE conversations SET status = ? WHERE id = ? AND status != ?", (CRISIS_HOLD, conv.id, TAKEN_OVER))
            incident_id = conn.execute(
                "INSERT INTO incidents (kind, detail, message_id, conversation_id, created_at, alerted_at)"
                " VALUES ('crisis', ?, ?, ?, ?, ?)",
                (f"conversation {conv.id} on {conv.platform}", row["id"], conv.id, now(), now()),
            ).lastrowid
            return self.outbox.enqueue(conn, [  # in this order: the patient first, then the alert about it
                effects.patient_notice(f"crisis:{row['id']}", conv, view, incident_id=incident_id),
                *(effects.crisis_alert(incident_id, name) for name in platforms),
            ])

        claimed = await self.db.run(store)
        if claimed is None:
            result.status = "crisis_already_handled"
            return result
        await self.outbox.apply(claimed)
        log.warning("crisis triage on message %s (conversation %s)", row["id"], conv.id)
        metrics.CRISIS_ALERTS.inc()
        result.status = "crisis"
        result.views.append(view)
        return result

    async def _model_failed(self, message_id: int, conv: ConversationRef, error: str, result: HandleResult) -> HandleResult:
        error = self.settings.redact(error)  # stored, shown to moderators and posted: never a key
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE messages SET status = 'queued_retry', attempts = attempts + 1, last_error = ? WHERE id = ?",
                (error[:500], message_id),
            )
            cursor = await conn.execute(
                "SELECT id FROM incidents WHERE message_id = ? AND resolved_at IS NULL", (message_id,)
            )
            first_failure = await cursor.fetchone() is None
            await cursor.close()  # a half-read cursor would pin an old snapshot and fail this connection's next write
            if first_failure:
                await conn.execute(
                    "INSERT INTO incidents (kind, detail, message_id, created_at) VALUES ('model_unavailable', ?, ?, ?)",
                    (error[:500], message_id, now()),
                )
        log.error("model unavailable for message %s: %s", message_id, error)
        if first_failure:
            view = PatientView(ViewKind.NOTICE, NOTICE_UNAVAILABLE)
            await self._deliver(conv, view)
            result.views.append(view)
        if time.monotonic() - self._last_outage_alert > 300:
            self._last_outage_alert = time.monotonic()
            await self.alert_moderators(f"The model is failing: {error}. Messages are queued and will be retried.")
        result.status = "queued_retry"
        return result

    async def retry_queued(self, limit: int = 200) -> int:
        """Answer messages left waiting (outage, pause, crash); returns how many got a reply.

        Candidates are messages queued for retry or paused, and messages received or claimed
        longer ago than the claim deadline (a live handler answers fresh ones itself); each
        still goes through :meth:`answer`, whose claim decides. The backlog is answered at the
        model's capacity (``inference.max_concurrency`` conversations at once), each
        conversation's messages one at a time, oldest first. A model failure stops the round
        (try again later instead of hammering)."""
        total = 0
        while True:
            cutoff = now() - self.claim_stale_s
            placeholders = ", ".join("?" * len(CLAIMABLE_STATUSES))
            rows = await self.db.fetchall(
                f"SELECT id, conversation_id FROM messages WHERE (status IN ({placeholders})"
                " AND (status != 'received' OR created_at < ?)) OR (status = 'answering' AND claimed_at < ?)"
                " ORDER BY id LIMIT ?",
                (*CLAIMABLE_STATUSES, cutoff, cutoff, limit),
            )
            by_conversation: dict[int, list[int]] = defaultdict(list)
            for row in rows:
                if row["id"] not in self._working:
                    by_conversation[row["conversation_id"]].append(row["id"])
            answered, stopped = await self._answer_backlog(list(by_conversation.values()))
            total += answered
            if stopped or answered == 0 or len(rows) < limit:
                return total

    async def _answer_backlog(self, conversations: list[list[int]]) -> tuple[int, bool]:
        slots = asyncio.Semaphore(self.settings.inference.max_concurrency)
        answered = 0
        stop = False

        async def one_conversation(message_ids: list[int]) -> None:
            nonlocal answered, stop
            async with slots:
                for message_id in message_ids:  # oldest first, one at a time
                    if stop or await self.is_paused():
                        stop = True
                        return
                    outcome = await self.answer(message_id)
                    if outcome.status in ("shown", "held", "crisis"):
                        answered += 1
                    elif outcome.status == "queued_retry":
                        stop = True  # the model is still down
                        return

        await asyncio.gather(*(one_conversation(ids) for ids in conversations))
        return answered, stop

    async def _history(self, conversation_id: int, before_message_id: int) -> list[tuple[str, str]]:
        """The conversation so far as the patient saw it (:func:`history_rows`)."""
        return self._history_from(await self.db.run(
            lambda conn: history_rows(conn, conversation_id, before_message_id), write=False))

    @staticmethod
    def _history_from(rows: list[Any]) -> list[tuple[str, str]]:
        history: list[tuple[str, str]] = []
        for row in rows:
            history.append(("user", row["text"]))
            shown = row["response_text"] if row["status"] == "crisis" else row["shown_text"]
            if shown:
                history.append(("assistant", shown))
        return history

    # ------------------------------------------------------------------ views

    def _label(self, base: str) -> str:
        if self.demo:
            return f"{base} · {LABEL_DEMO}"
        if self.general_model and self.backend.status().adapter_version is None:
            return f"{base} · {LABEL_GENERAL}"
        return base

    def _disclaimer(self) -> str:
        return self.pack.demo_disclaimer if self.demo else self.pack.disclaimer

    def _pending_view(self, text: str) -> PatientView:
        return PatientView(ViewKind.PENDING_REVIEW, text, self._label(LABEL_PENDING), self._disclaimer())

    def _gated_view(self) -> PatientView:
        return PatientView(ViewKind.UNDER_REVIEW, GATED_TEXT, self._label(LABEL_PENDING))

    def view_for(self, reply_text: str, delivery: str, state: str, final_text: str | None) -> PatientView:
        """What the patient sees for a reply, given its delivery and review state (one rule for all views)."""
        if state == ReviewState.APPROVED.value:
            label = LABEL_APPROVED_DEMO if self.demo else LABEL_APPROVED
            return PatientView(ViewKind.REVIEWED, final_text or reply_text, self._label(label), self._disclaimer())
        if state == ReviewState.EDITED.value:
            label = LABEL_EDITED_DEMO if self.demo else LABEL_EDITED
            return PatientView(ViewKind.REVIEWED, final_text or reply_text, self._label(label), self._disclaimer())
        if state == ReviewState.REJECTED.value:
            return PatientView(ViewKind.WITHDRAWN, WITHDRAWN_TEXT)
        if state == ReviewState.EXPIRED.value:
            if delivery == "held":  # never shown: the unchecked answer stays unshown
                return PatientView(ViewKind.WITHDRAWN, EXPIRED_HELD_TEXT)
            return PatientView(ViewKind.PENDING_REVIEW, reply_text, self._label(LABEL_NOT_REVIEWED), self._disclaimer())
        if delivery == "held":
            return self._gated_view()
        return self._pending_view(reply_text)

    # ------------------------------------------------------------------ expert decisions

    async def decide(
        self,
        item_id: int,
        actor: Actor,
        action: Action | str,
        edited_text: str | None = None,
        rubric: Rubric | None = None,
        comment: str | None = None,
    ) -> DecisionOutcome:
        """Record a decision and, in the same transaction, what must follow it (outbox): the
        cards on every platform; when it closes the item, the patient's view and the dataset
        example. The effects are then applied at once; the worker retries any that fail."""
        platforms = self.card_platforms()
        claimed: list[Claimed] = []
        item_created: list[float] = []

        def record_effects(conn: sqlite3.Connection, outcome: DecisionOutcome) -> None:
            claimed.extend(self._decision_effects(conn, item_id, outcome, platforms))
            item_created.extend(conn.execute("SELECT created_at FROM review_items WHERE id = ?", (item_id,)).fetchone())

        outcome = await self.reviews.decide(item_id, actor, action, edited_text, rubric, comment, effects=record_effects)
        if item_created:
            metrics.DECISIONS.labels(action=Action(action).value).inc()
            metrics.DECISION_SECONDS.observe(max(0.0, now() - item_created[0]))
        await self.outbox.apply(claimed)
        return outcome

    def _decision_effects(self, conn: sqlite3.Connection, item_id: int, outcome: DecisionOutcome,
                          platforms: list[str]) -> list[Claimed]:
        """Inside the decision's transaction: the reply's new delivery state and the effects."""
        if not outcome.recorded:
            return []
        (decided,) = conn.execute("SELECT COUNT(*) FROM review_decisions WHERE item_id = ?", (item_id,)).fetchone()
        todo = []  # applied in this order: the dataset, the patient, then the cards
        if outcome.closed_now:
            reply = conn.execute(
                "SELECT r.id, c.platform FROM review_items i JOIN replies r ON r.id = i.reply_id"
                " JOIN conversations c ON c.id = r.conversation_id WHERE i.id = ?", (item_id,)).fetchone()
            accepted = outcome.state in (ReviewState.APPROVED, ReviewState.EDITED)
            conn.execute(
                "UPDATE replies SET delivery = ?, shown_text = ?, updated_at = ? WHERE id = ?",
                ("reviewed" if accepted else "withdrawn", outcome.final_text if accepted else None, now(), reply["id"]),
            )
            if accepted:
                todo.append(effects.dataset_example(item_id))
            todo.append(effects.reply_view(reply["id"], reply["platform"], "closed"))
        todo += [effects.review_card(item_id, name, f"d{decided}") for name in platforms]
        return self.outbox.enqueue(conn, todo)

    async def expire_reviews(self) -> int:
        """Expire items undecided after ``review.expire_after_hours``: the patient is told (a held
        answer is replaced by an honest notice; a shown one is labelled as not reviewed) and the
        cards close, through the outbox like a decision. Returns how many expired."""
        platforms = self.card_platforms()
        claimed: list[Claimed] = []

        def record_effects(conn: sqlite3.Connection, item_ids: list[int]) -> None:
            todo = []
            for item_id in item_ids:
                reply = conn.execute(
                    "SELECT r.id, c.platform FROM review_items i JOIN replies r ON r.id = i.reply_id"
                    " JOIN conversations c ON c.id = r.conversation_id WHERE i.id = ?", (item_id,)).fetchone()
                todo.append(effects.reply_view(reply["id"], reply["platform"], "expired"))
                todo += [effects.review_card(item_id, name, "expired") for name in platforms]
            claimed.extend(self.outbox.enqueue(conn, todo))

        expired = await self.reviews.expire_old(self.settings.review.expire_after_hours * 3600, effects=record_effects)
        await self.outbox.apply(claimed)
        return len(expired)

    async def add_to_dataset(self, item_id: int) -> None:
        """The expert example made from a closed, accepted review item (idempotent: keyed by the item)."""
        item = await self.reviews.item(item_id)
        if item is None or item["state"] not in (ReviewState.APPROVED.value, ReviewState.EDITED.value):
            return
        reply = await self.db.fetchone(
            "SELECT r.*, c.patient_id FROM replies r JOIN conversations c ON c.id = r.conversation_id WHERE r.id = ?",
            (item["reply_id"],),
        )
        if reply is None:
            return
        source = "expert_edited" if item["state"] == ReviewState.EDITED.value else "expert_approved"
        final_text = item["final_text"] or reply["text"]
        decisions = await self.reviews.decisions(item_id)
        # The conversation as the model saw it (system prompt, history, question), answered as the
        # experts decided; patient turns are scrubbed of identifying details by dataset.add_example.
        messages = [*json.loads(reply["prompt"]), {"role": "assistant", "content": final_text}]
        provenance = {
            "review_item_id": item_id,
            "reviewers": [f"{d['reviewer_platform']}:{d['reviewer_id']}" for d in decisions],
            "model": reply["model"],
            "adapter_version": reply["adapter_version"],
        }
        if source == "expert_edited":
            provenance["original_reply"] = scrub(reply["text"])  # the model may have echoed a name
        await dataset.add_example(self.db, reply["task"], source, messages, provenance,
                                  patient_id=reply["patient_id"], review_item_id=item_id,
                                  eval_questions=self.pack.eval_questions)

    # ------------------------------------------------------------------ platform plumbing

    async def _send(self, conv: ConversationRef, view: PatientView) -> PatientView:
        await self._deliver(conv, view)
        return view

    async def _deliver(self, conv: ConversationRef, view: PatientView) -> list[str]:
        platform = self.platforms.get(conv.platform)
        if platform is None:
            return []
        try:
            return await platform.send_to_patient(conv, view)
        except Exception:  # the reply is stored; a delivery failure must not lose it
            log.exception("delivery to %s failed for conversation %s", conv.platform, conv.id)
            return []

    async def review_card(self, item_id: int) -> ReviewCard | None:
        found = await self.review_card_and_refs(item_id)
        return None if found is None else found[0]

    async def review_card_and_refs(self, item_id: int) -> tuple[ReviewCard, dict[str, Any]] | None:
        """A review item's card and where it is posted on each platform (``card_ref``), read in one
        visit to the database: this runs for every new reply and every decision."""

        def read(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            item = item_row(conn, item_id)
            if item is None:
                return None
            held = item["state"] == ReviewState.PENDING.value and item["delivery"] == "held"
            return (item, decision_rows(conn, item_id), judge.verdict_row(conn, item_id),
                    history_rows(conn, item["conversation_id"], item["message_id"]),
                    conversation_case(conn, item["conversation_id"]) if held else None)

        parts = await self.db.run(read, write=False, here=True)
        if parts is None:
            return None
        item, decisions, judged, history, case = parts
        pending = item["state"] == ReviewState.PENDING.value
        decided = [f"{d['reviewer_name'] or d['reviewer_id']}: {d['action']}" for d in decisions]
        if pending:
            note = self.reviews.note_for(decisions)  # e.g. "Tie: one more review needed"
            if note:
                decided.append(note)
        # The judge's first reading (never a decision); "reading…" only while the item waits.
        judge_line = judge.card_line(judged, self.settings.judge.enabled and pending)
        # The last turns before the reviewed message, as the patient saw them (``_history``).
        thread = [Turn("patient" if role == "user" else "assistant", text)
                  for role, text in self._history_from(history)[-CARD_THREAD_TURNS:]]
        card = ReviewCard(
            item_id=item_id, reply_id=item["reply_id"], patient_text=item["patient_text"],
            reply_text=item["final_text"] or item["reply_text"], task=item["task"],
            risk_flags=json.loads(item["risk_flags"]), adapter_version=item["adapter_version"],
            state=item["state"], priority=item["priority"], decided_by=decided, judge=judge_line,
            thread=thread, hold_reason=self._hold_reason(item, case) if pending else None,
        )
        return card, json.loads(item["card_ref"]) if item["card_ref"] else {}

    def _hold_reason(self, item: Any, case: Any) -> str | None:
        """Why a pending reply is held from the patient, in words for the reviewer (None: it is
        shown). ``case``: the conversation's open crisis case, if any."""
        if item["delivery"] != "held":
            return None
        flags = json.loads(item["risk_flags"] or "[]")
        reasons = [reason] if (reason := hold_reason_text(case)) else []
        if "possible_crisis" in flags:
            reasons.append("possible crisis: the safety check was unsure, a person looks first")
        names = {flag.id: flag.name for flag in self.pack.red_flags}
        reasons += [f"red flag: {names.get(f[9:], f[9:])}" for f in flags if f.startswith("red_flag:")]
        if "injection" in flags:
            reasons.append("the message tries to instruct the assistant")
        if any(f.startswith("reply:") or f.startswith("blocked") for f in flags):
            reasons.append("the reply failed the automatic checks")
        if not reasons and self.settings.review.mode == "gated":
            reasons.append("every reply is reviewed first (review.mode = gated)")
        return "; ".join(reasons) or "held for review"

    async def alert_moderators(self, text: str, urgent: bool = False, key: str | None = None,
                               skip: set[str] | frozenset[str] = frozenset(), report: Any = None) -> None:
        """Tell moderators and on-duty reviewers on every connected platform but those in ``skip``
        (through the outbox: an alert that fails is retried and counted in /status). ``key`` makes
        it once-only."""
        text = self.settings.redact(text)  # stored in the outbox and posted: never a key
        platforms = [name for name in self.platforms if name not in skip]
        if not platforms:
            return
        key = key or f"adhoc:{uuid.uuid4().hex}"
        payload = report.to_dict() if report is not None else None  # tables and a chart (bot.reports.Report)
        claimed = await self.db.run(
            lambda conn: self.outbox.enqueue(conn, [effects.alert(key, name, text, urgent, payload) for name in platforms]))
        await self.outbox.apply(claimed)

    async def _set_message_status(self, message_id: int, status: str) -> None:
        await self.db.execute("UPDATE messages SET status = ? WHERE id = ?", (status, message_id), here=True)

    # ------------------------------------------------------------------ service state

    async def is_paused(self) -> bool:
        if self._paused is None:
            self._paused = await self.db.fetchval("SELECT value FROM service_state WHERE key = 'paused'") == "1"
        return self._paused

    async def set_paused(self, paused: bool) -> None:
        await self.db.execute(
            "INSERT INTO service_state (key, value, updated_at) VALUES ('paused', ?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            ("1" if paused else "0", now()),
        )
        self._paused = paused

    async def purge_expired_conversations(self) -> int:
        """Delete conversations whose last message is older than ``privacy.retention_days`` (what
        the consent notice promises): their messages, replies and review items; posted review
        cards are redacted. Patients' answers to the consent question and training examples made
        with their agreement stay (until /forget-me). Returns how many conversations went."""
        days = self.settings.privacy.retention_days
        if not days:
            return 0
        cutoff = now() - days * 86400
        rows = await self.db.fetchall(
            "SELECT i.id, i.card_ref FROM review_items i JOIN replies r ON r.id = i.reply_id"
            " JOIN conversations c ON c.id = r.conversation_id WHERE c.updated_at < ? AND i.card_ref IS NOT NULL",
            (cutoff,))
        await self.db.each_connection(lambda conn: conn.execute("PRAGMA secure_delete = ON").fetchall())
        removed = await self.db.run(
            lambda conn: conn.execute("DELETE FROM conversations WHERE updated_at < ?", (cutoff,)).rowcount)
        if removed:
            await self.safety.redact_cards([(row[0], row[1]) for row in rows])
            log.info("retention: %d conversation(s) older than %d days deleted", removed, days)
        return int(removed)

    async def forget_patient(self, platform: str, user_id: str) -> ForgetReport:
        """Delete a patient and everything derived from them (issue 12 item 4): their rows
        (cascading to dataset examples), their lines in every training snapshot or export kept
        under the data directory, with every adapter trained on those marked (pipeline/forgetting.py);
        posted review cards redacted; the bot's own messages in their threads deleted where the
        platform allows. The report says exactly what was done, for the confirmation."""
        from pipeline import forgetting

        report = ForgetReport()
        cards = await self.safety.prepare_forget(platform, user_id)  # secure delete on; cards to redact
        patient_ids = [row[0] for row in await self.db.fetchall(
            "SELECT id FROM patients WHERE platform = ? AND platform_user_id = ?", (platform, user_id))]
        found = await forgetting.trace(self.db, patient_ids)
        threads = await self._patient_threads(platform, user_id)
        async with self.db.transaction() as conn:
            # Dataset examples made from the patient's review items, even if one lost its patient_id.
            await conn.execute(
                "DELETE FROM dataset_examples WHERE review_item_id IN (SELECT i.id FROM review_items i"
                " JOIN replies r ON r.id = i.reply_id JOIN conversations c ON c.id = r.conversation_id"
                " JOIN patients p ON p.id = c.patient_id WHERE p.platform = ? AND p.platform_user_id = ?)",
                (platform, user_id),
            )
            # What people of the care team wrote to the patient in a crisis case (the case row stays,
            # without its conversation: the audit of who resolved it and when).
            await conn.execute(
                "DELETE FROM case_replies WHERE incident_id IN (SELECT i.id FROM incidents i"
                " JOIN conversations c ON c.id = i.conversation_id JOIN patients p ON p.id = c.patient_id"
                " WHERE p.platform = ? AND p.platform_user_id = ?)", (platform, user_id))
            cursor = await conn.execute(
                "DELETE FROM patients WHERE platform = ? AND platform_user_id = ?", (platform, user_id)
            )
            report.removed = cursor.rowcount
        if report.removed:
            files, hit, seen = await asyncio.to_thread(forgetting.scrub_files, self.settings.data_dir, found)
            report.snapshot_files = len(files.files)
            report.adapters = await forgetting.mark_adapters(self.db, hit, seen, found)
        # redact cards, flush the WAL into the zeroed file, drop limits
        report.cards = await self.safety.after_forget(platform, user_id, cards)
        for conv, known in threads:
            deleted, left = await self._delete_bot_messages(conv, known)
            report.bot_messages += deleted
            report.bot_messages_left += left
        if report.adapters:
            await self.alert_moderators(
                f"A patient used /forget-me. Adapter version(s) {', '.join(report.adapters)} were trained on their "
                "data (now deleted from the dataset and the kept snapshots) and are marked in the registry. "
                "Retrain to replace them: the next retrain leaves the data out and is not skipped as "
                "'nothing new'.", key=f"forgotten:{uuid.uuid4().hex}")
        return report

    async def _patient_threads(self, platform: str, user_id: str) -> list[tuple[ConversationRef, list[str]]]:
        """The patient's conversations and the platform ids of the replies posted in each."""
        rows = await self.db.fetchall(
            "SELECT c.id, c.platform, c.channel_id, c.thread_id, r.platform_message_ids FROM conversations c"
            " JOIN patients p ON p.id = c.patient_id LEFT JOIN replies r ON r.conversation_id = c.id"
            " WHERE p.platform = ? AND p.platform_user_id = ? ORDER BY c.id, r.id", (platform, user_id))
        threads: dict[int, tuple[ConversationRef, list[str]]] = {}
        for row in rows:
            conv, known = threads.setdefault(row["id"], (
                ConversationRef(row["id"], row["platform"], row["channel_id"], row["thread_id"], user_id), []))
            known.extend(json.loads(row["platform_message_ids"] or "[]"))
        return list(threads.values())

    async def _delete_bot_messages(self, conv: ConversationRef, known: list[str]) -> tuple[int, int]:
        """Ask the platform to delete the bot's own messages in a forgotten conversation: (deleted, left)."""
        platform = self.platforms.get(conv.platform)
        delete = getattr(platform, "delete_bot_messages", None)
        if delete is None:
            return 0, 0
        try:
            return await delete(conv, known)
        except Exception:
            log.exception("deleting the bot's messages in a forgotten conversation on %s failed", conv.platform)
            return 0, len(known)
