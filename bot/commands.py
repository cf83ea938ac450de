"""The moderator command layer: one implementation behind Discord and Slack slash commands
and the local console's moderator panel. Each call checks the moderator role first."""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot import incidents as crisis
from bot.reports import Report, evaluation_report, rubric_table, statuses
from pipeline import dataset, jobs, registry
from reviewers.models import MODERATOR_ROLE, Actor, PermissionDenied

if TYPE_CHECKING:
    from bot.service import Service

log = logging.getLogger(__name__)

COMMANDS = ("status", "retrain", "promote", "rollback", "eval", "dataset", "pause", "resume", "case")
CASE_USAGE = ("Crisis cases: case list | case show ID | case take ID | case reply ID TEXT | "
              "case resolve ID NOTE (reviewers and moderators).")


@dataclass
class CommandReply:
    text: str
    data: dict[str, Any] = field(default_factory=dict)
    ok: bool = True
    # Tables and a chart, rendered by each platform as fields (bot/reports.py), never ASCII in ``text``.
    report: Report | None = None


class Commands:
    def __init__(self, service: "Service"):
        self.service = service

    @property
    def db(self):
        return self.service.db

    async def _require(self, actor: Actor, command: str) -> None:
        if not actor.has(MODERATOR_ROLE):
            log.warning("command /%s refused: %s lacks the moderator role", command, actor.label)
            await self.service.reviews.audit(None, actor.label, "command_refused", command)
            raise PermissionDenied("Only moderators can use this command.")
        await self.service.reviews.audit(None, actor.label, "command", command)

    async def run(self, actor: Actor, command: str, argument: str | None = None) -> CommandReply:
        """Dispatch by name (for platforms that route every command through one handler)."""
        handlers = {
            "status": lambda: self.status(actor),
            "retrain": lambda: self.retrain(actor, argument),
            "promote": lambda: self.promote(actor, argument or ""),
            "rollback": lambda: self.rollback(actor, argument or None),
            "eval": lambda: self.evaluation(actor),
            "dataset": lambda: self.dataset(actor),
            "pause": lambda: self.pause(actor),
            "resume": lambda: self.resume(actor),
            "case": lambda: self.case(actor, argument),
        }
        if command not in handlers:
            return CommandReply(f"Unknown command {command!r}. Commands: {', '.join(COMMANDS)}.", ok=False)
        reply = await handlers[command]()
        # Replies quote incidents, job errors and model-server errors: never a key or token.
        reply.text = self.service.settings.redact(reply.text)
        return reply

    async def status(self, actor: Actor) -> CommandReply:
        await self._require(actor, "status")
        backend = self.service.backend.status()
        live = await registry.live(self.db)
        queue = await self.service.reviews.counts()
        waiting = await self.db.fetchval(
            "SELECT COUNT(*) FROM messages WHERE status IN ('queued_retry', 'paused', 'received')"
        )
        incidents = await self.db.fetchall(
            "SELECT kind, detail, created_at FROM incidents WHERE resolved_at IS NULL ORDER BY id DESC LIMIT 5"
        )
        last_job = await jobs.latest(self.db)
        effects = await self.service.core.outbox.stats()
        cases = await crisis.open_cases(self.db)
        data = {
            "model": backend.model,
            "backend": backend.backend,
            "healthy": backend.healthy,
            "adapter": backend.adapter_version or "base model",
            "registry_live": live["version"] if live else None,
            "demo": self.service.demo,
            "general_model": self.service.core.general_model,
            "paused": await self.service.core.is_paused(),
            "review_queue": queue,
            "messages_waiting": waiting,
            "open_incidents": [dict(r) for r in incidents],
            "crisis_cases": [{"id": c["id"], "age_s": round(time.time() - c["created_at"], 1), "taken_by": c["taken_by"],
                              "conversation_id": c["conversation_id"], "delivery": c["delivery"]} for c in cases],
            "effects": effects,
            "last_job": last_job,
            "platforms": _platforms(self.service),
            "doctor": _doctor_data(getattr(self.service, "doctor_report", None)),
        }
        job_text = (
            f"#{last_job['id']} {last_job['kind']} {last_job['status']} {last_job['progress'] or ''}".strip()
            if last_job else "none"
        )
        servers = backend.detail.get("replicas_up")
        lines = [
            f"Model: {data['model']} ({data['backend']}{', DEMO' if data['demo'] else ''}"
            f"{', small general model, not fine-tuned yet' if data['general_model'] and not backend.adapter_version else ''}), "
            f"{'healthy' if backend.healthy else 'FAILING'}",
            f"Live adapter: {data['adapter']}",
            *([f"Model servers up: {servers}"] if servers else []),
            f"Answering: {'paused' if data['paused'] else 'yes'}",
            f"Review queue: {queue.get('pending', 0)} pending, {queue.get('approved', 0)} approved, "
            f"{queue.get('edited', 0)} edited, {queue.get('rejected', 0)} rejected",
            f"Messages waiting for the model: {waiting}",
            _effects_line(effects),
            f"Open incidents: {len(incidents)}",
            f"Open crisis cases: {len(cases)}" + "".join(f"\n  {crisis.case_line(c)}" for c in cases),
            f"Last job: {job_text}",
            *_doctor_lines(getattr(self.service, "doctor_report", None)),
        ]
        text = "\n".join([*lines[:1], *_platform_lines(data["platforms"]), *lines[1:]])
        return CommandReply(text, data)

    async def case(self, actor: Actor, argument: str | None) -> CommandReply:
        """Crisis cases (bot/incidents.py): list, show, take over, reply as a person, resolve.
        Reviewers and moderators; anyone else is refused with a log line and an audit row."""
        words = (argument or "").strip().split(None, 2)
        action = words[0].lower() if words else "list"
        try:
            crisis.require_carer(actor, action)
        except PermissionDenied:
            await self.service.reviews.audit(None, actor.label, "command_refused", f"case {action}")
            raise
        await self.service.reviews.audit(None, actor.label, "command", f"case {action}")
        cases = self.service.core.cases
        if action == "list":
            open_now = await crisis.open_cases(self.db)
            text = "\n".join(crisis.case_line(c) for c in open_now) or "No open crisis case."
            return CommandReply(text, {"cases": [c["id"] for c in open_now]})
        if action not in ("show", "take", "reply", "resolve") or len(words) < 2 or not words[1].lstrip("#").isdigit():
            return CommandReply(CASE_USAGE, ok=False)
        case_id = int(words[1].lstrip("#"))
        rest = words[2] if len(words) > 2 else ""
        try:
            if action == "show":
                case = await crisis.get_case(self.db, case_id)
            elif action == "take":
                case = await cases.take_over(case_id, actor)
            elif action == "reply":
                case = await cases.reply(case_id, actor, rest)
            else:
                case = await cases.resolve(case_id, actor, rest)
        except crisis.CaseError as exc:
            return CommandReply(str(exc), ok=False)
        done = {"take": "You have taken over the case: the assistant stays out of the conversation until it is "
                        "resolved, and the patient's messages come to you here.",
                "reply": "Sent to the patient, labelled as written by you, a person — not the AI.",
                "resolve": "Resolved; the conversation is released to the assistant."}.get(action, "")
        text = "\n".join(filter(None, [done, crisis.case_text(case)]))
        return CommandReply(text, {"case": {k: v for k, v in case.items() if k not in ("messages",)}})

    async def retrain(self, actor: Actor, argument: str | None = None) -> CommandReply:
        """Start a retraining job; ``force`` trains even when no reviewed example is new."""
        await self._require(actor, "retrain")
        words = (argument or "").strip().lower().split()
        if any(w not in ("force", "--force") for w in words):
            return CommandReply(f"Unknown retrain option {argument!r}; use: retrain, or retrain force.", ok=False)
        force = bool(words)
        req = await jobs.request(self.db, "retrain", actor.label, {"force": True} if force else None)
        if not req.created:
            return CommandReply(
                f"A retraining job (#{req.job_id}) is already {req.status}"
                f"{', started ' + _ago(req.started_at) if req.started_at else ''}.",
                {"job_id": req.job_id, "created": False},
            )
        self.service.start_retrain(req.job_id)
        return CommandReply(f"Retraining job #{req.job_id} started{' (forced)' if force else ''}. "
                            "Progress is shown in /status.", {"job_id": req.job_id, "created": True, "force": force})

    async def promote(self, actor: Actor, version: str) -> CommandReply:
        """Make a candidate live, through the promotion gate."""
        await self._require(actor, "promote")
        words = (version or "").split()
        force = any(w.lower() in ("force", "--force") for w in words)
        names = [w for w in words if w.lower() not in ("force", "--force")]
        if len(names) != 1:
            return CommandReply("Name the adapter version to promote, e.g. promote v3.", ok=False)
        version = names[0]
        from pipeline.retrain import promote

        outcome = await promote(self.service, version, force=force)
        return CommandReply(outcome.text, {"version": version}, ok=outcome.ok)

    async def rollback(self, actor: Actor, version: str | None = None) -> CommandReply:
        await self._require(actor, "rollback")
        try:
            target = await registry.resolve_rollback(self.db, version)
        except registry.RegistryError as exc:
            return CommandReply(str(exc), ok=False)
        name = target or "the base model"
        try:
            seconds = await self.service.activate_adapter(target)
        except Exception as exc:
            return CommandReply(f"Rollback to {name} failed: {exc}. The live adapter is unchanged.", ok=False)
        return CommandReply(f"Rolled back: {name} is live (switched in {seconds:.2f} s).",
                            {"version": target, "live": target})

    async def evaluation(self, actor: Actor) -> CommandReply:
        """The newest evaluation, each model named as it is now (a live adapter never reads
        "candidate"), with the experts' rubric scores; tables go in ``report``."""
        await self._require(actor, "eval")
        from pipeline.rubric import rubric_by_version

        versions = [v for v in await registry.all_versions(self.db) if v["evaluation"]]
        rubric = await rubric_by_version(self.db)
        if not versions:
            report = Report("Expert rubric scores", tables=[rubric_table(rubric)]) if rubric else None
            return CommandReply("No evaluation has been run yet.", {"rubric": rubric}, report=report)
        latest = versions[0]
        now = await statuses(self.db)
        chart = (latest["evaluation"].get("files") or {}).get("png")
        report = evaluation_report(latest["evaluation"], now, rubric=rubric,
                                   image=chart if chart and Path(chart).is_file() else None)
        text = f"Evaluation of {latest['version']} ({now.get(latest['version'], latest['status'])})."
        return CommandReply(text, {**latest["evaluation"], "rubric": rubric}, report=report)

    async def dataset(self, actor: Actor) -> CommandReply:
        await self._require(actor, "dataset")
        counts = await dataset.counts(self.db)
        lines = [f"{task}: " + ", ".join(f"{src} {n}" for src, n in sorted(by.items())) for task, by in sorted(counts.items())]
        total = sum(n for by in counts.values() for n in by.values())
        return CommandReply(f"Dataset: {total} examples\n" + "\n".join(lines), {"counts": counts, "total": total})

    async def pause(self, actor: Actor) -> CommandReply:
        await self._require(actor, "pause")
        await self.service.core.set_paused(True)
        log.warning("answering paused by %s", actor.label)
        return CommandReply("Answering is paused. Patients are told their messages are saved.")

    async def resume(self, actor: Actor) -> CommandReply:
        await self._require(actor, "resume")
        await self.service.core.set_paused(False)
        answered = await self.service.core.retry_queued()
        log.warning("answering resumed by %s", actor.label)
        return CommandReply(f"Answering resumed; {answered} saved message(s) answered.", {"answered": answered})


