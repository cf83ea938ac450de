"""Retraining jobs: dataset snapshot → training + evaluation in a subprocess → registry →
promotion gate → hot swap → moderators told, with the evaluation table.

``run_retrain_job(service, job_id)`` is what the service runs for ``/retrain`` (platforms,
console button) and for the scheduler; ``llm4sweat retrain`` runs the same function. Why it
is built this way:

- **The work runs in its own process** (``python -m pipeline.retrain_worker``), at a lower
  priority, so the bot keeps answering while a model trains; the event loop only reads the
  worker's progress lines and writes them into the jobs table (at most once a second).
- **The job's state lives in the jobs table**: queued → running (with progress text) →
  succeeded / failed / cancelled, with the result (version, gate decision, figures) or the
  error. A job whose service died is marked failed at the next start (``jobs.mark_interrupted``);
  a worker whose service died stops by itself.
- **The snapshot never contains an evaluation question**: examples in which one of the pack's
  evaluation questions (nearly) appears are left out and counted, using the pack's own leak
  detector. The snapshot is identified by the same content hash the adapter's manifest
  records.
- **Comparable numbers**: base model, live adapter and candidate are evaluated on the same set
  (``eval_hash``); runs of an earlier evaluation on the same set are reused instead of being
  recomputed.
- **Nothing new, nothing trained**: a manual or scheduled job whose snapshot is the one the live
  adapter was trained on, or which holds no reviewed (expert) example newer than that
  adapter's snapshot, is skipped with a message saying so, unless forced (``/retrain force``,
  ``llm4sweat retrain --force``): retraining on the same data only adds seed noise.
- **The gate decides, the registry remembers**: the candidate is registered with its manifest
  and evaluation whatever the outcome; it goes live only if the gate passes and the adapter
  loads. A load failure marks it failed and the live adapter keeps serving.
- **A moderator's change during training wins**: the live adapter is read again just before
  promotion. If a moderator rolled back or promoted meanwhile, the candidate (compared with an
  adapter that no longer serves) is not promoted: it stays a candidate with a note saying so,
  to be compared with what is live now (``llm4sweat eval --adapter V``) and promoted by hand.
  Rule chosen because the moderator's later, deliberate decision must not be undone by a job
  started before it; re-running the whole evaluation inside the job would also be possible
  but doubles its time for a rare event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bot.files import private_dir
from bot.storage import Database, now
from pipeline import dataset, jobs, registry
from pipeline import evaluate as ev
from pipeline import gate

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXPERT_SOURCES = ("expert_approved", "expert_edited")
PROGRESS_INTERVAL_S = 1.0
KILL_GRACE_S = 10.0


class RetrainError(Exception):
    """A retraining job cannot go on; the message is for moderators."""


@dataclass
class RetrainOptions:
    """Knobs of one retraining run (defaults suit production; tests and benches shrink them).

    A service may carry ``retrain_options`` (an instance of this class) to set them for the
    jobs it starts."""

    val_fraction: float = 0.1
    seed: int = 0
    max_steps: int | None = None
    max_seconds: float | None = None
    eval: dict[str, Any] = field(default_factory=dict)  # EvalConfig fields
    min_examples: int = 4
    nice: int = 10
    threads: int | None = None


# --------------------------------------------------------------------------------- helpers


def resolve_base_model(service: Any) -> str:
    """The local directory of the model adapters are trained on: the one the service serves."""
    explicit = getattr(service, "training_base_model", None)
    if explicit:
        return str(explicit)
    served = getattr(getattr(service, "backend", None), "model_path", None)
    if served and Path(served).is_dir():
        return str(served)
    name = service.settings.inference.base_model
    if Path(name).is_dir():
        return name
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception:
        raise RetrainError(
            f"the base model {name} is not on this machine, so no adapter can be trained here; "
            "download it with `llm4sweat model download` or set LLM4SWEAT_INFERENCE__BASE_MODEL to a local folder"
        ) from None


def _same_model(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return True
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    if pa.is_dir() and pb.is_dir():
        return pa.resolve() == pb.resolve()
    return pa.name == pb.name or a.endswith(b) or b.endswith(a)


async def next_version(db: Database, adapters_dir: Path) -> str:
    """``v<N>``: one more than any version in the registry or folder on disk."""
    names = [row["version"] for row in await registry.all_versions(db)]
    if adapters_dir.is_dir():
        names += [p.name for p in adapters_dir.iterdir()]
    numbers = [int(m.group(1)) for n in names if (m := re.fullmatch(r"\.?v(\d+)(?:\..*)?", n))]
    return f"v{max(numbers, default=0) + 1}"


@dataclass
class Snapshot:
    path: Path
    examples: int
    hash: str
    excluded: list[int]
    max_example_id: int
    by_source: dict[str, int]
    expert_ids: list[int] = field(default_factory=list)  # reviewed examples in the snapshot
    low_accuracy: list[int] = field(default_factory=list)  # approvals left out: accuracy score too low


async def export_snapshot(db: Database, pack: Any, path: Path, min_accuracy: int | None = None) -> Snapshot:
    """Write the training snapshot (chat ``messages`` JSONL) through the dataset's export,
    which leaves out examples containing an evaluation question or a held-out safety case,
    approvals whose accuracy score is below ``min_accuracy`` and examples of patients who have
    not consented; its hash is the one the adapter's manifest will record."""
    # Taken before the export: an example added meanwhile counts as new next time (never lost).
    max_id = int(await db.fetchval("SELECT COALESCE(MAX(id), 0) FROM dataset_examples") or 0)
    kwargs = {} if min_accuracy is None else {"min_accuracy": min_accuracy}
    result = await dataset.export(db, path, pack, **kwargs)
    return Snapshot(
        path=result.path,
        examples=result.count,
        hash=result.hash,
        excluded=list(result.excluded),
        max_example_id=max_id,
        by_source=dict(result.by_source),
        expert_ids=list(getattr(result, "expert_ids", [])),
        low_accuracy=list(getattr(result, "low_accuracy", [])),
    )


