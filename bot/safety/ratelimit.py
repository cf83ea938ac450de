"""Per-patient rate limiting and fair access to the model.

Two mechanisms, both keyed by patient (``platform:user_id``):

* :class:`RateLimiter` — a sliding window: at most ``max_messages`` within ``window_s``
  seconds. Messages over the limit are stored but not sent to the model, and the patient is
  told politely (at most once per window, so a flood does not produce a flood of notices).
* :class:`FairGate` — at most ``per_key`` model calls in flight for one patient, and, when a
  global limit is set, free slots go round-robin to the patients who are waiting. A patient
  who sends fifty messages at once occupies one slot; everyone else's messages are answered
  beside theirs instead of behind them.

Both are in memory and per process; the state is small (one deque per active patient) and
idle patients are pruned.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable


class RateLimiter:
    def __init__(self, max_messages: int, window_s: float, clock: Callable[[], float] = time.monotonic):
        if max_messages < 1 or window_s <= 0:
            raise ValueError("max_messages must be >= 1 and window_s > 0")
        self.max_messages = max_messages
        self.window_s = window_s
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._notified: dict[str, float] = {}
        self._last_prune = clock()

    def _window(self, key: str, t: float) -> deque[float]:
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= t - self.window_s:
            hits.popleft()
        return hits

    def hit(self, key: str) -> bool:
        """Record one message; True if it is within the limit."""
        t = self.clock()
        self._prune(t)
        hits = self._window(key, t)
        if len(hits) >= self.max_messages:
            return False
        hits.append(t)
        return True

    def retry_after(self, key: str) -> float:
        """Seconds until the patient may send again (0 when they may now)."""
        t = self.clock()
        hits = self._window(key, t)
        if len(hits) < self.max_messages:
            return 0.0
        return max(0.0, hits[0] + self.window_s - t)

    def notify_due(self, key: str) -> bool:
        """True once per window while a patient is limited: tell them, then stay quiet."""
        t = self.clock()
        last = self._notified.get(key)
        if last is not None and t - last < self.window_s:
            return False
        self._notified[key] = t
        return True

    def forget(self, key: str) -> None:
        self._hits.pop(key, None)
        self._notified.pop(key, None)

    def _prune(self, t: float) -> None:
        if t - self._last_prune < self.window_s:
            return
        self._last_prune = t
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= t - self.window_s]:
            del self._hits[key]
        for key in [k for k, at in self._notified.items() if t - at >= self.window_s]:
            del self._notified[key]

    def __len__(self) -> int:
        return len(self._hits)


class FairGate:
    """Model slots shared fairly between patients.

    ``per_key``: calls one patient may have in flight. ``total``: calls in flight overall
    (None: no global limit, only the per-patient one). Waiters are served round-robin by
    patient, first come first served within one patient.
    """

    def __init__(self, per_key: int = 1, total: int | None = None):
        if per_key < 1 or (total is not None and total < 1):
            raise ValueError("per_key and total must be >= 1")
        self.per_key = per_key
        self.total = total
        self._active: dict[str, int] = {}
        self._active_total = 0
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    def _can_run(self, key: str) -> bool:
        if self._active.get(key, 0) >= self.per_key:
            return False
        return self.total is None or self._active_total < self.total

    def _start(self, key: str) -> None:
        self._active[key] = self._active.get(key, 0) + 1
        self._active_total += 1

    def _wake(self) -> None:
        """Hand free slots to waiting patients, one per patient per round."""
        progressed = True
        while progressed and self._waiting:
            progressed = False
            for key in list(self._waiting):
                queue = self._waiting.get(key)
                if not queue:
                    self._waiting.pop(key, None)
                    continue
                if not self._can_run(key):
                    continue
                future = queue.popleft()
                if not queue:
                    self._waiting.pop(key, None)
                else:
                    self._waiting.move_to_end(key)  # round-robin: this patient goes to the back
                if future.done():  # cancelled while waiting
                    progressed = True
                    continue
                self._start(key)
                future.set_result(None)
                progressed = True
                if self.total is not None and self._active_total >= self.total:
                    return

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        if not self._waiting.get(key) and self._can_run(key) and not (self.total is not None and self._waiting):
            self._start(key)
        else:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(key, deque()).append(future)
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._release(key)  # the slot was handed over just as we were cancelled
                raise
        try:
            yield
        finally:
            self._release(key)

    def _release(self, key: str) -> None:
        count = self._active.get(key, 0) - 1
        if count > 0:
            self._active[key] = count
        else:
            self._active.pop(key, None)
        self._active_total -= 1
        self._wake()

    def in_flight(self, key: str | None = None) -> int:
        return self._active_total if key is None else self._active.get(key, 0)

    def waiting(self, key: str | None = None) -> int:
        if key is None:
            return sum(len(q) for q in self._waiting.values())
        return len(self._waiting.get(key, ()))
