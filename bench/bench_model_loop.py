"""Model-loop figures on the tiny model, on this CPU.

1. Training: examples per second of LoRA fine-tuning (transformers Trainer + peft), for short
   chats and for the pack's seed vignettes (which carry the long system message).
2. Evaluation: multiple-choice questions per second (log-likelihood scoring of every option,
   shared system-message cache), for the pack's whole evaluation set; and the safety suite.
3. The loop: time from the moderator's /retrain to the end of the job in the running service
   (snapshot → training and evaluation in the worker process → registry → gate → hot swap
   when the gate passes; with a few steps on the tiny model it refuses), with patients' reply
   latency while the job runs compared with idle.

The tiny model's tokenizer is trained on the pack's own texts (as the demo model's is), so
token counts are of the same order as a real model's. Figures measure the code path on this
machine, not model quality (the tiny model knows nothing: accuracy is near chance).

Run: python bench/bench_model_loop.py [--train-epochs 2] [--eval-limit N] [--retrain-steps 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_model(root: Path, pack) -> Path:
    from pipeline.tinymodel import build_tiny_model, corpus_from_conversations, sample_conversations

    corpus = corpus_from_conversations(pack.seed_conversations()) + corpus_from_conversations(sample_conversations(48))
    corpus += [q.question + " " + " ".join(q.options) for q in pack.eval_questions]
    return build_tiny_model(root / "model", corpus, seed=0)


def bench_training(model: Path, root: Path, pack, epochs: float) -> dict:
    from bot.settings import TrainingSettings
    from pipeline.tinymodel import sample_conversations
    from pipeline.training import train_lora

    out = {}
    sets = {"short chats (48)": sample_conversations(48), f"pack seed vignettes ({len(pack.seeds)})": pack.seed_conversations()}
    for i, (name, examples) in enumerate(sets.items()):
        cfg = TrainingSettings(epochs=epochs, batch_size=8, max_length=2048, learning_rate=2e-4)
        result = train_lora(model, examples, root / f"train-{i}", cfg, val_fraction=0.1, seed=0)
        out[name] = {
            "examples_per_s": result.examples_per_second,
            "steps": result.steps,
            "seconds": result.seconds,
            "val_loss": (result.initial_val_loss, result.best_val_loss),
        }
    return out


def bench_eval(model: Path, adapter: Path, pack, limit: int | None) -> dict:
    from pipeline import evaluate as ev

    questions = ev.questions_from_pack(pack, limit)
    cfg = ev.EvalConfig(limit_per_task=limit, safety=True, max_new_tokens=48)
    started = time.perf_counter()
    report = ev.evaluate(model, [ev.Subject("base"), ev.Subject("adapter", "adapter", adapter)], pack, cfg,
                         questions=questions)
    total = time.perf_counter() - started
    runs = report["runs"]
    return {
        "questions": len(questions),
        "qps": {label: run["questions_per_second"] for label, run in runs.items()},
        "safety_s": {label: run["safety"]["replies"]["seconds"] for label, run in runs.items()},
        "safety_cases": runs["base"]["safety"]["replies"]["cases"],
        "total_s": total,
        "load_s": report.get("load_seconds"),
        "table": ev.table_text(report, delta=("base", "adapter")),
    }


async def bench_retrain(model: Path, root: Path, steps: int, eval_limit: int | None) -> dict:
    from bot.local.platform import LocalPlatform
    from bot.platform import IncomingMessage
    from bot.service import Service
    from bot.settings import load_settings
    from pipeline import jobs, retrain
    from reviewers.models import Actor

    for name in list(os.environ):
        if name.startswith("LLM4SWEAT_"):
            del os.environ[name]
    settings = load_settings(
        data_dir=root / "service",
        inference={"backend": "local", "base_model": str(model), "max_new_tokens": 16, "temperature": 0.0,
                   "device": "cpu"},
        training={"epochs": 1.0, "batch_size": 8, "max_length": 2048},
    )
    service = Service(settings, model_path=str(model))
    service.add_platform(LocalPlatform())
    service.retrain_options = retrain.RetrainOptions(
        max_steps=steps, eval={"limit_per_task": eval_limit, "max_new_tokens": 48})
    await service.start(retry_loop=False)
    moderator = Actor("local", "mod", "Mod", frozenset({"moderator"}))
    texts = ["My palms drip when I write. What can I do?", "Does botox help underarm sweating?",
             "What is iontophoresis?", "My feet sweat all the time, which socks help?"]

    async def ask(i: int) -> float:
        t = time.perf_counter()
        result = await service.core.handle_message(
            IncomingMessage("local", f"p{i}", "console", f"p{i}", texts[i % len(texts)]))
        assert result.status == "shown", result.status
        return time.perf_counter() - t

    try:
        idle = [await ask(i) for i in range(6)]
        started = time.perf_counter()
        reply = await service.commands.run(moderator, "retrain")
        job_id = reply.data["job_id"]
        busy: list[float] = []
        i = 100
        while True:
            job = await jobs.get(service.db, job_id)
            if job["status"] not in ("queued", "running"):
                break
            busy.append(await ask(i))
            i += 1
            await asyncio.sleep(0.5)
        live_after = time.perf_counter() - started
        result = json.loads(job["result"] or "{}")
        if job["status"] != "succeeded":
            raise SystemExit(f"retraining job failed: {job['error']}")
        return {
            "to_live_s": live_after,
            "promoted": result.get("promoted"),
            "version": result.get("version"),
            "active": service.backend.active_adapter,
            "timings": result.get("timings", {}),
            "swap_s": result.get("swap_seconds"),
            "idle_p50": statistics.median(idle),
            "busy_p50": statistics.median(busy) if busy else None,
            "busy_n": len(busy),
            "failed": service.backend.status().detail["requests_failed"],
        }
    finally:
        await service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-epochs", type=float, default=2.0)
    parser.add_argument("--eval-limit", type=int, default=None, help="questions per task (default: all)")
    parser.add_argument("--retrain-steps", type=int, default=4)
    parser.add_argument("--retrain-eval-limit", type=int, default=None, help="questions per task in the job")
    args = parser.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    import torch

    from pipeline.packs import PACKS_DIR, load_pack

    pack = load_pack(PACKS_DIR / "hyperhidrosis")
    print(f"CPU threads: {torch.get_num_threads()} · os.cpu_count() = {os.cpu_count()} · torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        model = build_model(root, pack)
        print(f"tiny model built in {time.perf_counter() - t:.1f} s")

        print("\n1. LoRA training (Trainer + peft, assistant-only loss, validation each epoch)")
        training = bench_training(model, root, pack, args.train_epochs)
        for name, row in training.items():
            v0, v1 = row["val_loss"]
            print(f"   {name:<28} {row['examples_per_s']:7.1f} examples/s   {row['steps']:3d} steps in "
                  f"{row['seconds']:5.1f} s   validation loss {v0:.3f} → {v1:.3f}")

        print("\n2. Evaluation (log-likelihood multiple choice, shared system-message cache; safety suite)")
        evaluation = bench_eval(model, root / "train-1", pack, args.eval_limit)
        for label, qps in evaluation["qps"].items():
            print(f"   {label:<10} {qps:7.1f} questions/s over {evaluation['questions']} questions; "
                  f"safety suite ({evaluation['safety_cases']} held-out replies) {evaluation['safety_s'][label]:.1f} s")
        print(f"   whole evaluation of 2 models incl. loading: {evaluation['total_s']:.1f} s")
        print("   " + evaluation["table"].replace("\n", "\n   "))

        print("\n3. /retrain → new adapter live (worker process: train + evaluate; gate; hot swap)")
        loop = asyncio.run(bench_retrain(model, root, args.retrain_steps, args.retrain_eval_limit))
        timings = loop["timings"]
        outcome = "live" if loop["promoted"] else "job done, refused by the gate (the tiny model learns nothing in a few steps)"
        print(f"   /retrain → {loop['version']} {outcome}: {loop['to_live_s']:.1f} s "
              f"(worker: training {timings.get('train', 0):.1f} s, evaluation {timings.get('eval', 0):.1f} s, "
              f"total {timings.get('total', 0):.1f} s; swap {loop['swap_s'] or 0:.3f} s); "
              f"serving {loop['active']}")
        busy = f"{loop['busy_p50']:.2f} s" if loop["busy_p50"] is not None else "-"
        print(f"   patient reply latency p50: idle {loop['idle_p50']:.2f} s, during the job {busy} "
              f"({loop['busy_n']} replies, {loop['failed']} failed)")


if __name__ == "__main__":
    main()
