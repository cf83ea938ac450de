"""Review items, decisions, quorum and the audit trail, on the shared database."""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from typing import Any, Callable, Sequence

from bot.storage import Database, dumps, now
from reviewers.models import (
    REVIEWER_ROLE,
    Action,
    Actor,
    DecisionOutcome,
    PermissionDenied,
    Resolution,
    ReviewError,
    ReviewState,
    Rubric,
    scores_needed,
)

log = logging.getLogger(__name__)

MAX_EDIT_CHARS = 20_000  # the longest edit a platform's form carries (Discord: five inputs of 4,000)

# Called inside a decision's (or an expiry's) transaction: the caller records what must follow.
Effects = Callable[[sqlite3.Connection, DecisionOutcome], None]


class ReviewService:
    """Decides nothing about platforms: it records who decided what and when an item closes.

    Quorum rule (:func:`resolve`, the one place it lives): approve and edit both *accept* the
    reply, reject does not. An item closes once at least ``quorum`` distinct reviewers have
    decided **and** one side has a strict majority: more rejects than accepts → ``rejected``;
    more accepts than rejects → ``edited`` when any accepting reviewer edited (the latest edit's
    text wins), else ``approved``. A tie (say one approve and one reject at quorum 2) keeps the
    item pending and asks for one more reviewer; the card says so.

    ``decide`` and ``expire_old`` take an optional ``effects`` callback, called inside the same
    transaction as the state change, so that the caller can record what must follow (the
    core's outbox: the patient's view, the dataset, the cards) atomically with the decision."""

    def __init__(self, db: Database, quorum: int = 1):
        self.db = db
        self.quorum = quorum

    async def audit(self, item_id: int | None, actor: str, action: str, detail: str = "") -> None:
        await self.db.execute(
            "INSERT INTO review_audit (item_id, actor, action, detail, created_at) VALUES (?, ?, ?, ?, ?)",
            (item_id, actor, action, detail, now()),
        )

    async def decide(
        self,
        item_id: int,
        actor: Actor,
        action: Action | str,
        edited_text: str | None = None,
        rubric: Rubric | None = None,
        comment: str | None = None,
        effects: Effects | None = None,
    ) -> DecisionOutcome:
        """Record one reviewer's decision; idempotent for repeats and closed items. Approving or
        editing without all three rubric scores is refused (:func:`reviewers.models.scores_needed`).

        ``effects(conn, outcome)`` runs in the decision's transaction when a decision was recorded."""
        action = Action(action)
        rubric = rubric or Rubric()
        if not actor.has(REVIEWER_ROLE):
            await self.audit(item_id, actor.label, "refused", f"{action.value}: lacks the {REVIEWER_ROLE} role")
            log.warning("review decision refused: %s lacks the reviewer role (item %s)", actor.label, item_id)
            raise PermissionDenied("Only members with the reviewer role can review replies.")
        if action is Action.EDIT:
            edited_text = (edited_text or "").strip()
            if not edited_text:
                raise ReviewError("An edit needs the corrected reply text; it was empty.")
            if len(edited_text) > MAX_EDIT_CHARS:
                raise ReviewError(f"The edited reply is {len(edited_text)} characters; the limit is {MAX_EDIT_CHARS}.")
        else:
            edited_text = None
        quorum = self.quorum

        def record(conn: sqlite3.Connection) -> DecisionOutcome:
            t = now()
            row = conn.execute("SELECT state, final_text FROM review_items WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                raise ReviewError(f"Review item {item_id} does not exist.")
            state = ReviewState(row["state"])
            if state.closed:
                conn.execute(
                    "INSERT INTO review_audit (item_id, actor, action, detail, created_at) VALUES (?, ?, 'ignored', ?, ?)",
                    (item_id, actor.label, f"{action.value} on closed item ({state.value})", t),
                )
                return DecisionOutcome(item_id, state, False, False, row["final_text"],
                                       f"This reply was already {state.value}; nothing changed.")
            repeat = conn.execute(
                "SELECT 1 FROM review_decisions WHERE item_id = ? AND reviewer_platform = ? AND reviewer_id = ?",
                (item_id, actor.platform, actor.user_id)).fetchone()
            if repeat is not None:
                return DecisionOutcome(item_id, state, False, False, None,
                                       "You have already reviewed this reply; your first decision stands.")
            unscored = scores_needed(action, rubric)
            if unscored:  # after the closed/repeat answers, which matter more to the reviewer
                log.info("review decision refused: %s %s item %s without rubric scores", actor.label, action.value,
                         item_id)
                raise ReviewError(unscored)
            cursor = conn.execute(
                "INSERT OR IGNORE INTO review_decisions (item_id, reviewer_platform, reviewer_id, reviewer_name,"
                " action, edited_text, accuracy, appropriateness, empathy, comment, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (item_id, actor.platform, actor.user_id, actor.display_name, action.value, edited_text,
                 rubric.accuracy, rubric.appropriateness, rubric.empathy, comment, t),
            )
            if cursor.rowcount == 0:
                return DecisionOutcome(item_id, state, False, False, None,
                                       "You have already reviewed this reply; your first decision stands.")
            conn.execute(
                "INSERT INTO review_audit (item_id, actor, action, detail, created_at) VALUES (?, ?, ?, ?, ?)",
                (item_id, actor.label, action.value, dumps(rubric.__dict__), t),
            )
            decisions = conn.execute(
                "SELECT action, edited_text FROM review_decisions WHERE item_id = ? ORDER BY id", (item_id,)
            ).fetchall()
            resolution = resolve(decisions, quorum)
            if resolution.state is ReviewState.PENDING:
                if resolution.tie:
                    outcome = DecisionOutcome(
                        item_id, state, True, False, None,
                        f"Recorded. Reviewers disagree ({resolution.accept} accept, {resolution.reject} reject): "
                        "one more review is needed.", tie=True)
                else:
                    outcome = DecisionOutcome(item_id, state, True, False, None,
                                              f"Recorded ({len(decisions)} of {quorum} reviews needed).")
            else:
                final_text = resolution.final_text
                if final_text is None and resolution.state is ReviewState.APPROVED:
                    final_text = conn.execute(
                        "SELECT r.text FROM replies r JOIN review_items i ON i.reply_id = r.id WHERE i.id = ?", (item_id,)
                    ).fetchone()[0]
                conn.execute(
                    "UPDATE review_items SET state = ?, final_text = ?, closed_at = ? WHERE id = ?",
                    (resolution.state.value, final_text, t, item_id),
                )
                conn.execute(
                    "INSERT INTO review_audit (item_id, actor, action, detail, created_at)"
                    " VALUES (?, 'system', 'closed', ?, ?)",
                    (item_id, resolution.state.value, t),
                )
                outcome = DecisionOutcome(item_id, resolution.state, True, True, final_text,
                                          f"Recorded: {resolution.state.value}.")
            if effects is not None:
                effects(conn, outcome)
            return outcome

        return await self.db.run(record)

    async def waiting_note(self, item_id: int) -> str | None:
        """What a pending item waits for, for its card (a tie says one more review is needed)."""
        return self.note_for(await self.decisions(item_id))

    def note_for(self, decisions: Sequence[Any]) -> str | None:
        """:meth:`waiting_note` from an item's decision rows (oldest first)."""
        resolution = resolve(decisions, self.quorum)
        if resolution.state is not ReviewState.PENDING:
            return None
        if resolution.tie:
            return "Tie: one more review needed"
        if self.quorum > 1:
            return f"{len(decisions)} of {self.quorum} reviews"
        return None

    async def expire_old(self, older_than_s: float,
                         effects: Callable[[sqlite3.Connection, list[int]], None] | None = None) -> list[int]:
        """Close items nobody decided within ``older_than_s`` as expired; returns their ids.

        ``effects(conn, item_ids)`` runs in the same transaction (the core records the patient
        notices and card updates that must follow)."""

        def expire(conn: sqlite3.Connection) -> list[int]:
            t = now()
            ids = [row[0] for row in conn.execute(
                "UPDATE review_items SET state = 'expired', closed_at = ? WHERE state = 'pending' AND created_at < ?"
                " RETURNING id", (t, t - older_than_s)).fetchall()]
            for item_id in ids:
                conn.execute(
                    "INSERT INTO review_audit (item_id, actor, action, detail, created_at)"
                    " VALUES (?, 'system', 'expired', ?, ?)", (item_id, f"undecided after {older_than_s / 3600:g} h", t))
            if ids and effects is not None:
                effects(conn, ids)
            return ids

        ids = await self.db.run(expire)
        if ids:
            log.warning("%d review item(s) expired undecided", len(ids))
        return ids

    async def pending(self, limit: int = 50) -> list[dict]:
        """Items waiting for a decision, those most needing a person first: high priority (held for
        review first), then any risk flag, then the LLM judge's lowest score (reviewers/judge.py;
        unjudged items after judged ones), then oldest first. The judge only orders the queue."""
        rows = await self.db.fetchall(
            "SELECT i.id AS item_id, i.priority, i.state, i.created_at, r.id AS reply_id, r.text AS reply_text,"
            " r.task, r.risk_flags, r.adapter_version, r.model, m.text AS patient_text,"
            " j.status AS judge_status, j.accuracy AS judge_accuracy, j.appropriateness AS judge_appropriateness,"
            " j.empathy AS judge_empathy, j.reason AS judge_reason, j.error AS judge_error,"
            " CASE WHEN j.status = 'done' THEN MIN(j.accuracy, j.appropriateness, j.empathy) END AS judge_min"
            " FROM review_items i JOIN replies r ON r.id = i.reply_id JOIN messages m ON m.id = r.message_id"
            " LEFT JOIN judge_verdicts j ON j.item_id = i.id"
            " WHERE i.state = 'pending' ORDER BY (i.priority = 'high') DESC, (r.risk_flags NOT IN ('[]', '')) DESC,"
            " judge_min IS NULL, judge_min, i.id LIMIT ?",
            (limit,),
        )
        return [dict(row) for row in rows]

    async def item(self, item_id: int) -> dict | None:
        return await self.db.run(lambda conn: item_row(conn, item_id), write=False)

    async def decisions(self, item_id: int) -> list[dict]:
        return await self.db.run(lambda conn: decision_rows(conn, item_id), write=False)

    async def counts(self) -> dict[str, int]:
        rows = await self.db.fetchall("SELECT state, COUNT(*) FROM review_items GROUP BY state")
        return {row[0]: row[1] for row in rows}