def nothing_new(snapshot: Snapshot, live: dict[str, Any] | None) -> str | None:
    """Why training on ``snapshot`` would add nothing over the live adapter, or None.

    Nothing new: the snapshot is the very data the live adapter was trained on, or it holds no
    reviewed example newer than that adapter's snapshot. A live adapter trained on data a patient
    has since deleted (/forget-me) always has something new to learn: the same data without it."""
    if live is None:
        return None
    manifest = live.get("manifest") or {}
    if manifest.get("forgotten"):  # it learned from data a patient has deleted: replace it (pipeline/forgetting.py)
        return None
    trained = (manifest.get("snapshot") or {})
    trained_hash = manifest.get("dataset_hash") or trained.get("hash")
    if trained_hash and trained_hash == snapshot.hash:
        return (f"the dataset snapshot ({snapshot.hash[:12]}, {snapshot.examples} examples) is the one "
                f"{live['version']} was trained on")
    since = trained.get("max_example_id")
    if since is not None:
        new = [i for i in snapshot.expert_ids if i > int(since)]
        if not new:
            return f"no new reviewed examples since {live['version']} was trained"
    return None


async def tell_moderators(service: Any, text: str, urgent: bool = False, report: Any = None) -> None:
    """Through the running bot's platforms, or into HeadlessService.messages for the CLI;
    ``report`` (bot.reports.Report): the tables and chart that go with the text."""
    core = getattr(service, "core", None)
    target = core.alert_moderators if core is not None else service.alert_moderators
    try:
        if report is None:
            await target(text, urgent)
        else:
            await target(text, urgent, report=report)
    except Exception:
        log.exception("telling moderators failed")


def reusable_runs(report_or_record: dict[str, Any] | None, wanted_hash: str, labels: list[str]) -> dict[str, Any]:
    """Runs (by label) of an earlier evaluation made on the same set."""
    if not report_or_record or report_or_record.get("eval_hash") != wanted_hash:
        return {}
    runs = report_or_record.get("runs") or {}
    return {label: runs[label] for label in labels if label in runs}


def registry_record(report: dict[str, Any], subject: str, decision: gate.GateDecision | None,
                    outputs: dict[str, str] | None = None) -> dict[str, Any]:
    """What the registry stores as an adapter's evaluation (no per-question detail)."""
    runs = {label: ev.summary(run) for label, run in report["runs"].items()}
    own = runs[subject]
    record = {
        "eval_hash": report["eval_hash"],
        "scoring": report["scoring"],
        "pack": report.get("pack"),
        "num_questions": report["num_questions"],
        "tasks": report["tasks"],
        "order": report.get("order") or list(runs),
        "metric": report.get("metric"),
        "book": report.get("book"),
        "splits": report.get("splits"),
        "controls": report.get("controls"),
        "subject": subject,
        "runs": runs,
        "overall": own["overall"],
        "per_task": own["tasks"],
        "safety": own.get("safety"),
        "table": report.get("table") or ev.table_text(report),
        "created_at": report.get("created_at"),
    }
    if decision is not None:
        record["gate"] = decision.to_dict()
    if outputs:
        record["files"] = outputs
    return record


