"""Crisis cases: the crisis path after triage, until a person has dealt with it (issue 14).

A crisis message opens a case (a row of ``incidents`` with ``kind = 'crisis'``). This module
holds what happens to a case, whatever the platform:

* **delivery is confirmed**: the crisis resources are posted in the conversation; if that is
  refused (no permission, closed DMs, an archived thread or channel), the other ways to reach
  the patient are tried in the order of :data:`CRISIS_ROUTES`; the case records which way
  worked, or every refusal;
* **the alert tells the truth**: the moderators' alert is written when it is posted, from the
  case as it is then (delivered, delivered another way, or "could NOT reach the patient"),
  with a link to the conversation;
* **a person can act on it**: a reviewer or moderator takes the case over (the model stays out
  of the conversation: the patient's messages go to that person), replies to the patient as a
  person (labelled so, never as the AI), and resolves it with an outcome note, which releases
  the conversation; a case nobody has taken is alerted again after
  ``safety.crisis_realert_minutes``. Everything is stored: a restart changes nothing.

Patients cannot take over or resolve: :func:`require_carer` refuses them clearly, with a log line
and an audit row.

The platforms only translate: each says which other routes exist for a conversation
(``crisis_routes``), posts by one of them (``send_via``) and makes a link (``conversation_link``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from bot import effects
from bot.platform import ConversationRef, PatientView, Platform, ViewKind
from bot.storage import Database, now
from reviewers.models import MODERATOR_ROLE, REVIEWER_ROLE, Actor, PermissionDenied

if TYPE_CHECKING:
    from bot.core import ConversationCore

log = logging.getLogger(__name__)

# How the crisis resources reach a patient, in the order tried: the conversation itself (its
# thread, the DM, or in place), then the conversation's channel (with a mention), then a direct
# message. A platform offers the ones that exist for a conversation (``crisis_routes``).
CRISIS_ROUTES = ("conversation", "channel", "dm")
TAKEN_OVER = "taken_over"  # conversations.status while a person has the case: the model stays out
CRISIS_HOLD = "crisis_hold"  # conversations.status while a case is open: replies are held for a person
REFUSAL = "Only reviewers and moderators can take over, answer or resolve a crisis case."
PERSON_LABEL = "Written by {name}, a person from the care team — not the AI"


CHECK_IN = (
    "Before I answer, I'd like to check in with you: some of what you wrote makes me want to ask how you are "
    "really doing. If things feel like too much, or you have thoughts of hurting yourself, you don't have to "
    "face it alone. You can talk to someone now:\n{resources}\n\nIf you are in danger right now, please call "
    "your local emergency number. A person from our team will read your message before my answer is shown."
)
INTERIM_ADVICE = (
    "While a specialist checks my full answer, one thing that should not wait: {advice}"
)


def check_in_text(pack: Any, region: str | None, language: str) -> str:
    """The soft check-in for a possible crisis: a question, the resources, a person will read it."""
    from bot.safety import crisis_text

    return crisis_text(CHECK_IN.format(resources=pack.crisis.resources(region)), language)


def interim_advice_text(pack: Any, red_flags: tuple[str, ...] | list[str]) -> str | None:
    """The pack's advice for each red flag found ("please see a doctor soon, because …"), with its
    source, shown at once while the model's reply waits for review."""
    parts = [f"{flag.advice}" + (f" (Source: {flag.source})" if flag.source else "")
             for flag in pack.red_flags if flag.id in red_flags]
    return INTERIM_ADVICE.format(advice="\n\n".join(parts)) if parts else None


class CaseError(Exception):
    """A case action that cannot be done (no such case, already resolved); safe to show."""


def require_carer(actor: Actor, what: str) -> None:
    """Reviewers and moderators may act on crisis cases; anyone else is refused (and logged)."""
    if not (actor.has(REVIEWER_ROLE) or actor.has(MODERATOR_ROLE)):
        log.warning("crisis case %s refused for %s: not a reviewer or moderator", what, actor.label)
        raise PermissionDenied(REFUSAL)


