"""Training throughput on the tiny model: examples per second, LoRA and full fine-tune.

How it is measured: the tiny Llama model (hidden 128, 2 layers, head size 32) is built in a
temp dir; ``train_lora`` runs on ``--examples`` synthetic chat examples (system + user +
assistant, ~80 tokens each) for ``--epochs`` epochs, batch size 8, on the CPU, with the 10%
validation split evaluated every epoch (as in real runs). Examples/second is the Trainer's
own ``train_samples_per_second`` (training examples x epochs / training loop time,
evaluation and saving included), and end to end = examples x epochs / wall time of the
whole call (model load, tokenization, training, saving the adapter and its manifest).
Shown for 1 and 2 torch threads: with 2 OpenMP threads per process and other processes
busy on the same 2 cores, training can be tens of times slower (watch the load average).

Run: python bench/bench_training.py [--examples 200] [--epochs 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.settings import TrainingSettings  # noqa: E402
from pipeline.tinymodel import build_tiny_model, corpus_from_conversations, sample_conversations  # noqa: E402
from pipeline.training import train_lora  # noqa: E402


def main(n_examples: int, epochs: float, threads: list[int]) -> None:
    logging.basicConfig(level=logging.WARNING)
    examples = sample_conversations(n_examples)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = build_tiny_model(root / "model", corpus_from_conversations(examples), seed=0)
        cfg = TrainingSettings(learning_rate=3e-3, epochs=epochs, batch_size=8, max_length=256)
        print(
            f"tiny model, {n_examples} examples, {epochs:g} epochs, batch 8, CPU cores {os.cpu_count()}, "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        for n_threads in threads:
            for label, full in (("LoRA r=8", False), ("full fine-tune", True)):
                started = time.perf_counter()
                out = root / f"{label.replace(' ', '-')}-{n_threads}"
                result = train_lora(model_dir, examples, out, cfg, full_finetune=full, num_threads=n_threads)
                wall = time.perf_counter() - started
                seen = result.num_train * result.epochs_run
                print(
                    f"  {label:15s} torch threads {n_threads}: {result.examples_per_second:7.1f} examples/s (trainer), "
                    f"{seen / wall:7.1f} end to end ({wall:.1f} s), {result.steps} steps, "
                    f"val loss {result.initial_val_loss:.3f} -> {result.best_val_loss:.3f}"
                )
    print(__doc__.split("Run:")[0].split("\n\n", 1)[1].strip())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU threads to try")
    args = parser.parse_args()
    main(args.examples, args.epochs, args.threads)
