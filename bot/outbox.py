"""The transactional outbox: what must follow a decision, recorded with the decision itself.

A decision (a reviewer closing an item, a new reply, a crisis, an expiry) changes rows in the
database and has effects outside it or in other tables: the patient's view on a platform, a
review card, a dataset example, a moderator alert. Writing the decision and one ``outbox`` row
per effect in the same transaction makes them one recoverable unit: a crash after the commit
loses nothing, because the rows say what is still to do.

Each row is applied by exactly one applier at a time, chosen by compare-and-set on ``status``:

* the code that made the rows claims them at birth (``status='applying'`` with this process's
  owner token) and applies them at once, for latency;
* a worker applies rows that are ``pending`` and due (after a failure, with exponential backoff,
  or left by a crash), and on start takes back rows that a dead process had claimed.

Appliers are idempotent (a view is an edit of the stored message ids, a card update is an
edit, a dataset example is keyed by its review item), so applying again after a crash in the
middle is safe. Nothing is ever given up: an alert or a review card that nobody saw is a lost
alert. A row that has failed ``max_attempts`` times is logged at ERROR once and counted as
*failing* in ``/status`` and the metrics, and is retried every ``retry_max_s`` until it is done
(a moderator restoring a permission, a platform coming back, a fix deployed: the next attempt
posts it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from bot.redact import redact
from bot.storage import Database, dumps, now

log = logging.getLogger(__name__)


class NotConnected(Exception):
    """The effect's platform is not connected now; retried soon, without counting as a failure."""


@dataclass(frozen=True)
class Effect:
    kind: str  # patient_view | review_card | dataset_example | alert | patient_notice
    key: str  # idempotency key: the same effect is recorded once
    payload: dict[str, Any]
    platform: str | None = None
    target: str | None = None  # effects on one target are applied one at a time (e.g. one reply's message)


@dataclass(frozen=True)
class Claimed:
    id: int
    effect: Effect


