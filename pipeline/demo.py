"""The offline demo model: tiny, built and trained on this machine in well under a minute.

Why: a new user must be able to run the product on a laptop with no GPU and no model
download. ``llm4sweat demo`` (and ``run`` when no real model is available) serves this model.
It writes on-topic text after a short full fine-tune on the condition pack's seed examples,
but it is a toy: ``demo.json`` in its directory says ``demo: true`` so the service labels
every reply as a demo that gives no medical advice.

It has one prompt format for training, serving and evaluation: ``task_only`` (its system turn
is the task line alone, ``Task: diagnosis``; see ``bot.chat_format``). The marker says so
(``prompt_format``), and the local backend, the trainer (a retrain on top of it) and the
evaluator read it there.

The build is idempotent: a valid model for the same seed data is reused (a second call takes
milliseconds), and a build happens in a work directory that is renamed into place at the
end, so an interrupted build never leaves a broken model behind.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bot.chat_format import for_format
from bot.settings import TrainingSettings
from pipeline.tinymodel import build_tiny_model, corpus_from_conversations
from pipeline.training import TrainProgress, dataset_hash, train_lora

logger = logging.getLogger(__name__)

DEMO_DIRNAME = "demo-model"
MARKER_NAME = "demo.json"
RECIPE_VERSION = 4  # bump when the build below changes, so old demo models are rebuilt
DEMO_LABEL = "Demo model: tiny, trained offline on seed examples. It gives no medical advice."
TARGET_STEPS = 600
TIME_BUDGET_S = 90.0
# Word-sized tokens: with ~1,000 tokens the model writes word fragments; with 4,000 it writes
# words (measured: 600 steps in ~75 s on a loaded 2-core machine, loss 0.01 on the seeds).
DEMO_VOCAB_SIZE = 4000
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", MARKER_NAME)
DEMO_PROMPT_FORMAT = "task_only"


def demo_model_dir(data_dir: Path) -> Path:
    return Path(data_dir) / DEMO_DIRNAME


def read_marker(model_dir: Path) -> dict[str, Any] | None:
    """The demo marker of ``model_dir``, or None when it is not a demo model."""
    try:
        data = json.loads((Path(model_dir) / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("demo") is True else None


def is_demo_model(model_dir: Path | str) -> bool:
    """True when ``model_dir`` is a demo model (the service labels its replies)."""
    return read_marker(Path(model_dir)) is not None


def _is_valid(model_dir: Path, seed_hash: str) -> bool:
    if not all((model_dir / f).is_file() for f in REQUIRED_FILES):
        return False
    marker = read_marker(model_dir)
    return bool(marker) and marker.get("seed_hash") == seed_hash and marker.get("recipe") == RECIPE_VERSION


def build_demo_model(
    data_dir: Path,
    seed_conversations: list[list[dict[str, str]]],
    progress: Callable[[TrainProgress], None] | None = None,
) -> Path:
    """Return ``data_dir/demo-model``, building and training it first if needed.

    Tokenizer trained on the seed texts, tiny Llama initialised with a fixed seed, then a full
    fine-tune of about ``TARGET_STEPS`` steps (capped at ``TIME_BUDGET_S`` seconds) so the
    model writes text on the pack's topic. Reused as-is when already built from the same
    seed conversations. The conversations should carry their task line
    (``bot.chat_format.with_task``): it is all of the system turn this model keeps.
    """
    if not seed_conversations:
        raise ValueError("the demo model needs seed conversations to learn from")
    data_dir = Path(data_dir)
    target = demo_model_dir(data_dir)
    seed_hash = dataset_hash(seed_conversations)
    if _is_valid(target, seed_hash):
        return target

    started = time.monotonic()
    data_dir.mkdir(parents=True, exist_ok=True)
    work = data_dir / f".{DEMO_DIRNAME}.build-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        logger.info("building the demo model from %d seed conversations", len(seed_conversations))
        # The pack's system prompt is ~750 tokens for this tokenizer; training over it would
        # cost ~10x more per step than the dialogue itself and the model could not learn
        # anything on-topic within a minute. The demo model therefore learns (and, per the
        # marker, is served and evaluated with) the task line, user and assistant turns only.
        dialogues = [d for d in (for_format(c, DEMO_PROMPT_FORMAT) for c in seed_conversations)
                     if any(m.get("role") == "assistant" for m in d)]
        if not dialogues:
            raise ValueError("the seed conversations hold no user/assistant turns")
        base = build_tiny_model(work / "base", corpus_from_conversations(dialogues), seed=0, vocab_size=DEMO_VOCAB_SIZE)
        batch_size = 8
        steps_per_epoch = math.ceil(len(dialogues) / batch_size)
        cfg = TrainingSettings(
            learning_rate=3e-3,
            epochs=max(1.0, TARGET_STEPS / steps_per_epoch),
            batch_size=batch_size,
            max_length=512,
        )
        result = train_lora(
            base,
            dialogues,
            work / "trained",
            cfg,
            val_fraction=0.0,
            seed=0,
            progress=progress,
            full_finetune=True,
            max_steps=TARGET_STEPS,
            max_seconds=TIME_BUDGET_S,
            num_threads=1,  # a model this small gains nothing from more threads, and loses a lot under contention
        )
        marker = {
            "demo": True,
            "label": DEMO_LABEL,
            "recipe": RECIPE_VERSION,
            "seed_hash": seed_hash,
            "seed_conversations": len(seed_conversations),
            # Read by the local backend, the trainer and the evaluator (bot.chat_format).
            "prompt_format": DEMO_PROMPT_FORMAT,
            "train_steps": result.steps,
            "final_train_loss": result.train_loss[-1] if result.train_loss else None,
            "build_seconds": round(time.monotonic() - started, 1),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        trained = work / "trained"
        (trained / MARKER_NAME).write_text(json.dumps(marker, indent=2))
        if target.exists():
            os.replace(target, work / "previous")  # stale or broken: replace it
        try:
            os.replace(trained, target)
        except OSError:
            if not _is_valid(target, seed_hash):  # another process finished first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("demo model ready at %s in %.1f s", target, time.monotonic() - started)
    return target
