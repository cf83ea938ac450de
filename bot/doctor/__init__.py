"""``llm4sweat doctor``: every check an operator needs before and after going live, with the
fix for each failure. The same checks run when the service starts (logged, and the last
result is shown in ``/status``).

Checks, by name (each failure comes with a one-line fix):

- ``settings`` — the settings load.
- ``database.open`` / ``.migrations`` / ``.writable`` / ``.permissions`` — the file opens,
  migrations are current, a write commits, only its owner can read it.
- ``disk.space`` — free space in the data directory.
- ``pack.crisis_resources`` — the pack has crisis resources for every region in ``safety.regions``.
- ``discord.token``, ``.configuration`` (somewhere to answer), ``.intents``, ``.interactions_url``, ``.guild``, ``.channel``, ``.roles``,
  ``.channel_permissions``, ``.moderator_mention`` — when ``discord.token`` is set.
- ``slack.token``, ``.scopes``, ``.connection``, ``.channels``, ``.reviewer_group`` — when
  ``slack.bot_token`` is set.
- ``model.reachable``, ``.base_model``, ``.lora``, ``.live_adapter`` per model server
  (``model.local`` with the in-process backend).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from bot.doctor.discord_checks import check_discord
from bot.doctor.local_checks import MIN_FREE_BYTES, check_database, check_disk, check_pack
from bot.doctor.model_checks import check_model
from bot.doctor.report import Check, Report, fail
from bot.doctor.slack_checks import check_slack
from bot.settings import Settings

if TYPE_CHECKING:
    from bot.service import Service

__all__ = ["Check", "Report", "run_checks", "startup_checks"]

log = logging.getLogger(__name__)


async def run_checks(settings: Settings, *, pack: Any = None, service_running: bool = False,
                     min_free_bytes: int = MIN_FREE_BYTES, demo: bool = False) -> Report:
    """Every check for these settings. Network checks (Discord, Slack, model servers) run side by
    side; none of them changes anything (the database check writes one probe row)."""
    report = Report()
    report.checks += await check_database(settings)
    report.checks.append(check_disk(settings, min_free_bytes))
    report.checks += check_pack(settings, pack)
    live = await _live_adapter(settings)
    groups = await asyncio.gather(
        _guarded("discord", check_discord(settings.discord)),
        _guarded("slack", check_slack(settings.slack)),
        _guarded("model", check_model(settings, live, service_running, demo)),
    )
    for checks in groups:
        report.checks += checks
    return report


async def _guarded(area: str, coro: Any) -> list[Check]:
    """A check that crashes is a failed check, never a crashed doctor."""
    try:
        return await coro
    except Exception as exc:
        log.exception("doctor: the %s checks crashed", area)
        return [fail(f"{area}.checks", f"the checks crashed: {type(exc).__name__}: {exc}",
                     "report this with the log; the other checks are unaffected")]


async def _live_adapter(settings: Settings) -> dict[str, Any] | None:
    if not settings.db_path.exists():
        return None
    from bot.storage import Database, StorageError
    from pipeline import registry

    db = Database(settings.db_path)
    try:
        await db.open(migrate=False)
        return await registry.live(db)
    except (StorageError, Exception):
        return None
    finally:
        await db.close()


async def startup_checks(service: "Service") -> Report:
    """Run the checks for the running service, log every failure with its fix, keep the report
    for ``/status`` (``service.doctor_report``)."""
    report = await run_checks(service.settings, pack=service.pack, service_running=True, demo=service.demo)
    service.doctor_report = report  # type: ignore[attr-defined]
    for check in report.failed:
        log.warning("doctor: ✗ %s: %s — fix: %s", check.title, check.detail, check.fix)
    log.info("doctor: %s (llm4sweat doctor shows every check)", report.summary())
    return report