async def result_report(db: Database, record: dict[str, Any], outputs: dict[str, Any] | None) -> Any:
    """What moderators get with a retraining result: the comparison table as fields, each model
    named as it is now, and the chart attached (bot/reports.py), never an ASCII table in prose."""
    from bot.reports import evaluation_report, statuses

    chart = (outputs or {}).get("png")
    return evaluation_report(record, await statuses(db), gate=False,
                             image=str(chart) if chart and Path(chart).is_file() else None)


# --------------------------------------------------------------------------------- the job


class _ProgressWriter:
    """Progress text into the jobs table, at most once per interval (always on phase change)."""

    def __init__(self, db: Database, job_id: int, echo: Callable[[str], None] | None):
        self.db, self.job_id, self.echo = db, job_id, echo
        self.last_write = 0.0
        self.last_phase = ""
        self.text = ""

    async def __call__(self, text: str, phase: str, fraction: float | None = None) -> None:
        self.text = text
        if self.echo is not None:
            self.echo(text)
        t = time.monotonic()
        if phase != self.last_phase or t - self.last_write >= PROGRESS_INTERVAL_S or fraction == 1.0:
            self.last_write, self.last_phase = t, phase
            await jobs.progress(self.db, self.job_id, text, fraction, _BAR_NAMES.get(phase.split(":")[0]))


_BAR_NAMES = {"train": "training", "eval": "evaluating"}  # the phases a progress bar is drawn for


def _fraction(event: dict[str, Any]) -> float | None:
    try:
        step, total = float(event["step"]), float(event["total"])
    except (KeyError, TypeError, ValueError):
        return None
    return min(1.0, max(0.0, step / total)) if total > 0 else None


def _describe_progress(event: dict[str, Any], version: str) -> tuple[str, str, float | None]:
    """The progress line, the phase, and how far the phase is (0–1) for the progress bars."""
    phase = event.get("phase", "")
    if phase == "train":
        if not event.get("total"):
            return f"training {version} on {event.get('examples', '?')} examples: starting", "train", 0.0
        text = f"training {version}: step {event['step']}/{event['total']}, epoch {event.get('epoch', 0):.1f}"
        if event.get("train_loss") is not None:
            text += f", loss {event['train_loss']:.3f}"
        if event.get("val_loss") is not None:
            text += f", validation loss {event['val_loss']:.3f}"
        return text, "train", _fraction(event)
    what = str(event.get("what", ""))
    label, _, step = what.partition(":")
    noun = "safety suite" if step == "safety" else "questions"
    return f"evaluating {label}: {noun} {event.get('step')}/{event.get('total')}", f"eval:{what}", _fraction(event)


async def run_worker_process(
    spec: dict[str, Any], job_dir: Path, on_event: Callable[[dict[str, Any]], Any]
) -> dict[str, Any]:
    """Run the worker on ``spec``; feed its events to ``on_event``; return its result.

    Cancelling the calling task stops the worker (SIGTERM, then SIGKILL after a grace time)."""
    spec_path = job_dir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2, default=str))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(PROJECT_ROOT), env.get("PYTHONPATH", "")] if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    log_path = job_dir / "worker.log"
    last_error = ""
    with log_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pipeline.retrain_worker", str(spec_path),
            stdout=asyncio.subprocess.PIPE, stderr=stderr, env=env, cwd=str(PROJECT_ROOT),
            limit=1 << 22,
        )
        try:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue  # a library printed to stdout
                if event.get("event") == "error":
                    last_error = str(event.get("message", ""))
                elif event.get("event") == "cancelled":
                    last_error = "cancelled"
                result = on_event(event)
                if asyncio.iscoroutine(result):
                    await result
            code = await proc.wait()
        except asyncio.CancelledError:
            _terminate(proc)  # never wait here: the job row is written next, before the service closes
            raise
    if code != 0:
        tail = _tail(log_path)
        raise RetrainError(f"the training worker failed (exit {code}): {last_error or tail}")
    return json.loads(Path(spec["result"]).read_text())


