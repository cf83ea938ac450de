"""Liveness and readiness of the running service: what ``/healthz`` and ``/readyz`` answer.

``/healthz`` means the process is up and its event loop answers. ``/readyz`` means the service
can do its job now:

- every configured platform is connected (Discord when its token is set, Slack when its bot
  token is set; the console always is). A platform whose connection ended for good — a reset
  token (Discord close 4004), refused intents (4013/4014), a revoked Slack token — makes the
  service not ready, with the reason;
- the database takes a write (one row in ``service_state``, so a read-only file or a full disk
  shows here, not at the next patient message);
- the model answers, or the degraded mode is on: while no model server answers, patients get
  the outage notice and the crisis resources and their messages are queued (bot.core), so a
  model outage alone does not make the service unready — it is named in the answer
  (``degraded``) and in ``/status``.

The answer is deliberately short (ready or not, and one line per problem): the endpoints are
unauthenticated, so reasons name the part and the kind of failure, never tokens, ids, paths or
patient data.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.platform import CONNECTED, PlatformHealth
from bot.storage import now

if TYPE_CHECKING:
    from bot.service import Service
    from bot.settings import Settings

log = logging.getLogger(__name__)

DB_PROBE_TIMEOUT_S = 5.0
MAX_REASON_CHARS = 200


@dataclass
class Readiness:
    ready: bool
    reasons: list[str] = field(default_factory=list)  # why not ready, one short line each
    degraded: list[str] = field(default_factory=list)  # ready, but running without something

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"status": "ready" if self.ready else "not ready"}
        if self.reasons:
            data["reasons"] = self.reasons
        if self.degraded:
            data["degraded"] = self.degraded
        return data


def configured_platforms(settings: "Settings") -> list[str]:
    """The chat platforms the settings ask for (a token set means: connect)."""
    names = []
    if settings.discord.token is not None:
        names.append("discord")
    if settings.slack.bot_token is not None:
        names.append("slack")
    return names


def platform_health(platform: Any) -> PlatformHealth:
    """A platform's health state (Discord and Slack keep theirs up to date, with the reason when
    the connection ended for good: bot/discord_platform, bot/slack_platform/runner.py); a
    platform that does not report one counts as connected while it is registered with the core."""
    health = getattr(platform, "health", None)
    if callable(health):
        health = health()
    return health if isinstance(health, PlatformHealth) else CONNECTED


def configured_health(service: "Service", name: str) -> PlatformHealth | None:
    """A configured platform's health: its supervisor's (bot/supervisor.py: known from the first
    start attempt on, also when it failed before ever connecting), else the registered platform's."""
    supervised = getattr(service, "platform_health", {}).get(name)
    if supervised is not None:
        return supervised
    platform = service.core.platforms.get(name)
    return None if platform is None else platform_health(platform)


async def database_writable(service: "Service") -> str | None:
    """None when a write commits; else the reason, short."""

    def probe(conn: Any) -> None:
        conn.execute(
            "INSERT INTO service_state (key, value, updated_at) VALUES ('ready_probe', '', ?)"
            " ON CONFLICT(key) DO UPDATE SET updated_at = excluded.updated_at",
            (now(),),
        )

    try:
        await asyncio.wait_for(service.db.run(probe), DB_PROBE_TIMEOUT_S)
    except asyncio.TimeoutError:
        return f"database: a write did not finish within {DB_PROBE_TIMEOUT_S:g} s"
    except Exception as exc:
        return f"database: not writable ({type(exc).__name__}: {_first_line(str(exc))})"
    return None


async def readiness(service: "Service") -> Readiness:
    """Is the service ready to serve? (``/readyz``)."""
    reasons: list[str] = []
    degraded: list[str] = []
    for name in configured_platforms(service.settings):
        health = configured_health(service, name)
        if health is None:
            reasons.append(f"{name}: not connected")
            continue
        if not health.ready:
            reasons.append(_short(f"{name}: {health.describe()}", service.settings))
    problem = await database_writable(service)
    if problem:
        reasons.append(_short(problem, service.settings))
    if not service.backend.status().healthy:
        degraded.append("model: no model server answers; patients get the outage notice and crisis resources")
    return Readiness(not reasons, reasons, degraded)


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def _short(text: str, settings: "Settings") -> str:
    """One line, no configured secret or token-shaped text (bot.redact), at most MAX_REASON_CHARS."""
    text = settings.redact(_first_line(text))
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"
