"""Throttled, coalescing edits of review cards.

A busy review queue changes cards faster than Discord lets a bot edit messages in one channel
(about five edits per five seconds). Updates are queued per channel and sent at most one per
``interval`` seconds; several updates of the same card that wait in the queue collapse into the
latest one, so a card never shows a stale state and no edit is wasted. discord.py still handles
any 429 that gets through; this keeps us from hitting it in the first place.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Awaitable, Callable, Hashable

log = logging.getLogger(__name__)


class CoalescingThrottle:
    def __init__(self, interval: float, send: Callable[[object], Awaitable[None]]):
        self.interval = interval
        self._send = send
        self._queues: dict[Hashable, OrderedDict[Hashable, object]] = {}
        self._workers: dict[Hashable, asyncio.Task[None]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_sent: dict[Hashable, float] = {}
        self.sent = 0
        self.coalesced = 0

    def put(self, channel: Hashable, key: Hashable, payload: object) -> None:
        queue = self._queues.setdefault(channel, OrderedDict())
        if key in queue:
            self.coalesced += 1
        queue[key] = payload  # keeps its place in line, carries the newest content
        self._idle.clear()
        worker = self._workers.get(channel)
        if worker is None or worker.done():
            self._workers[channel] = asyncio.create_task(self._drain(channel), name=f"discord-card-edits-{channel}")

    async def _drain(self, channel: Hashable) -> None:
        queue = self._queues[channel]
        loop = asyncio.get_running_loop()
        try:
            while queue:
                wait = self._last_sent.get(channel, float("-inf")) + self.interval - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)  # updates arriving meanwhile coalesce
                if not queue:
                    break
                _, payload = queue.popitem(last=False)
                self._last_sent[channel] = loop.time()
                try:
                    await self._send(payload)
                    self.sent += 1
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("editing a review card failed")
        finally:
            self._workers.pop(channel, None)
            if not any(self._queues.values()):
                self._idle.set()

    async def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued edit has been sent."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    async def close(self) -> None:
        for task in list(self._workers.values()):
            task.cancel()
        for task in list(self._workers.values()):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._workers.clear()
