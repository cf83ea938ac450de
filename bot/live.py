"""Live updates inside one process: job progress, new review items and alerts, pushed to
whoever listens (the console's Server-Sent Events stream, a chat platform's progress message).

One :class:`Hub` per database (``hub_for(db)``): everything that changes a job row, posts a
review card or raises an alert for that database publishes here, so a test running two
services in one process never mixes their events. Publishing never blocks and never fails the
publisher: a listener that does not keep up loses its oldest events, and every event carries
the whole state it reports (a job's status, progress text and fraction), so the next one
repairs a gap. The database stays the source of truth; this is only the doorbell.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from typing import Any, Iterator

QUEUE_SIZE = 200


class Hub:
    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[tuple[str, dict[str, Any]]]] = set()
        self.jobs: dict[int, dict[str, Any]] = {}  # the last state published for each job

    def publish(self, event: str, data: dict[str, Any]) -> None:
        if event == "job":
            data = {**self.jobs.get(int(data["id"]), {}), **data, "at": time.time()}
            self.jobs[int(data["id"])] = data
        for queue in list(self._queues):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait((event, data))

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[tuple[str, dict[str, Any]]]]:
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    @property
    def listeners(self) -> int:
        return len(self._queues)


_hubs: "weakref.WeakKeyDictionary[Any, Hub]" = weakref.WeakKeyDictionary()


def hub_for(owner: Any) -> Hub:
    """The hub of a database (or any object standing for one service)."""
    hub = _hubs.get(owner)
    if hub is None:
        hub = _hubs[owner] = Hub()
    return hub


def progress_bar(fraction: float | None, width: int = 20) -> str:
    """``▓▓▓▓▓░░░░░ 50%`` for chat platforms (the console draws a real bar)."""
    if fraction is None:
        return ""
    fraction = min(1.0, max(0.0, float(fraction)))
    done = round(fraction * width)
    return "▓" * done + "░" * (width - done) + f" {fraction:.0%}"


JOB_NAMES = {"retrain": "Retraining job", "generate": "Generation job"}


def job_line(job: dict[str, Any], state: dict[str, Any] | None = None) -> str:
    """One job's state as one progress message: name, status, a bar while it runs, the
    progress text, and the error when it failed."""
    state = state or {}
    status = job["status"]
    name = JOB_NAMES.get(job.get("kind") or "", "Job")
    text = job.get("progress") or state.get("progress") or ""
    line = f"{name} #{job['id']}: {status}"
    fraction = state.get("fraction")
    if status == "running" and fraction is not None:
        line += f"\n{state.get('phase') or 'progress'}: {progress_bar(fraction)}"
    if text:
        line += f"\n{text}"
    if status == "failed" and job.get("error"):
        line += f"\nError: {str(job['error'])[:1500]}"
    return line