def _effects_line(effects: dict[str, Any]) -> str:
    """Deliveries, cards, dataset examples and alerts not applied yet (the outbox), and failing ones."""
    text = f"Effects waiting (deliveries, cards, dataset, alerts): {effects['pending']}"
    if effects["pending"] and effects["oldest_pending_s"] is not None:
        text += f" (oldest {crisis.age_text(effects['oldest_pending_s'])})"
    if effects["failing"]:
        text += f"; FAILING: {effects['failing']}, still retried (see the log and llm4sweat doctor)"
    return text


def _platforms(service: Any) -> dict[str, str]:
    """Each configured chat platform's connection (bot/health.py)."""
    from bot.health import configured_health, configured_platforms

    out = {}
    for name in configured_platforms(service.settings):
        health = configured_health(service, name)
        out[name] = health.describe() if health is not None else "not connected"
    return out


def _platform_lines(platforms: dict[str, str]) -> list[str]:
    return ["Platforms: " + ", ".join(f"{name} {state}" for name, state in platforms.items())] if platforms else []


def _doctor_data(report: Any) -> dict[str, Any] | None:
    return None if report is None else report.as_json()


def _doctor_lines(report: Any) -> list[str]:
    """The start-up checks' result: the summary and the first failures with their fixes."""
    if report is None:
        return ["Checks (llm4sweat doctor): not run yet"]
    at = datetime.datetime.fromtimestamp(report.finished_at).strftime("%Y-%m-%d %H:%M")
    lines = [f"Checks at start-up ({at}): {report.summary()}"]
    for check in report.failed[:5]:
        lines.append(f"  ✗ {check.title}: {check.detail} — fix: {check.fix}")
    if len(report.failed) > 5:
        lines.append(f"  … {len(report.failed) - 5} more: run `llm4sweat doctor`")
    return lines


def _ago(ts: float | None) -> str:
    import time

    if ts is None:
        return ""
    minutes = int((time.time() - ts) // 60)
    return f"{minutes} min ago" if minutes else "just now"