def item_row(conn: sqlite3.Connection, item_id: int) -> dict | None:
    """A review item with its reply and the patient's message (inside the caller's read or
    transaction, so that a card is read in one visit to the database)."""
    row = conn.execute(
        "SELECT i.*, r.text AS reply_text, r.task, r.risk_flags, r.adapter_version, r.conversation_id,"
        " r.delivery, m.text AS patient_text, m.id AS message_id"
        " FROM review_items i JOIN replies r ON r.id = i.reply_id JOIN messages m ON m.id = r.message_id"
        " WHERE i.id = ?",
        (item_id,),
    ).fetchone()
    return dict(row) if row else None


def decision_rows(conn: sqlite3.Connection, item_id: int) -> list[dict]:
    """An item's decisions, oldest first (inside the caller's read or transaction)."""
    return [dict(row) for row in conn.execute("SELECT * FROM review_decisions WHERE item_id = ? ORDER BY id",
                                              (item_id,))]


def insert_review_item(conn: sqlite3.Connection, reply_id: int, priority: str = "normal") -> int:
    """A pending item for a reply, inside the caller's transaction (the one place items are made)."""
    return int(conn.execute(
        "INSERT INTO review_items (reply_id, priority, created_at) VALUES (?, ?, ?)", (reply_id, priority, now())
    ).lastrowid)


def resolve(decisions: Sequence[Any], quorum: int) -> Resolution:
    """The quorum rule (documented on :class:`ReviewService`): rows with ``action`` and
    ``edited_text``, oldest first → closed state, or PENDING (waiting or tied)."""
    votes = Counter(row["action"] for row in decisions)
    reject = votes[Action.REJECT.value]
    accept = votes[Action.APPROVE.value] + votes[Action.EDIT.value]
    if len(decisions) < quorum:
        return Resolution(ReviewState.PENDING, accept=accept, reject=reject)
    if reject > accept:
        return Resolution(ReviewState.REJECTED, accept=accept, reject=reject)
    if accept > reject:
        edits = [row["edited_text"] for row in decisions if row["action"] == Action.EDIT.value]
        if edits:
            return Resolution(ReviewState.EDITED, edits[-1], accept=accept, reject=reject)
        return Resolution(ReviewState.APPROVED, accept=accept, reject=reject)
    return Resolution(ReviewState.PENDING, tie=True, accept=accept, reject=reject)