async def open_cases(db: Database) -> list[dict[str, Any]]:
    """Crisis cases not resolved, oldest first."""
    rows = await db.fetchall(
        "SELECT i.*, c.platform FROM incidents i LEFT JOIN conversations c ON c.id = i.conversation_id"
        " WHERE i.kind = 'crisis' AND i.resolved_at IS NULL ORDER BY i.id")
    return [dict(r) for r in rows]


async def all_cases(db: Database, limit: int = 50) -> list[dict[str, Any]]:
    rows = await db.fetchall(
        "SELECT i.*, c.platform FROM incidents i LEFT JOIN conversations c ON c.id = i.conversation_id"
        " WHERE i.kind = 'crisis' ORDER BY i.id DESC LIMIT ?", (limit,))
    return [dict(r) for r in rows]


async def get_case(db: Database, case_id: int) -> dict[str, Any]:
    row = await db.fetchone(
        "SELECT i.*, c.platform, c.status AS conversation_status FROM incidents i"
        " LEFT JOIN conversations c ON c.id = i.conversation_id WHERE i.id = ? AND i.kind = 'crisis'", (case_id,))
    if row is None:
        raise CaseError(f"There is no crisis case #{case_id}.")
    case = dict(row)
    case["replies"] = [dict(r) for r in await db.fetchall(
        "SELECT author, text, created_at FROM case_replies WHERE incident_id = ? ORDER BY id", (case_id,))]
    case["messages"] = [dict(r) for r in await db.fetchall(
        "SELECT id, text, status, created_at FROM messages WHERE conversation_id = ? ORDER BY id DESC LIMIT 10",
        (case["conversation_id"],))][::-1] if case["conversation_id"] else []
    return case


def age_text(seconds: float) -> str:
    if seconds < 120:
        return f"{int(seconds)} s"
    if seconds < 7200:
        return f"{int(seconds // 60)} min"
    return f"{seconds / 3600:.1f} h"


def case_line(case: dict[str, Any], at: float | None = None) -> str:
    """One line per case for /status and the command line: number, age, who has it."""
    t = now() if at is None else at
    who = f"taken over by {case['taken_by']}" if case.get("taken_by") else "NOBODY has taken it"
    if case.get("resolved_at"):
        who = f"resolved by {case['resolved_by']}: {case['outcome_note']}"
    reach = " — patient NOT reached" if case.get("delivery") == "failed" else ""
    return (f"#{case['id']} {age_text(t - case['created_at'])} old, conversation {case['conversation_id']}"
            f" on {case.get('platform') or '?'}, {who}{reach}")


def case_text(case: dict[str, Any]) -> str:
    """A case in full for ``case show`` / ``llm4sweat incidents show``: delivery, who has it, the
    last messages of the conversation, what people wrote to the patient, the outcome."""
    lines = [case_line(case)]
    if case.get("delivery") == "delivered":
        lines.append(f"Crisis resources: reached the patient {ROUTE_WORDS.get(case['delivery_route'], case['delivery_route'])}"
                     + (f" (refused first: {case['delivery_error']})" if case.get("delivery_error") else ""))
    elif case.get("delivery") == "failed":
        lines.append(f"Crisis resources: could NOT reach the patient ({case['delivery_error']})")
    if case.get("link"):
        lines.append(f"Conversation: {case['link']}")
    for message in case.get("messages", []):
        lines.append(f"  patient: {message['text'][:300]} [{message['status']}]")
    for reply in case.get("replies", []):
        lines.append(f"  {reply['author']} (person): {reply['text'][:300]}")
    return "\n".join(lines)


