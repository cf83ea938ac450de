"""The retraining worker: trains an adapter and evaluates it, in its own process.

``python -m pipeline.retrain_worker SPEC.json``

Why a separate process: training and evaluation keep the CPU (or GPU) busy for minutes to
hours, hold gigabytes of memory and release the GIL only partly; in a process of its own the
bot keeps answering patients, a crash cannot take the service down, and the operating system
frees everything when it ends. The worker runs at a lower priority (``nice``) so that, on a
small machine, answering patients wins over training.

Protocol: the spec is a JSON file written by ``pipeline.retrain`` (see ``run_worker`` for the
keys). The worker prints one JSON object per line on stdout — ``{"event": "progress", ...}``
while it works, then ``{"event": "done"}`` — and writes its result to ``spec["result"]``
(atomically). Logs go to stderr. Exit code 0: done; 3: cancelled; 1: failed (the last stderr
lines say why). SIGTERM, or the parent process going away, cancels: training stops at the
next step and nothing is left where the adapter would have been.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("llm4sweat.worker")

EXIT_CANCELLED = 3


class Cancelled(Exception):
    pass


class _State:
    def __init__(self) -> None:
        self.cancelled = False
        self.parent = os.getppid()
        self.last_emit = 0.0

    def should_stop(self) -> bool:
        if os.getppid() != self.parent:  # the service died: nobody would collect the result
            self.cancelled = True
        return self.cancelled


STATE = _State()


def emit(event: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}, default=str) + "\n")
    sys.stdout.flush()


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the parent dies (belt and braces with the ppid check)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _on_sigterm(signum: int, frame: Any) -> None:
    STATE.cancelled = True


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train (unless ``spec["train"]`` is false) and evaluate; returns the result dict.

    Spec keys: base_model, dataset (JSONL of {"messages": [...]}), out_dir, version,
    training (TrainingSettings fields), val_fraction, seed, max_steps, max_seconds, pack
    (folder), eval (EvalConfig fields), subjects (extra models to evaluate: base and live,
    as {label, version, path}), reuse_runs (runs of an earlier evaluation on the same set,
    by label), order, titles and delta (table columns), eval_dir (JSON + PNG go there), result.
    """
    from bot.settings import TrainingSettings
    from pipeline import evaluate as ev
    from pipeline.packs import load_pack
    from pipeline.training import TrainingCancelled, TrainProgress, result_summary, train_lora

    result: dict[str, Any] = {"version": spec["version"], "timings": {}}
    started = time.monotonic()
    out_dir = Path(spec["out_dir"])

    if spec.get("train", True):
        examples = [json.loads(line)["messages"] for line in Path(spec["dataset"]).read_text(encoding="utf-8").splitlines()
                    if line.strip()]
        cfg = TrainingSettings(**spec.get("training", {}))

        def on_progress(p: TrainProgress) -> None:
            now = time.monotonic()
            if p.phase == "eval" or now - STATE.last_emit > 0.5 or p.step == p.total_steps:
                STATE.last_emit = now
                emit("progress", phase="train", step=p.step, total=p.total_steps, epoch=round(p.epoch, 2),
                     train_loss=p.train_loss, val_loss=p.val_loss)

        emit("progress", phase="train", step=0, total=None, examples=len(examples))
        try:
            trained = train_lora(
                spec["base_model"], examples, out_dir, cfg,
                val_fraction=float(spec.get("val_fraction", 0.1)), seed=int(spec.get("seed", 0)),
                progress=on_progress, cancel=STATE.should_stop,
                max_steps=spec.get("max_steps"), max_seconds=spec.get("max_seconds"),
                **({"template_date": spec["template_date"]} if "template_date" in spec else {}),
            )
        except TrainingCancelled:
            raise Cancelled("training cancelled") from None
        result["training"] = result_summary(trained)
        result["manifest"] = trained.manifest
        result["timings"]["train"] = round(time.monotonic() - started, 3)

    if STATE.should_stop():
        raise Cancelled("cancelled after training")

    pack = load_pack(spec["pack"])
    eval_cfg = ev.EvalConfig(**spec.get("eval", {}))
    subjects = [ev.Subject(s["label"], s.get("version"), Path(s["path"]) if s.get("path") else None)
                for s in spec.get("subjects", [])]
    if spec.get("train", True):  # the new adapter; in evaluation-only runs the spec lists every subject
        subjects.append(ev.Subject(spec["version"], spec["version"], out_dir))
    eval_started = time.monotonic()

    def on_eval(phase: str, done: int, total: int) -> None:
        if STATE.should_stop():
            raise Cancelled("cancelled during evaluation")
        now = time.monotonic()
        if now - STATE.last_emit > 0.5 or done == total:
            STATE.last_emit = now
            emit("progress", phase="eval", step=done, total=total, what=phase)

    report = ev.evaluate(spec["base_model"], subjects, pack, eval_cfg, progress=on_eval)
    result["timings"]["eval"] = round(time.monotonic() - eval_started, 3)
    # Runs reused from earlier evaluations on the same set (same eval_hash) join the report.
    reused = {label: run for label, run in (spec.get("reuse_runs") or {}).items() if label not in report["runs"]}
    if reused:
        report["runs"] = {**reused, **report["runs"]}
        report["reused"] = sorted(reused)
    for label, title in (spec.get("titles") or {}).items():  # column names: "v2 (live)", "v3 (candidate)"
        if label in report["runs"]:
            report["runs"][label] = {**report["runs"][label], "title": title}
    order = [label for label in spec.get("order") or report["runs"] if label in report["runs"]]
    report["order"] = order
    delta = tuple(spec["delta"]) if spec.get("delta") else None
    if spec.get("eval_dir"):
        paths = ev.write_outputs(report, Path(spec["eval_dir"]), order, delta)
        result["outputs"] = {k: str(v) for k, v in paths.items()}
    else:
        report["table"] = ev.table_text(report, order, delta)
    result["evaluation"] = report
    result["timings"]["total"] = round(time.monotonic() - started, 3)
    return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pipeline.retrain_worker SPEC.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    signal.signal(signal.SIGTERM, _on_sigterm)
    _die_with_parent()
    niceness = int(spec.get("nice", 10))
    if niceness:
        try:
            os.nice(niceness)
        except OSError:
            pass
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    try:
        result = run_worker(spec)
    except Cancelled as exc:
        log.warning("%s", exc)
        emit("cancelled", message=str(exc))
        return EXIT_CANCELLED
    except Exception as exc:
        log.exception("worker failed")
        emit("error", message=f"{type(exc).__name__}: {exc}")
        return 1
    path = Path(spec["result"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, ensure_ascii=False, default=str))
    tmp.replace(path)
    emit("done", result=str(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