Applier = Callable[[Effect], Awaitable[None]]


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Outbox:
    def __init__(
        self,
        db: Database,
        apply: Applier,
        *,
        retry_base_s: float = 5.0,
        retry_max_s: float = 3600.0,
        max_attempts: int = 12,
        stale_s: float = 300.0,
        not_connected_retry_s: float = 5.0,
        redact: Callable[[str], str] = redact,
    ):
        self.db = db
        self._redact = redact  # a platform's error may quote a token; last_error is stored and shown
        self._apply = apply
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.max_attempts = max_attempts
        self.stale_s = stale_s
        self.not_connected_retry_s = not_connected_retry_s
        self.owner = _owner()
        # One lock per target (a card, a patient's reply) while effects on it are being applied:
        # created on demand and dropped when nobody holds or waits for it, so a long-running
        # service does not keep one per card it ever touched.
        self._target_locks: dict[str, asyncio.Lock] = {}
        self._target_users: dict[str, int] = defaultdict(int)
        self._wake = asyncio.Event()
        self._ready_platforms: set[str] = set()

    # ------------------------------------------------------------------ recording (inside a transaction)

    def enqueue(self, conn: sqlite3.Connection, effects: Iterable[Effect], *, claim: bool = True) -> list[Claimed]:
        """Record effects in the caller's transaction. ``claim``: this process applies them at once
        (call :meth:`apply` after the commit); otherwise the worker will. An effect whose key is
        already recorded is skipped: someone has it."""
        t = now()
        status, owner = ("applying", self.owner) if claim else ("pending", None)
        claimed: list[Claimed] = []
        for effect in effects:
            row = conn.execute(
                "INSERT INTO outbox (kind, platform, target, idempotency_key, payload, status, claimed_by, claimed_at,"
                " next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
                (effect.kind, effect.platform, effect.target, effect.key, dumps(effect.payload), status, owner,
                 t if claim else None, t, t, t),
            ).fetchall()
            if row and claim:
                claimed.append(Claimed(int(row[0][0]), effect))
        return claimed

    # ------------------------------------------------------------------ applying

    async def apply(self, claimed: list[Claimed]) -> int:
        """Apply effects this process claimed; returns how many are done. Failures are rescheduled."""
        if not claimed:
            return 0
        results: list[tuple[int, BaseException | None]] = []
        try:
            for item in claimed:
                results.append((item.id, await self._apply_one(item.effect)))
        finally:
            done_ids = {effect_id for effect_id, _ in results}
            # Cancelled midway: what was not tried goes back to the worker.
            results += [(item.id, _Interrupted()) for item in claimed if item.id not in done_ids]
            await self._finish(results)
        return sum(1 for _, error in results if error is None)

    async def _apply_one(self, effect: Effect) -> BaseException | None:
        target = effect.target
        lock = self._target_locks.setdefault(target, asyncio.Lock()) if target else None
        if target:
            self._target_users[target] += 1
        try:
            if lock is None:
                await self._apply(effect)
            else:
                async with lock:
                    await self._apply(effect)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure is recorded on the row and retried
            if not isinstance(exc, NotConnected):
                log.warning("effect %s (%s) failed: %s", effect.key, effect.kind, exc)
            return exc
        finally:
            if target:
                self._target_users[target] -= 1
                if not self._target_users[target]:  # nobody holds or waits for it
                    del self._target_users[target], self._target_locks[target]
        return None

    async def _finish(self, results: list[tuple[int, BaseException | None]]) -> None:
        t = now()
        done = [effect_id for effect_id, error in results if error is None]
        failed = [(effect_id, error) for effect_id, error in results if error is not None]

        def finish(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            if done:
                conn.execute(
                    f"UPDATE outbox SET status = 'done', claimed_by = NULL, last_error = NULL, updated_at = ?"
                    f" WHERE id IN ({', '.join('?' * len(done))})", (t, *done))
            failing: list[tuple[int, str]] = []
            for effect_id, error in failed:
                (attempts, key) = conn.execute("SELECT attempts, idempotency_key FROM outbox WHERE id = ?",
                                               (effect_id,)).fetchone()
                message = self._redact(f"{type(error).__name__}: {error}")[:500]
                if isinstance(error, (NotConnected, _Interrupted)):
                    delay, counted = self.not_connected_retry_s, attempts
                else:
                    counted = attempts + 1
                    delay = min(self.retry_max_s, self.retry_base_s * 2 ** (counted - 1))
                conn.execute(
                    "UPDATE outbox SET status = 'pending', attempts = ?, next_attempt_at = ?, last_error = ?,"
                    " claimed_by = NULL, updated_at = ? WHERE id = ?",
                    (counted, t + delay, message, t, effect_id),
                )
                if counted == self.max_attempts and counted != attempts:
                    failing.append((effect_id, f"{key}: {message}"))
            return failing

        try:
            failing = await self.db.run(finish, here=True)
        except Exception:  # the database is closing; rows still claimed are taken back on the next start
            log.exception("recording the outcome of %d effect(s) failed", len(results))
            return
        for effect_id, detail in failing:
            log.error("effect %s still failing after %d attempts; retried every %d s until it is done: %s",
                      effect_id, self.max_attempts, int(self.retry_max_s), detail)
        if failed:
            self._wake.set()

    async def run_due(self, limit: int = 100) -> int:
        """Claim and apply due pending effects (and ones a dead process had claimed); returns how many are done."""
        t = now()
        ready = sorted(self._ready_platforms)
        self._ready_platforms.clear()
        stale = t - self.stale_s

        def claim(conn: sqlite3.Connection) -> list[Any]:
            if ready:  # a platform just connected: what waited for it is due now
                conn.execute(
                    f"UPDATE outbox SET next_attempt_at = ? WHERE status = 'pending' AND platform IN"
                    f" ({', '.join('?' * len(ready))})", (t, *ready))
            return conn.execute(
                "UPDATE outbox SET status = 'applying', claimed_by = ?, claimed_at = ?, updated_at = ?"
                " WHERE id IN (SELECT id FROM outbox WHERE (status = 'pending' AND next_attempt_at <= ?)"
                " OR (status = 'applying' AND claimed_by != ? AND claimed_at < ?) ORDER BY id LIMIT ?)"
                " RETURNING id, kind, platform, target, idempotency_key, payload",
                (self.owner, t, t, t, self.owner, stale, limit),
            ).fetchall()

        rows = await self.db.run(claim)
        claimed = [
            Claimed(row["id"], Effect(row["kind"], row["idempotency_key"], json.loads(row["payload"]),
                                      row["platform"], row["target"]))
            for row in sorted(rows, key=lambda r: r["id"])
        ]
        return await self.apply(claimed)

    async def recover(self) -> int:
        """On start: take back effects claimed by a process of this host that is gone, then apply
        everything due. Returns how many were done."""
        # Rows an older version gave up on ('dead') are retried like any other failing row.
        await self.db.execute("UPDATE outbox SET status = 'pending', next_attempt_at = ? WHERE status = 'dead'", (now(),))
        rows = await self.db.fetchall(
            "SELECT DISTINCT claimed_by FROM outbox WHERE status = 'applying' AND claimed_by IS NOT NULL")
        gone = [row[0] for row in rows if row[0] != self.owner and _owner_gone(row[0])]
        if gone:
            await self.db.execute(
                f"UPDATE outbox SET status = 'pending', claimed_by = NULL, next_attempt_at = ? WHERE status = 'applying'"
                f" AND claimed_by IN ({', '.join('?' * len(gone))})", (now(), *gone))
        done = 0
        while True:
            applied = await self.run_due()
            done += applied
            if applied == 0:
                return done

    # ------------------------------------------------------------------ the worker

    def platform_ready(self, name: str) -> None:
        """A platform connected: effects waiting for it are retried at once."""
        self._ready_platforms.add(name)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def next_due_in(self) -> float | None:
        due = await self.db.fetchval("SELECT MIN(next_attempt_at) FROM outbox WHERE status = 'pending'")
        return None if due is None else max(0.0, due - now())

    async def work_forever(self, idle_s: float = 5.0) -> None:
        """Apply due effects until cancelled; sleeps until the next is due (or a wake-up)."""
        while True:
            try:
                while await self.run_due():
                    pass
                wait = await self.next_due_in()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox worker pass failed")
                wait = idle_s
            self._wake.clear()
            timeout = idle_s if wait is None else min(idle_s, wait)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.01, timeout))
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------------ figures

    async def stats(self) -> dict[str, Any]:
        """Effects not done (with the oldest one's age in seconds), and how many of them are failing
        (``max_attempts`` failures or more, still retried)."""
        rows = await self.db.fetchall(
            "SELECT status, COUNT(*), MIN(created_at) FROM outbox WHERE status != 'done' GROUP BY status")
        failing = await self.db.fetchval(
            "SELECT COUNT(*) FROM outbox WHERE status != 'done' AND attempts >= ?", (self.max_attempts,))
        by_status = {row[0]: (row[1], row[2]) for row in rows}
        t = now()
        pending, oldest = by_status.get("pending", (0, None))
        applying, oldest_applying = by_status.get("applying", (0, None))
        waiting_since = min([x for x in (oldest, oldest_applying) if x is not None], default=None)
        return {
            "pending": pending + applying,
            "oldest_pending_s": None if waiting_since is None else round(t - waiting_since, 1),
            "failing": failing,
        }

    async def prune(self, older_than_s: float = 7 * 24 * 3600) -> int:
        """Forget effects done long ago (their keys only guard against a repeat within that time)."""
        return await self.db.run(lambda conn: conn.execute(
            "DELETE FROM outbox WHERE status = 'done' AND updated_at < ?", (now() - older_than_s,)).rowcount)


class _Interrupted(Exception):
    """The applier was cancelled before trying this effect."""

    def __str__(self) -> str:
        return "interrupted before it was applied"


def _owner_gone(owner: str) -> bool:
    """Whether the process that claimed effects as ``owner`` has certainly ended."""
    host, _, rest = owner.partition(":")
    pid_text, _, _token = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another machine: only the stale deadline can tell
    pid = int(pid_text)
    if pid == os.getpid():
        return True  # our pid, another token: an earlier life of this process id (e.g. pid 1 in a container)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
