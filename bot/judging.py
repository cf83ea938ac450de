"""The judge's background worker: every stored reply gets a first reading off the answering path.

The core stores a reply with its review item and delivers it; nothing there waits for the
judge. This worker claims unjudged pending items from the database (``reviewers.judge``), asks
the judge model, and records the verdict together with an update of the item's review card on
every platform (outbox effects, one transaction), so a crash between the two loses neither.
A failed attempt (timeout, HTTP error, malformed verdict) is logged and retried later with a
doubling wait; after ``judge.max_attempts`` the card says "Judge unavailable". A patient never
waits for the judge and a reviewer is never blocked by it: it is a worker of its own.

The core wakes it when a new item is stored; it also looks every ``POLL_S`` seconds, so items
left by a crash or a restart are judged too, and claims by a dead process are retaken after
``stale_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sqlite3
from typing import TYPE_CHECKING, Any

from bot import effects, metrics
from reviewers import judge as judge_table
from reviewers.judge import Judge, JudgeUnavailable, Scored

if TYPE_CHECKING:
    from bot.service import Service

log = logging.getLogger(__name__)

POLL_S = 30.0  # a look for work even without a wake-up (restart leftovers, retries coming due)
STOP_WAIT_S = 5.0


class JudgeWorker:
    def __init__(self, service: "Service", judge: Judge | None = None):
        cfg = service.settings.judge
        self.service = service
        self.settings = cfg
        self.judge = judge or Judge(cfg, service.pack, default_model=service.settings.inference.base_model,
                                    reasoning_models=service.settings.generation.reasoning_models)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.stale_s = cfg.timeout_s * 2 + 60.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[Any] | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self.work_forever(), name="judge")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # A request in flight is abandoned; its claim is given back below.
            await asyncio.wait({self._task}, timeout=STOP_WAIT_S)
            self._task = None
        with contextlib.suppress(Exception):  # the database may already be closing
            await judge_table.release(self.service.db, self.owner)
        await self.judge.close()

    async def run_due(self) -> int:
        """Judge everything due now, ``judge.concurrency`` at a time; returns how many were tried."""
        tried = 0
        while True:
            items = await judge_table.claim_due(self.service.db, self.owner, self.settings.concurrency, self.stale_s)
            if not items:
                return tried
            await asyncio.gather(*(self._judge_one(item_id) for item_id in items))
            tried += len(items)

    async def work_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.run_due()
                due = await judge_table.next_due_in(self.service.db)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("judge worker pass failed")
                due = None
            timeout = POLL_S if due is None else min(POLL_S, due)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.05, timeout))

    async def _judge_one(self, item_id: int) -> None:
        item = await self.service.reviews.item(item_id)
        if item is None:
            return  # forgotten meanwhile; its verdict row went with it
        try:
            scored: Scored | None = await self.judge.score(item["patient_text"], item["reply_text"])
            error = ""
        except JudgeUnavailable as exc:
            scored, error = None, str(exc)
            log.warning("judge: no verdict for review item %s: %s", item_id, error)
        except Exception as exc:  # never let one item stop the worker
            scored, error = None, f"{type(exc).__name__}"
            log.exception("judge: review item %s failed", item_id)
        core = self.service.core
        platforms = core.card_platforms()
        cfg = self.settings

        def record(conn: sqlite3.Connection) -> tuple[str | None, list[Any]]:
            if scored is not None:
                status = "done" if judge_table.record_verdict(conn, item_id, self.owner, scored) else None
            else:
                status = judge_table.record_failure(conn, item_id, self.owner, error, max_attempts=cfg.max_attempts,
                                                    retry_base_s=cfg.retry_base_s)
            if status not in ("done", "unavailable"):
                return status, []
            # The card shows the outcome on every platform (an edit; cards not posted are left alone).
            return status, core.outbox.enqueue(conn, [effects.review_card(item_id, name, "judge") for name in platforms])

        status, claimed = await self.service.db.run(record)
        if status is not None:
            metrics.JUDGE_VERDICTS.labels(outcome=status if scored is None else "done").inc()
        if scored is not None and status == "done":
            v = scored.verdict
            log.info("judge: review item %s scored %d/%d/%d in %.0f ms", item_id, v.accuracy, v.appropriateness,
                     v.empathy, scored.latency_ms)
        await core.outbox.apply(claimed)
