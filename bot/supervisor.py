"""Each chat platform starts, fails and reconnects on its own.

A platform that cannot start (a bad token, an unreachable API) must not take the service down:
the console and the other platforms keep answering. ``PlatformSupervisor`` runs one platform in
its own task:

* a start failure is one log line saying what failed and how to fix it (no traceback); when
  trying again can help (the platform is unreachable) it is retried with backoff, otherwise the
  platform is marked failed;
* a dropped connection is the SDKs' business (discord.py resumes, slack_sdk's Socket Mode client
  reconnects); the health state follows (``connecting`` while they do);
* a connection that ends for good (Discord close code 4004 for a reset token, 4013/4014 for
  intents; Slack ``invalid_auth`` / ``token_revoked`` / ``account_inactive``) is logged at ERROR
  once with the reason, alerted on the other platforms, recorded as an incident and shown in the
  platform's health as ``failed: <reason>``.

The health object (``bot.platform.PlatformHealth``) is created here, before the platform exists,
so ``service.platform_health`` reports a platform that never got as far as connecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from bot.platform import ConnectionState, PlatformHealth, PlatformStartError
from bot.storage import now

if TYPE_CHECKING:
    from bot.service import Service

log = logging.getLogger(__name__)

BACKOFF_S = (2.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(frozen=True)
class ConnectionEnded:
    """Why a running platform's connection ended: ``retryable`` when starting again can help."""

    reason: str
    retryable: bool = False


class Runner(Protocol):
    """What a platform's ``start_*`` function returns once connected."""

    async def wait_closed(self) -> ConnectionEnded: ...

    async def cleanup(self) -> None: ...


StartFn = Callable[[PlatformHealth], Awaitable[Runner]]


class PlatformSupervisor:
    def __init__(self, service: "Service", name: str, start: StartFn, backoff_s: tuple[float, ...] = BACKOFF_S):
        self.service = service
        self.name = name
        self._start = start
        self.backoff_s = backoff_s
        self.health = PlatformHealth()
        self.runner: Runner | None = None
        self.connected = asyncio.Event()  # set each time the platform is connected
        self.finished = asyncio.Event()  # set when the supervisor gave up (failed for good) or stopped
        self._task: asyncio.Task[None] | None = None
        service.platform_health[name] = self.health

    def start(self) -> "PlatformSupervisor":
        self._task = asyncio.create_task(self._run(), name=f"supervise-{self.name}")
        return self

    async def _run(self) -> None:
        attempt = 0
        try:
            while True:
                self.health.set(ConnectionState.CONNECTING, self.health.reason if attempt else "starting")
                try:
                    self.runner = await self._start(self.health)
                except PlatformStartError as exc:
                    if not exc.retryable:
                        await self._failed(f"cannot connect: {exc}", alert_text=f"{self.name} could not start: {exc}")
                        return
                    delay = self.backoff_s[min(attempt, len(self.backoff_s) - 1)]
                    attempt += 1
                    log.warning("%s: cannot connect: %s; trying again in %.0f s", self.name, exc, delay)
                    self.health.set(ConnectionState.CONNECTING, f"{exc}; trying again in {delay:.0f} s")
                    await asyncio.sleep(delay)
                    continue
                except Exception as exc:  # a bug or an unexpected library error: one line, then retry
                    delay = self.backoff_s[min(attempt, len(self.backoff_s) - 1)]
                    attempt += 1
                    log.error("%s: start failed: %s: %s; trying again in %.0f s", self.name,
                              type(exc).__name__, exc, delay)
                    log.debug("%s: start failure detail", self.name, exc_info=exc)
                    self.health.set(ConnectionState.CONNECTING, f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(delay)
                    continue
                attempt = 0
                self.connected.set()
                ended = await self.runner.wait_closed()
                self.connected.clear()
                runner, self.runner = self.runner, None
                with contextlib.suppress(Exception):
                    await runner.cleanup()
                if not ended.retryable:
                    await self._failed(ended.reason, alert_text=f"{self.name} stopped working: {ended.reason}")
                    return
                log.warning("%s: connection ended (%s); connecting again", self.name, ended.reason)
                self.health.set(ConnectionState.CONNECTING, ended.reason)
        finally:
            self.finished.set()

    async def _failed(self, reason: str, alert_text: str) -> None:
        """Log once, mark failed, record an incident and tell the moderators elsewhere."""
        log.error("%s: %s", self.name, reason)
        self.health.set(ConnectionState.FAILED, reason)
        try:
            await self.service.db.execute(
                "INSERT INTO incidents (kind, detail, created_at) VALUES ('platform_failed', ?, ?)",
                (f"{self.name}: {reason}", now()),
            )
        except Exception:
            log.exception("%s: recording the failure failed", self.name)
        await self.service.core.alert_moderators(alert_text, urgent=True, skip={self.name})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.runner is not None:
            runner, self.runner = self.runner, None
            try:
                await runner.cleanup()
            except Exception:
                log.exception("%s: shutting down failed", self.name)

    def __repr__(self) -> str:
        return f"PlatformSupervisor({self.name}: {self.health.describe()})"


def supervise(service: "Service", name: str, start: StartFn, **options: Any) -> PlatformSupervisor:
    """Start ``name`` under a supervisor kept by the service (stopped by ``service.stop()``)."""
    supervisor = PlatformSupervisor(service, name, start, **options).start()
    service.supervisors.append(supervisor)
    return supervisor