async def resolve_case(db: Database, case_id: int, actor: Actor, note: str) -> dict[str, Any]:
    """Record who resolved the case, when and how, and release the conversation (the model may
    answer again). Stored in one transaction; usable without the running service (the CLI)."""
    require_carer(actor, "resolve")
    note = (note or "").strip()
    if not note:
        raise CaseError("Say how the case ended (an outcome note), e.g. --note \"called the patient, safe with family\".")
    t = now()

    def resolve(conn: Any) -> Any:
        row = conn.execute("SELECT resolved_at, conversation_id FROM incidents WHERE id = ? AND kind = 'crisis'",
                           (case_id,)).fetchone()
        if row is None:
            raise CaseError(f"There is no crisis case #{case_id}.")
        if row[0] is not None:
            raise CaseError(f"Crisis case #{case_id} is already resolved.")
        conn.execute("UPDATE incidents SET resolved_at = ?, resolved_by = ?, outcome_note = ? WHERE id = ?",
                     (t, actor.label, note[:2000], case_id))
        others = conn.execute("SELECT COUNT(*) FROM incidents WHERE kind = 'crisis' AND resolved_at IS NULL"
                              " AND conversation_id = ?", (row[1],)).fetchone()[0]
        if not others:  # the last open case of the conversation: the model may answer again
            conn.execute("UPDATE conversations SET status = 'open' WHERE id = ? AND status IN (?, ?)",
                         (row[1], CRISIS_HOLD, TAKEN_OVER))
        conn.execute("INSERT INTO review_audit (item_id, actor, action, detail, created_at) VALUES (NULL, ?, ?, ?, ?)",
                     (actor.label, "crisis_resolved", f"case {case_id}: {note[:500]}", t))

    await db.run(resolve)
    log.warning("crisis case %s resolved by %s", case_id, actor.label)
    return await get_case(db, case_id)


ROUTE_WORDS = {"conversation": "in their conversation", "channel": "in the channel, mentioning them",
               "dm": "by direct message"}


def describe_error(platform: Platform, exc: BaseException) -> str:
    """One line saying why a post was refused, in the platform's own terms (never a token)."""
    explain = getattr(platform, "describe_error", None)
    text = explain(exc) if explain is not None else f"{exc}" or type(exc).__name__
    return text.replace("\n", " ")[:300]


