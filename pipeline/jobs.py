"""Long-running jobs (retraining, generation) recorded in the jobs table.

One active job per kind is enforced by a unique partial index, so two requests at the same
moment cannot start two jobs. A job left 'running' by a process that died is marked failed
at the next start instead of looking busy forever."""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass
from typing import Any

from bot import metrics
from bot.live import hub_for
from bot.storage import Database, dumps, now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobRequest:
    job_id: int
    created: bool  # False: a job of this kind was already queued or running
    status: str
    started_at: float | None
    created_at: float


async def request(db: Database, kind: str, requested_by: str, params: dict[str, Any] | None = None) -> JobRequest:
    """Queue a job of ``kind`` unless one is queued or running; ``params`` (e.g. ``{"force":
    true}``) are stored with the job for whoever runs it."""
    try:
        async with db.transaction() as conn:
            cursor = await conn.execute(
                "INSERT INTO jobs (kind, status, requested_by, params, created_at) VALUES (?, 'queued', ?, ?, ?)",
                (kind, requested_by, dumps(params or {}), now()),
            )
            job_id = int(cursor.lastrowid)
        await _publish(db, job_id)
        return JobRequest(job_id, True, "queued", None, now())
    except sqlite3.IntegrityError:
        row = await active(db, kind)
        if row is None:  # finished between our insert and this read: ask again
            return await request(db, kind, requested_by, params)
        return JobRequest(row["id"], False, row["status"], row["started_at"], row["created_at"])


async def active(db: Database, kind: str) -> dict[str, Any] | None:
    row = await db.fetchone(
        "SELECT * FROM jobs WHERE kind = ? AND status IN ('queued', 'running') ORDER BY id DESC LIMIT 1", (kind,)
    )
    return dict(row) if row else None


async def get(db: Database, job_id: int) -> dict[str, Any] | None:
    row = await db.fetchone("SELECT * FROM jobs WHERE id = ?", (job_id,))
    return dict(row) if row else None


async def latest(db: Database, kind: str | None = None) -> dict[str, Any] | None:
    if kind:
        row = await db.fetchone("SELECT * FROM jobs WHERE kind = ? ORDER BY id DESC LIMIT 1", (kind,))
    else:
        row = await db.fetchone("SELECT * FROM jobs ORDER BY id DESC LIMIT 1")
    return dict(row) if row else None


async def start(db: Database, job_id: int, pid: int | None = None) -> None:
    await db.execute(
        "UPDATE jobs SET status = 'running', started_at = ?, pid = ? WHERE id = ?", (now(), pid or os.getpid(), job_id)
    )
    await _publish(db, job_id)


async def progress(db: Database, job_id: int, text: str, fraction: float | None = None, phase: str | None = None) -> None:
    """The job's progress text; ``fraction`` (0–1) of ``phase`` ("training", "evaluating")
    drives the progress bars (console, chat platforms), pushed to listeners (bot/live.py)."""
    await db.execute("UPDATE jobs SET progress = ? WHERE id = ?", (text, job_id))
    await _publish(db, job_id, {"fraction": fraction, "phase": phase})


async def _publish(db: Database, job_id: int, extra: dict[str, Any] | None = None) -> None:
    """Tell live listeners (bot/live.py) the job's whole state now; never fails the job."""
    try:
        row = await get(db, job_id)
        if row is None:
            return
        hub_for(db).publish("job", {
            "id": job_id, "kind": row["kind"], "status": row["status"], "progress": row["progress"] or "",
            "error": row["error"], "started_at": row["started_at"], "finished_at": row["finished_at"],
            **({"fraction": None, "phase": None} if row["status"] not in ("queued", "running") else {}),
            **(extra or {}),
        })
    except Exception:
        log.exception("publishing job %s progress failed", job_id)


async def finish(db: Database, job_id: int, status: str, result: Any = None, error: str | None = None) -> None:
    t = now()
    row = await db.run(lambda conn: conn.execute(
        "UPDATE jobs SET status = ?, result = ?, error = ?, finished_at = ? WHERE id = ? RETURNING kind, started_at",
        (status, dumps(result) if result is not None else None, error, t, job_id),
    ).fetchone())
    if row is not None and row[1] is not None:
        metrics.JOB_SECONDS.labels(kind=row[0], status=status).observe(max(0.0, t - row[1]))
    await _publish(db, job_id)


async def mark_interrupted(db: Database) -> int:
    """Jobs whose process is gone are failed, not running forever."""
    rows = await db.fetchall("SELECT id, pid FROM jobs WHERE status IN ('queued', 'running')")
    failed = 0
    for row in rows:
        if row["pid"] and _alive(row["pid"]) and row["pid"] != os.getpid():
            continue
        await finish(db, row["id"], "failed", error="interrupted: the process running it stopped")
        failed += 1
    if failed:
        log.warning("marked %d interrupted job(s) as failed", failed)
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