def _terminate(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM now (the worker stops at its next step and leaves no adapter behind), SIGKILL
    after a grace time if it is still there. A worker whose service is gone stops by itself."""
    if proc.returncode is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        return

    def kill() -> None:
        if proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass

    asyncio.get_running_loop().call_later(KILL_GRACE_S, kill)


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-800:]


async def run_retrain_job(
    service: Any,
    job_id: int,
    options: RetrainOptions | None = None,
    echo: Callable[[str], None] | None = None,
    force: bool | None = None,
) -> dict[str, Any]:
    """Run retraining job ``job_id`` to the end; returns the job's result.

    The job row ends succeeded (whether or not the gate let the adapter go live), failed
    (with the error) or cancelled. Moderators are told the outcome either way. A failure is
    recorded and reported, not raised: the result then has ``status`` "failed" and ``error``.
    ``force`` (default: the job's ``params``) trains even when nothing is new."""
    db: Database = service.db
    options = options or getattr(service, "retrain_options", None) or RetrainOptions()
    if force is None:
        row = await jobs.get(db, job_id)
        try:
            force = bool(json.loads((row or {}).get("params") or "{}").get("force"))
        except ValueError:
            force = False
    started = time.monotonic()
    await jobs.start(db, job_id, os.getpid())
    progress = _ProgressWriter(db, job_id, echo)
    try:
        return await _run(service, job_id, options, progress, started, force)
    except asyncio.CancelledError:
        try:
            await asyncio.shield(jobs.finish(db, job_id, "cancelled", error="cancelled: the service stopped"))
        except Exception:
            pass
        raise
    except Exception as exc:
        message = str(exc) if isinstance(exc, (RetrainError, registry.RegistryError)) else f"{type(exc).__name__}: {exc}"
        message = service.settings.redact(message)  # a model server's error may quote a key
        log.error("retraining job %s failed: %s", job_id, message)
        await jobs.finish(db, job_id, "failed", error=message[:2000])
        await tell_moderators(service, f"Retraining job #{job_id} failed: {message[:1500]}")
        if echo:
            echo(f"failed: {message}")
        return {"status": "failed", "error": message}


async def _skip(service: Any, job_id: int, progress: _ProgressWriter, snapshot: Snapshot, why: str) -> dict[str, Any]:
    text = (f"Retraining job #{job_id} skipped: {why}. Nothing was trained; the live adapter keeps serving. "
            "To train anyway: /retrain force (or llm4sweat retrain --force).")
    result = {"status": "skipped", "skipped": True, "reason": why, "summary": text,
              "snapshot": {"examples": snapshot.examples, "hash": snapshot.hash,
                           "max_example_id": snapshot.max_example_id, "by_source": snapshot.by_source}}
    await jobs.finish(service.db, job_id, "succeeded", result=result)
    await jobs.progress(service.db, job_id, f"skipped: {why}")
    await tell_moderators(service, text)
    if progress.echo:
        progress.echo(text)
    log.info("retraining job %s skipped: %s", job_id, why)
    return result


async def _run(service: Any, job_id: int, options: RetrainOptions, progress: _ProgressWriter, started: float,
               force: bool = False) -> dict[str, Any]:
    db: Database = service.db
    settings = service.settings
    pack = service.pack
    job_dir = Path(settings.data_dir) / "jobs" / f"retrain-{job_id}"
    private_dir(job_dir)  # the snapshot holds patients' words

    await progress("exporting the dataset snapshot", "export")
    snapshot = await export_snapshot(db, pack, job_dir / "dataset.jsonl",
                                     min_accuracy=settings.review.min_accuracy_for_training)
    live_at_start = await registry.live(db)
    if not force:
        why = nothing_new(snapshot, live_at_start)
        if why:
            return await _skip(service, job_id, progress, snapshot, why)
    base_model = resolve_base_model(service)
    adapters_dir = Path(settings.adapters_path)
    private_dir(adapters_dir)
    if snapshot.examples < options.min_examples:
        raise RetrainError(f"only {snapshot.examples} training examples; at least {options.min_examples} are needed")
    if not getattr(pack, "eval_questions", None):
        raise RetrainError("the condition pack has no evaluation questions, so no adapter could be judged")

    version = await next_version(db, adapters_dir)
    out_dir = adapters_dir / version
    eval_cfg = ev.EvalConfig(**{"prompt_budget": settings.prompt.token_budget,
                                "template_date": settings.prompt.template_date, **options.eval})
    wanted_hash = await asyncio.to_thread(ev.planned_hash, pack, eval_cfg)

    # Base model and live adapter are evaluated beside the candidate unless an earlier
    # evaluation on the same set can be reused.
    live = live_at_start
    live_label = live["version"] if live else None
    reuse: dict[str, Any] = {}
    if live is not None:
        reuse = reusable_runs(live["evaluation"], wanted_hash, [ev.BASE_LABEL, live_label])
    subjects = []
    if ev.BASE_LABEL not in reuse:
        subjects.append({"label": ev.BASE_LABEL, "version": None, "path": None})
    if live is not None and live_label not in reuse:
        if registry.adapter_problem(Path(live["path"])) is None:
            subjects.append({"label": live_label, "version": live_label, "path": live["path"]})
        else:
            live_label = None  # cannot be evaluated; compare with the base model
    reference = live_label or ev.BASE_LABEL
    order = [ev.BASE_LABEL, *([live_label] if live_label else []), version]

    eval_dir = Path(settings.data_dir) / "evaluations" / version
    spec = {
        "base_model": base_model,
        "dataset": str(snapshot.path),
        "out_dir": str(out_dir),
        "version": version,
        "training": settings.training.model_dump(mode="json"),
        "template_date": settings.prompt.template_date,  # the date the chat template prints, as serving
        "val_fraction": options.val_fraction,
        "seed": options.seed,
        "max_steps": options.max_steps,
        "max_seconds": options.max_seconds,
        "pack": str(pack.path),
        "eval": asdict(eval_cfg),
        "subjects": subjects,
        "reuse_runs": reuse,
        "order": order,
        "titles": {ev.BASE_LABEL: "base model", **({live_label: f"{live_label} (live)"} if live_label else {}),
                   version: f"{version} (candidate)"},
        "delta": [reference, version],
        "eval_dir": str(eval_dir),
        "result": str(job_dir / "result.json"),
        "nice": options.nice,
        "threads": options.threads,
    }

    async def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "progress":
            text, phase, fraction = _describe_progress(event, version)
            await progress(text, phase, fraction)

    await progress(f"training {version} on {snapshot.examples} examples", "train-start")
    try:
        result = await run_worker_process(spec, job_dir, on_event)
    except RetrainError:
        if out_dir.exists() and await registry.get(db, version) is None:  # trained, then failed: keep it traceable
            manifest = _read_manifest(out_dir)
            await registry.register(db, version, out_dir, base_model, manifest, status="failed")
            await registry.set_status(db, version, "failed", note="evaluation did not finish")
        raise

    report = result["evaluation"]
    runs = report["runs"]
    decision = gate.decide_from_settings(
        runs[version], runs[reference], settings.training,
        candidate_name=version, reference_name=reference if reference != ev.BASE_LABEL else "the base model",
    )
    record = registry_record(report, version, decision, result.get("outputs"))
    await _patch_report_file(result.get("outputs", {}).get("json"), decision)
    manifest = result.get("manifest") or _read_manifest(out_dir)
    manifest = {**manifest, "snapshot": {"examples": snapshot.examples, "hash": snapshot.hash,
                                          "max_example_id": snapshot.max_example_id,
                                          "excluded_eval_leaks": len(snapshot.excluded),
                                          "excluded_low_accuracy": len(snapshot.low_accuracy),
                                          "by_source": snapshot.by_source}}
    await registry.register(db, version, out_dir, base_model, manifest, status="candidate")
    await registry.set_evaluation(db, version, record)
    if decision.passed:
        await registry.mark_gate_passed(db, version)

    promoted, swap_seconds, outcome = False, None, ""
    live_now = await registry.live(db)  # a moderator's /rollback or /promote during the job wins
    changed = (live_now or {}).get("version") != (live or {}).get("version")
    if decision.passed and changed:
        before = live["version"] if live else "the base model"
        after = live_now["version"] if live_now else "the base model"
        note = (f"passed the gate against {before}, but a moderator made {after} live during training; "
                f"not promoted automatically")
        await registry.set_status(db, version, "candidate", note=note)
        outcome = (f"{version} {note}. Compare it with what is live now (llm4sweat eval --adapter {version}) "
                   f"and promote it by hand if it is better.")
    elif decision.passed:
        await progress(f"gate passed; loading {version}", "promote")
        try:
            swap_seconds = await service.activate_adapter(version)
            promoted = True
            if getattr(service, "hot_swaps", True):
                outcome = f"{version} is now live (switched in {swap_seconds:.2f} s, no restart)."
            else:
                outcome = f"{version} is recorded as live; the service loads it when it next starts."
        except Exception as exc:
            await registry.set_status(db, version, "failed", note=f"could not be loaded: {exc}")
            outcome = (f"{version} passed the gate but could not be loaded ({exc}); "
                       f"{live['version'] if live else 'the base model'} keeps serving.")
    else:
        await registry.set_status(db, version, "candidate", note="; ".join(decision.reasons)[:1000])
        outcome = (f"{version} stays a candidate; {live['version'] if live else 'the base model'} keeps serving. "
                   f"To promote it anyway: llm4sweat adapters promote {version} --force")

    seconds = time.monotonic() - started
    job_result = {
        "status": "succeeded",
        "version": version,
        "promoted": promoted,
        "swap_seconds": swap_seconds,
        "gate": decision.to_dict(),
        "overall": runs[version]["overall"],
        "reference": reference,
        "snapshot": {"examples": snapshot.examples, "hash": snapshot.hash, "excluded": snapshot.excluded,
                     "max_example_id": snapshot.max_example_id, "by_source": snapshot.by_source},
        "live_changed_during_job": changed,
        "timings": {**result.get("timings", {}), "job": round(seconds, 3)},
        "files": result.get("outputs", {}),
    }
    training = result.get("training") or {}
    head = (
        f"Retraining job #{job_id}: adapter {version} trained on {snapshot.examples} examples "
        f"(snapshot {snapshot.hash[:12]}"
        + (f", {len(snapshot.excluded)} left out because they contain evaluation questions or held-out safety cases"
           if snapshot.excluded else "")
        + (f", {len(snapshot.low_accuracy)} approvals left out for a low accuracy score" if snapshot.low_accuracy else "")
        + f") in {result.get('timings', {}).get('train', 0):.0f} s"
        + (f", validation loss {training['initial_val_loss']:.3f} → {training['best_val_loss']:.3f}"
           if training.get("initial_val_loss") is not None and training.get("best_val_loss") is not None else "")
        + f"; evaluated in {result.get('timings', {}).get('eval', 0):.0f} s."
    )
    text = f"{head}\n{record['table']}\n{decision.text()}\n{outcome}"
    job_result["summary"] = text
    await jobs.finish(db, job_id, "succeeded", result=job_result)
    await jobs.progress(db, job_id, f"done: {outcome}")
    await tell_moderators(service, f"{head}\n{decision.text()}\n{outcome}",
                          report=await result_report(db, record, result.get("outputs")))
    if progress.echo:
        progress.echo(text)
    log.info("retraining job %s done: %s", job_id, outcome)
    return job_result


def _read_manifest(out_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


async def _patch_report_file(path: str | None, decision: gate.GateDecision) -> None:
    if not path:
        return

    def patch() -> None:
        p = Path(path)
        data = json.loads(p.read_text())
        data["gate"] = decision.to_dict()
        tmp = p.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False))
        tmp.replace(p)

    try:
        await asyncio.to_thread(patch)
    except (OSError, ValueError):
        log.warning("could not add the gate decision to %s", path)


# --------------------------------------------------------------------------------- promote


@dataclass
class PromoteOutcome:
    ok: bool
    text: str
    decision: dict[str, Any] | None = None
    swap_seconds: float | None = None


def _reference_run(candidate_eval: dict[str, Any], live: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    """The reference run to judge a candidate against: the live adapter's (or the base
    model's when none is live), from the candidate's own evaluation or the live's, on the
    same set."""
    label = live["version"] if live else ev.BASE_LABEL
    runs = candidate_eval.get("runs") or {}
    if label in runs:
        return runs[label], label
    if live and live.get("evaluation") and live["evaluation"].get("eval_hash") == candidate_eval.get("eval_hash"):
        run = (live["evaluation"].get("runs") or {}).get(label)
        if run:
            return run, label
    return None, label


async def check_promotion(service: Any, version: str, *, force: bool = False) -> PromoteOutcome:
    """May ``version`` go live? The registry state, the base model, and (unless ``force``) the
    gate against what serves now. ``ok`` with an empty text: go ahead."""
    db: Database = service.db
    row = await registry.get(db, version)
    if row is None:
        return PromoteOutcome(False, f"There is no adapter version {version!r}.")
    if row["status"] == "live":
        return PromoteOutcome(False, f"{version} is already live.")
    if row["status"] == "failed":
        return PromoteOutcome(False, f"{version} failed before ({row.get('note') or 'see the registry'}) and cannot go live.")
    try:
        serving = resolve_base_model(service)
    except RetrainError:
        serving = None
    if serving and not _same_model(row["base_model"], serving):
        return PromoteOutcome(False, f"{version} was trained on {row['base_model']}, but the service runs {serving}.")
    if force:
        return PromoteOutcome(True, "")
    evaluation = row["evaluation"]
    if not evaluation or version not in (evaluation.get("runs") or {}):
        return PromoteOutcome(False, f"{version} has no evaluation; run `llm4sweat eval --adapter {version}` "
                                     "first, or promote with --force.")
    live = await registry.live(db)
    reference, label = _reference_run(evaluation, live)
    if reference is None:
        return PromoteOutcome(False, f"{version} was never evaluated beside {label} on the same questions; "
                                     f"run `llm4sweat eval --adapter {version}`, or promote with --force.")
    result = gate.decide_from_settings(
        evaluation["runs"][version], reference, service.settings.training,
        candidate_name=version, reference_name=label if label != ev.BASE_LABEL else "the base model",
    )
    if not result.passed:
        return PromoteOutcome(False, result.text() + "\nPromote anyway with --force.", result.to_dict())
    await registry.mark_gate_passed(db, version)
    return PromoteOutcome(True, result.text(), result.to_dict())


def gate_text(decision: dict[str, Any]) -> str:
    """The text of a stored gate decision (``GateDecision.to_dict``)."""
    checks = [gate.Check(**c) for c in decision.get("checks", [])]
    return gate.GateDecision(decision["passed"], decision["candidate"], decision["reference"], checks,
                             list(decision.get("notes") or [])).text()


async def promote(service: Any, version: str, *, force: bool = False) -> PromoteOutcome:
    """Make ``version`` live: through the gate (unless ``force``), then a hot swap. A load
    failure marks the version failed; the live adapter keeps serving."""
    check = await check_promotion(service, version, force=force)
    if not check.ok:
        return check
    try:
        seconds = await service.activate_adapter(version)
    except Exception as exc:
        await registry.set_status(service.db, version, "failed", note=f"could not be loaded: {exc}")
        return PromoteOutcome(False, f"{version} could not be loaded ({exc}); the live adapter keeps serving.",
                              check.decision)
    await tell_moderators(service, f"Adapter {version} was promoted{' (gate overridden)' if force else ''} and is live.")
    return PromoteOutcome(True, f"Promoted: {version} is live (switched in {seconds:.2f} s"
                                f"{', gate overridden' if force else ''}).", check.decision, seconds)


# --------------------------------------------------------------------------------- without a running bot


class HeadlessService:
    """What the model loop needs from a service, for the CLI when no bot is running.

    Activating an adapter checks it and records it live in the registry; the service loads
    it when it next starts. Moderator messages are kept in ``messages``."""

    hot_swaps = False

    def __init__(self, settings: Any, db: Database, pack: Any, base_model: str | None = None):
        self.settings = settings
        self.db = db
        self.pack = pack
        self.training_base_model = base_model
        self.messages: list[str] = []
        self.retrain_options: RetrainOptions | None = None

    async def alert_moderators(self, text: str, urgent: bool = False, report: Any = None) -> None:
        self.messages.append(text)

    async def activate_adapter(self, version: str | None) -> float:
        from bot.inference.base import AdapterLoadError

        started = time.perf_counter()
        if version is not None:
            row = await registry.get(self.db, version)
            if row is None:
                raise registry.RegistryError(f"no adapter version {version!r}")
            problem = registry.adapter_problem(Path(row["path"]))
            if problem is None:
                problem = await asyncio.to_thread(_weights_problem, Path(row["path"]))
            if problem:
                raise AdapterLoadError(problem)
        await registry.mark_live(self.db, version)
        return time.perf_counter() - started


def _weights_problem(path: Path) -> str | None:
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():
                f.get_tensor(key)
    except Exception as exc:
        return f"weights file {weights} is corrupt ({exc})"
    return None


# --------------------------------------------------------------------------------- schedule


async def retrain_due(service: Any) -> tuple[bool, str]:
    """Is a scheduled retraining due? At least ``retrain_min_new_examples`` expert examples
    since the snapshot of the last successful job, and ``retrain_interval_hours`` since the
    last retraining job of any outcome."""
    db: Database = service.db
    cfg = service.settings.training
    last = await jobs.latest(db, "retrain")
    if last and last["status"] in ("queued", "running"):
        return False, f"retraining job #{last['id']} is {last['status']}"
    if last and now() - last["created_at"] < cfg.retrain_interval_hours * 3600:
        hours = (now() - last["created_at"]) / 3600
        return False, f"last retraining {hours:.1f} h ago; the interval is {cfg.retrain_interval_hours:g} h"
    since = 0
    row = await db.fetchone("SELECT result FROM jobs WHERE kind = 'retrain' AND status = 'succeeded' ORDER BY id DESC LIMIT 1")
    if row and row["result"]:
        since = int((json.loads(row["result"]).get("snapshot") or {}).get("max_example_id") or 0)
    new = await db.fetchval(
        "SELECT COUNT(*) FROM dataset_examples WHERE id > ? AND source IN (?, ?)", (since, *EXPERT_SOURCES)
    )
    if new < cfg.retrain_min_new_examples:
        return False, f"{new} new expert examples; {cfg.retrain_min_new_examples} are needed"
    return True, f"{new} new expert examples since the last training"


async def retrain_scheduler(service: Any, check_every_s: float = 600.0) -> None:
    """Forever, as ``training.retrain_schedule`` says: start a retraining job in this process when
    ``retrain_due`` says so ("in_service"), or tell moderators a round is due for the trainer job
    ("request"); "off" returns at once."""
    mode = service.settings.training.retrain_schedule
    if mode == "off":
        return
    check = _start_if_due if mode == "in_service" else _request_if_due
    while True:
        try:
            await check(service)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retraining scheduler check failed")
        await asyncio.sleep(check_every_s)


async def _start_if_due(service: Any) -> None:
    due, why = await retrain_due(service)
    if due:
        request = await jobs.request(service.db, "retrain", "scheduler")
        if request.created:
            log.info("scheduled retraining job #%s: %s", request.job_id, why)
            await tell_moderators(service, f"Scheduled retraining job #{request.job_id} started: {why}.")
            service.start_retrain(request.job_id)


TRAINER_HINT = ("This deployment trains on the GPU trainer job (training.retrain_schedule = \"request\"): on the "
                "server, `docker compose -f deploy/compose.yaml --profile train run --rm trainer` (deploy/README.md, "
                "Retraining on the GPU); /retrain trains here instead, on this machine's CPU.")


async def retrain_request_due(service: Any) -> tuple[bool, str]:
    """"request" mode: due when at least ``retrain_min_new_examples`` expert examples were added
    since the newest adapter was trained (by the trainer job, /retrain or the CLI) and the last
    reminder is older than ``retrain_interval_hours``."""
    db: Database = service.db
    cfg = service.settings.training
    last = await jobs.latest(db, "retrain_request")
    if last and now() - last["created_at"] < cfg.retrain_interval_hours * 3600:
        hours = (now() - last["created_at"]) / 3600
        return False, f"moderators were told {hours:.1f} h ago; the interval is {cfg.retrain_interval_hours:g} h"
    since = float(await db.fetchval("SELECT COALESCE(MAX(created_at), 0) FROM adapters") or 0)
    new = await db.fetchval(
        "SELECT COUNT(*) FROM dataset_examples WHERE created_at > ? AND source IN (?, ?)", (since, *EXPERT_SOURCES)
    )
    if new < cfg.retrain_min_new_examples:
        return False, f"{new} new expert examples; {cfg.retrain_min_new_examples} are needed"
    return True, f"{new} new expert examples since the last adapter was trained"


async def _request_if_due(service: Any) -> None:
    due, why = await retrain_request_due(service)
    if not due:
        return
    request = await jobs.request(service.db, "retrain_request", "scheduler", {"reason": why})
    if not request.created:
        return
    await jobs.finish(service.db, request.job_id, "succeeded", result={"reason": why, "where": "trainer job"})
    log.info("retraining is due (%s); moderators told to run the trainer job", why)
    await tell_moderators(service, f"Retraining is due: {why}. {TRAINER_HINT}")


def start_scheduler(service: Any, check_every_s: float = 600.0) -> asyncio.Task:
    """Run ``retrain_scheduler`` as a background task of the running service."""
    return asyncio.create_task(retrain_scheduler(service, check_every_s), name="retrain-scheduler")