class CrisisCases:
    def __init__(self, core: "ConversationCore"):
        self.core = core

    @property
    def db(self) -> Any:
        return self.core.db

    # ------------------------------------------------------------------ a person acts

    async def take_over(self, case_id: int, actor: Actor) -> dict[str, Any]:
        """``actor`` has the case: the model stays out of the conversation until it is resolved."""
        try:
            require_carer(actor, "take-over")
        except PermissionDenied:
            await self.core.reviews.audit(None, actor.label, "refused", f"crisis case {case_id}: take over")
            raise
        case = await get_case(self.db, case_id)
        if case["resolved_at"] is not None:
            raise CaseError(f"Crisis case #{case_id} is already resolved.")
        t = now()

        def take(conn: Any) -> None:
            conn.execute("UPDATE incidents SET taken_by = ?, taken_at = ? WHERE id = ?", (actor.label, t, case_id))
            conn.execute("UPDATE conversations SET status = ? WHERE id = ?", (TAKEN_OVER, case["conversation_id"]))
            conn.execute("INSERT INTO review_audit (item_id, actor, action, detail, created_at) VALUES (NULL, ?, ?, ?, ?)",
                         (actor.label, "crisis_taken_over", f"case {case_id}", t))

        await self.db.run(take)
        log.warning("crisis case %s taken over by %s; the model stays out of conversation %s", case_id, actor.label,
                    case["conversation_id"])
        await self.core.alert_moderators(f"Crisis case #{case_id} was taken over by {actor.display_name or actor.label}.",
                                         key=f"crisis-taken:{case_id}:{t}")
        return await get_case(self.db, case_id)

    async def reply(self, case_id: int, actor: Actor, text: str) -> dict[str, Any]:
        """Write to the patient as a person (labelled so); takes the case over if nobody has."""
        try:
            require_carer(actor, "reply")
        except PermissionDenied:
            await self.core.reviews.audit(None, actor.label, "refused", f"crisis case {case_id}: reply")
            raise
        text = (text or "").strip()
        if not text:
            raise CaseError("The reply to the patient is empty.")
        case = await get_case(self.db, case_id)
        if case["resolved_at"] is not None:
            raise CaseError(f"Crisis case #{case_id} is already resolved; the patient talks to the assistant again.")
        if not case["taken_by"]:
            case = await self.take_over(case_id, actor)
        row = await self.db.fetchone(
            "SELECT c.id, c.platform, c.channel_id, c.thread_id, p.platform_user_id FROM conversations c"
            " JOIN patients p ON p.id = c.patient_id WHERE c.id = ?", (case["conversation_id"],))
        if row is None:
            raise CaseError(f"The conversation of crisis case #{case_id} was deleted at the patient's request.")
        conv = ConversationRef(row["id"], row["platform"], row["channel_id"], row["thread_id"], row["platform_user_id"])
        view = PatientView(ViewKind.PERSON, text, PERSON_LABEL.format(name=actor.display_name or "a team member"))
        t = now()

        def store(conn: Any) -> Any:
            reply_id = conn.execute("INSERT INTO case_replies (incident_id, author, text, created_at) VALUES (?, ?, ?, ?)",
                                    (case_id, actor.label, text, t)).lastrowid
            return self.core.outbox.enqueue(conn, [effects.patient_notice(f"person:{case_id}:{reply_id}", conv, view)])

        await self.core.outbox.apply(await self.db.run(store))
        log.info("crisis case %s: %s wrote to the patient", case_id, actor.label)
        return await get_case(self.db, case_id)

    async def resolve(self, case_id: int, actor: Actor, note: str) -> dict[str, Any]:
        try:
            case = await resolve_case(self.db, case_id, actor, note)
        except PermissionDenied:
            await self.core.reviews.audit(None, actor.label, "refused", f"crisis case {case_id}: resolve")
            raise
        await self.core.alert_moderators(
            f"Crisis case #{case_id} was resolved by {actor.display_name or actor.label}: {case['outcome_note']}",
            key=f"crisis-resolved:{case_id}")
        return case

    async def patient_wrote(self, message_id: int, conversation_id: int, text: str) -> None:
        """A patient wrote in a conversation a person has taken over: tell them, not the model."""
        case = await self.db.fetchone(
            "SELECT id, taken_by FROM incidents WHERE kind = 'crisis' AND resolved_at IS NULL AND conversation_id = ?"
            " ORDER BY id DESC", (conversation_id,))
        await self.db.execute("UPDATE messages SET status = 'with_person' WHERE id = ?", (message_id,))
        if case is None:
            return
        await self.core.alert_moderators(
            f"Crisis case #{case['id']} (taken over by {case['taken_by']}): the patient wrote: «{text[:1500]}»",
            key=f"crisis-patient:{message_id}")

    async def before_held_answer(self, message_id: int, region: str | None, conv: ConversationRef,
                                 verdict: Any) -> list[PatientView]:
        """What the patient gets at once while the model's reply waits for a person (issue 14
        items 3, 4): a possible crisis, a check-in with the crisis resources; a red flag, the
        pack's advice to see a doctor and why. Called as soon as the message is triaged (even
        while answering is paused) and again before the model (a retry, a restart): each is
        sent once per message. Returns the views sent now."""
        notices: list[tuple[str, PatientView]] = []
        if verdict.possible_crisis and not verdict.crisis:
            text = check_in_text(self.core.pack, region, verdict.language)
            notices.append((f"checkin:{message_id}", PatientView(ViewKind.CRISIS, text)))
        advice = interim_advice_text(self.core.pack, verdict.red_flags) if verdict.red_flags else None
        if advice:
            notices.append((f"interim:{message_id}", PatientView(ViewKind.NOTICE, advice)))
        if not notices:
            return []
        claimed = await self.db.run(lambda conn: self.core.outbox.enqueue(
            conn, [effects.patient_notice(key, conv, view) for key, view in notices]))
        await self.core.outbox.apply(claimed)
        if claimed and verdict.possible_crisis and not verdict.crisis:  # the held card (high priority) says why
            log.warning("possible crisis on message %s (conversation %s): check-in sent", message_id, conv.id)
        sent = {c.effect.key for c in claimed}
        return [view for key, view in notices if f"notice:{key}" in sent]

    async def hold_reason(self, conversation_id: int) -> str | None:
        """Why replies in this conversation are held: an open crisis case (and who has it)."""
        return hold_reason_text(await self.db.run(lambda conn: conversation_case(conn, conversation_id), write=False))

    async def realert_due(self) -> int:
        """Alert again about open cases nobody has taken within ``safety.crisis_realert_minutes``
        of the last alert; returns how many. Stored, so a restart neither repeats nor forgets one."""
        minutes = self.core.settings.safety.crisis_realert_minutes
        if not minutes:
            return 0
        cutoff = now() - minutes * 60
        rows = await self.db.fetchall(
            "SELECT id, realerts FROM incidents WHERE kind = 'crisis' AND resolved_at IS NULL AND taken_by IS NULL"
            " AND COALESCE(alerted_at, created_at) <= ?", (cutoff,))
        platforms = list(self.core.platforms)
        claimed: list[Any] = []
        for row in rows:
            stage = f"again{row['realerts'] + 1}"

            def mark(conn: Any, case_id: int = row["id"], stage: str = stage) -> Any:
                won = conn.execute("UPDATE incidents SET alerted_at = ?, realerts = realerts + 1 WHERE id = ?"
                                   " AND COALESCE(alerted_at, created_at) <= ?", (now(), case_id, cutoff)).rowcount
                return self.core.outbox.enqueue(conn, [effects.crisis_alert(case_id, p, stage) for p in platforms]) if won else []

            claimed += await self.db.run(mark)
            log.warning("crisis case %s: nobody has acted; alerting again", row["id"])
        await self.core.outbox.apply(claimed)
        return len(rows)

    # ------------------------------------------------------------------ delivery

    async def deliver(self, incident_id: int, conv: ConversationRef, view: PatientView, platform: Platform) -> list[str]:
        """Post the crisis resources by the first route that works and record the outcome on the
        case. Raises the last refusal when no route worked (the outbox tries again later)."""
        routes = ["conversation", *[r for r in getattr(platform, "crisis_routes", lambda c: [])(conv)
                                    if r in CRISIS_ROUTES[1:]]]
        errors: list[str] = []
        last: BaseException | None = None
        redact = self.core.settings.redact
        for route in routes:
            try:
                if route == "conversation":
                    ids = await platform.send_to_patient(conv, view)
                else:
                    ids = await platform.send_via(conv, view, route)  # type: ignore[attr-defined]
            except Exception as exc:  # every refusal is recorded; the next route is tried
                last = exc
                errors.append(f"{route}: {redact(describe_error(platform, exc))}")
                log.warning("crisis case %s: the resources could not be posted: %s", incident_id, errors[-1])
                continue
            before = await self.db.fetchval("SELECT delivery FROM incidents WHERE id = ?", (incident_id,))
            await self.db.execute(
                "UPDATE incidents SET delivery = 'delivered', delivery_route = ?, delivery_error = ? WHERE id = ?",
                (route, "; ".join(errors) or None, incident_id))
            if route != "conversation":
                log.warning("crisis case %s: the resources reached the patient %s", incident_id, ROUTE_WORDS[route])
            if before == "failed":  # moderators were told we could not reach them: tell them it worked now
                await self.core.alert_moderators(
                    f"Crisis case #{incident_id}: the crisis resources have now reached the patient "
                    f"{ROUTE_WORDS[route]} (conversation {conv.id} on {conv.platform}).", key=f"crisis-reached:{incident_id}")
            return ids
        await self.db.execute("UPDATE incidents SET delivery = 'failed', delivery_error = ? WHERE id = ?",
                              ("; ".join(errors)[:1000], incident_id))
        log.error("crisis case %s: could NOT reach the patient (%s)", incident_id, "; ".join(errors))
        assert last is not None
        raise last

    # ------------------------------------------------------------------ the alert

    async def link(self, incident_id: int) -> str | None:
        """A link to the conversation for moderators (jump URL, permalink, console), kept on the case."""
        row = await self.db.fetchone(
            "SELECT i.link, m.platform_message_id, c.id AS conversation_id, c.platform, c.channel_id, c.thread_id,"
            " p.platform_user_id FROM incidents i JOIN conversations c ON c.id = i.conversation_id"
            " JOIN patients p ON p.id = c.patient_id LEFT JOIN messages m ON m.id = i.message_id WHERE i.id = ?",
            (incident_id,))
        if row is None:
            return None
        if row["link"]:
            return row["link"]
        link = None
        platform = self.core.platforms.get(row["platform"])
        make = getattr(platform, "conversation_link", None)
        if make is not None:
            conv = ConversationRef(row["conversation_id"], row["platform"], row["channel_id"], row["thread_id"],
                                   row["platform_user_id"])
            try:
                link = await make(conv, row["platform_message_id"])
            except Exception as exc:  # a link is a convenience: the alert goes out without it
                log.warning("crisis case %s: no link to the conversation (%s)", incident_id, exc)
        if link is None and self.core.settings.local.public_url:
            link = f"{self.core.settings.local.public_url.rstrip('/')}/#case-{incident_id}"
        if link:
            await self.db.execute("UPDATE incidents SET link = ? WHERE id = ?", (link, incident_id))
        return link

    async def alert_text(self, incident_id: int) -> str | None:
        """The moderators' alert for a case, from what is recorded now (None: the case is gone)."""
        row = await self.db.fetchone(
            "SELECT i.*, c.platform FROM incidents i LEFT JOIN conversations c ON c.id = i.conversation_id"
            " WHERE i.id = ?", (incident_id,))
        if row is None:
            return None
        where = f"conversation {row['conversation_id']} on {row['platform']}" if row["platform"] else row["detail"]
        if row["delivery"] == "delivered" and row["delivery_route"] == "conversation":
            delivery = "The patient was given crisis resources in their conversation."
        elif row["delivery"] == "delivered":
            delivery = (f"The crisis resources could not be posted in the conversation ({row['delivery_error']}); "
                        f"they reached the patient {ROUTE_WORDS.get(row['delivery_route'], row['delivery_route'])} instead.")
        elif row["delivery"] == "failed":
            delivery = (f"We could NOT reach the patient: the crisis resources were not delivered "
                        f"({row['delivery_error']}). Please contact them another way now; delivery is being retried.")
        else:
            delivery = "Delivery of the crisis resources to the patient is not confirmed yet."
        link = await self.link(incident_id)
        again = ""
        if row["realerts"]:
            again = f"NOBODY has acted on it for {age_text(now() - row['created_at'])}. "
        return " ".join([
            f"{again}Crisis case #{incident_id} ({where}).", delivery,
            f"Conversation: {link}" if link else "",
            "Please look at it now. Later messages in this conversation are held for a person.",
            f"Take it over to write to the patient yourself: case take {incident_id} (then case reply {incident_id} …,"
            f" case resolve {incident_id} …).",
        ]).replace("  ", " ").strip()


def conversation_case(conn: Any, conversation_id: int) -> Any:
    """The open crisis case of a conversation, if any (inside the caller's read)."""
    return conn.execute(
        "SELECT id, taken_by FROM incidents WHERE kind = 'crisis' AND resolved_at IS NULL AND conversation_id = ?"
        " ORDER BY id", (conversation_id,)).fetchone()


def hold_reason_text(case: Any) -> str | None:
    """:meth:`CrisisCases.hold_reason` from the case row (None: no open case)."""
    if case is None:
        return None
    who = f"taken over by {case['taken_by']}" if case["taken_by"] else "nobody has taken it yet"
    return f"crisis case #{case['id']} is open in this conversation ({who})"
