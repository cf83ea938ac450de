"""LoRA supervised fine-tuning over the transformers Trainer.

Why this shape:

- The loss is on the assistant turns only. The prompt (system text, guidance, the patient's
  words) is context, not something the model should learn to write; ``tokenize_example``
  labels every other token -100. It works from the base model's own chat template by
  rendering each conversation prefix, so it needs no special markers in the template and
  fits Llama-3.2-Instruct as well as the tiny test model.
- A held-out validation split, evaluated each epoch, with early stopping: small expert
  datasets overfit quickly and the best epoch is kept (``load_best_model_at_end``).
- The Trainer writes into a work directory beside ``out_dir`` and the finished adapter is
  renamed into place at the very end. A Ctrl-C, a cancel or a crash therefore never leaves a
  half-written adapter where the registry expects a finished one.
- Every adapter carries ``manifest.json`` (base model, dataset hash, settings, metrics,
  time, code version, prompt format) so an adapter on disk can always be traced to what made it.
- Examples are rendered exactly as serving renders them (``bot.chat_format``): the base
  model's prompt format (the demo model: system cut to its task line) and the pinned template
  date. The task line itself comes with the examples (the dataset export adds it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import subprocess
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bot.chat_format import DEFAULT_TEMPLATE_DATE, for_format, model_prompt_format, render
from bot.files import make_private
from bot.settings import TrainingSettings

logger = logging.getLogger(__name__)
# transformers 5 warns about its own deprecated call when peft wraps a model: noise, not ours.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

IGNORE_INDEX = -100
TINY_MODEL_PARAMS = 20_000_000
MANIFEST_NAME = "manifest.json"

Messages = list[dict[str, str]]


class TrainingCancelled(Exception):
    """Training was stopped on request; nothing was written at the output directory."""


@dataclass
class TrainProgress:
    """One progress report, sent after every optimizer step and every evaluation."""

    step: int
    total_steps: int
    epoch: float
    train_loss: float | None = None
    val_loss: float | None = None
    phase: str = "train"  # "train" | "eval"


@dataclass
class TrainResult:
    out_dir: Path
    kind: str  # "lora" | "full"
    train_loss: list[float]
    val_loss: list[float]
    initial_val_loss: float | None
    best_val_loss: float | None
    steps: int
    epochs_run: float
    stopped_early: bool
    seconds: float
    examples_per_second: float
    num_train: int
    num_val: int
    dataset_hash: str
    manifest: dict[str, Any] = field(default_factory=dict)


# --- data -------------------------------------------------------------------------------------


def dataset_hash(examples: Sequence[Messages]) -> str:
    """sha256 of the canonical JSON of ``examples``: the same data always gives the same hash."""
    canonical = json.dumps(list(examples), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def tokenize_example(tokenizer: Any, messages: Messages, max_length: int,
                     template_date: str = DEFAULT_TEMPLATE_DATE) -> dict[str, list[int]]:
    """Token ids and labels for one conversation; only assistant turns carry a loss.

    For each assistant message the conversation is rendered up to it with the generation
    prompt (everything the model is given) and up to and including it; the characters in
    between are the assistant's reply plus its end-of-turn token, which the model must learn
    to write. Tokens are labelled from character offsets, so a BPE merge across the
    boundary cannot shift the mask. Right-truncated to ``max_length``. Rendered with
    ``bot.chat_format.render`` and ``template_date``, as serving renders a prompt.
    """

    def _render(tokenizer: Any, messages: Messages, add_generation_prompt: bool) -> str:
        return render(tokenizer, messages, add_generation_prompt=add_generation_prompt, template_date=template_date)

    full_text = _render(tokenizer, messages, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prefix = _render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (full_text.startswith(upto) and upto.startswith(prefix)):
            raise ValueError(
                "the chat template does not render conversations prefix by prefix; "
                "cannot tell assistant tokens from prompt tokens"
            )
        spans.append((len(prefix), len(upto)))
    encoded = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    span_idx = 0
    for t, (start, end) in enumerate(encoded["offset_mapping"]):
        while span_idx < len(spans) and spans[span_idx][1] <= start:
            span_idx += 1
        if span_idx < len(spans) and start >= spans[span_idx][0] and end <= spans[span_idx][1] and end > start:
            labels[t] = input_ids[t]
    input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def training_rows(tokenizer: Any, examples: Sequence[Messages], prompt_format: str, max_length: int,
                  template_date: str = DEFAULT_TEMPLATE_DATE) -> list[dict[str, list[int]]]:
    """What the trainer feeds the model for ``examples``: each in the base model's prompt
    format (``bot.chat_format.for_format``), tokenized by :func:`tokenize_example`; examples
    with no assistant token within ``max_length`` are left out (with a warning)."""
    rows = [tokenize_example(tokenizer, for_format(c, prompt_format), max_length, template_date) for c in examples]
    kept = [r for r in rows if any(label != IGNORE_INDEX for label in r["labels"])]
    if len(kept) < len(rows):
        logger.warning("%d examples have no assistant tokens within max_length and are skipped", len(rows) - len(kept))
    return kept


class _Collator:
    """Right-pads a batch; padding never carries a loss."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            pad = width - len(f["input_ids"])
            batch["input_ids"].append(f["input_ids"] + [self.pad_id] * pad)
            batch["attention_mask"].append(f["attention_mask"] + [0] * pad)
            batch["labels"].append(f["labels"] + [IGNORE_INDEX] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def split_examples(examples: Sequence[Messages], val_fraction: float, seed: int) -> tuple[list[Messages], list[Messages]]:
    """A seeded shuffle, then the first ``val_fraction`` (at least one when possible) held out."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = 0
    if val_fraction > 0 and len(examples) >= 2:
        n_val = min(len(examples) - 1, max(1, round(len(examples) * val_fraction)))
    val = [examples[i] for i in order[:n_val]]
    train = [examples[i] for i in order[n_val:]]
    return train, val


# --- provenance -------------------------------------------------------------------------------


def code_version() -> dict[str, str | None]:
    """Package version and git commit (when running from a checkout) of the code that trained."""
    try:
        from importlib.metadata import version

        package = version("llm4sweat")
    except Exception:  # not installed as a distribution
        package = None
    commit = None
    try:
        repo = Path(__file__).resolve().parent.parent
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if out.returncode == 0:
            commit = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"package": package, "git_commit": commit}


def read_manifest(adapter_dir: Path) -> dict[str, Any]:
    return json.loads((Path(adapter_dir) / MANIFEST_NAME).read_text())


# --- training ---------------------------------------------------------------------------------


def _device() -> tuple[str, bool]:
    import torch

    if torch.cuda.is_available():
        return "cuda", bool(torch.cuda.is_bf16_supported())
    return "cpu", False


def _make_callbacks(
    progress: Callable[[TrainProgress], None] | None,
    cancel: Callable[[], bool] | None,
    max_seconds: float | None,
) -> Any:
    from transformers import TrainerCallback

    class _Reporter(TrainerCallback):
        """Progress reports, cancel checks and the time budget, once per optimizer step."""

        def __init__(self) -> None:
            self.started = time.monotonic()
            self.last_loss: float | None = None
            self.last_val: float | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.last_loss = float(logs["loss"])

        def on_step_end(self, args, state, control, **kwargs):
            if cancel is not None and cancel():
                raise TrainingCancelled("training cancelled")
            if progress is not None:
                progress(
                    TrainProgress(state.global_step, state.max_steps, float(state.epoch or 0.0), self.last_loss, self.last_val)
                )
            if max_seconds is not None and time.monotonic() - self.started > max_seconds:
                logger.info("training time budget of %.0f s reached at step %d", max_seconds, state.global_step)
                control.should_training_stop = True

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if metrics and "eval_loss" in metrics:
                self.last_val = float(metrics["eval_loss"])
            if progress is not None:
                progress(
                    TrainProgress(
                        state.global_step, state.max_steps, float(state.epoch or 0.0), self.last_loss, self.last_val, "eval"
                    )
                )

    return _Reporter()


def train_lora(
    base_model: str | Path,
    examples: list[Messages],
    out_dir: Path,
    cfg: TrainingSettings,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: Callable[[TrainProgress], None] | None = None,
    full_finetune: bool = False,
    cancel: Callable[[], bool] | None = None,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    early_stopping_patience: int = 2,
    overwrite: bool = False,
    num_threads: int | None = None,
    template_date: str = DEFAULT_TEMPLATE_DATE,
) -> TrainResult:
    """Fine-tune ``base_model`` on chat ``examples``; write the result at ``out_dir``.

    LoRA by default: ``out_dir`` holds a PEFT adapter (adapter_config.json,
    adapter_model.safetensors) that peft and vLLM load, plus manifest.json. With
    ``full_finetune`` every weight is trained and a full model + tokenizer is saved instead
    (the offline demo model). ``cancel`` is polled after every step (return True to stop:
    TrainingCancelled is raised); ``max_steps``/``max_seconds`` bound the run. Nothing
    appears at ``out_dir`` unless training finished.

    ``num_threads`` sets torch's CPU threads for the run (restored afterwards); None means
    torch's default, except 1 for tiny models (< 20M parameters). Pass 1 when another
    process (the serving bot) shares a small CPU: OpenMP threads that compete for cores with
    another process can make training ten times slower (see bench/bench_training.py).

    ``template_date`` (``prompt.template_date``) is the date the chat template prints; the
    examples are given in the base model's prompt format (``bot.chat_format``), as serving
    gives them.
    """
    import torch

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; adapters are never overwritten in place")
    if not examples:
        raise ValueError("no training examples")
    previous_threads = torch.get_num_threads()
    try:
        return _train(
            base_model, examples, out_dir, cfg, val_fraction=val_fraction, seed=seed, progress=progress,
            full_finetune=full_finetune, cancel=cancel, max_steps=max_steps, max_seconds=max_seconds,
            early_stopping_patience=early_stopping_patience, overwrite=overwrite, num_threads=num_threads,
            template_date=template_date,
        )
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    base_model: str | Path,
    examples: list[Messages],
    out_dir: Path,
    cfg: TrainingSettings,
    *,
    val_fraction: float,
    seed: int,
    progress: Callable[[TrainProgress], None] | None,
    full_finetune: bool,
    cancel: Callable[[], bool] | None,
    max_steps: int | None,
    max_seconds: float | None,
    early_stopping_patience: int,
    overwrite: bool,
    num_threads: int | None,
    template_date: str,
) -> TrainResult:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        EarlyStoppingCallback,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    started = time.monotonic()
    device, use_bf16 = _device()
    set_seed(seed)

    tokenizer = AutoTokenizer.from_pretrained(str(base_model), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompt_format = model_prompt_format(base_model)
    train_msgs, val_msgs = split_examples(examples, val_fraction, seed)
    train_rows = training_rows(tokenizer, train_msgs, prompt_format, cfg.max_length, template_date)
    val_rows = training_rows(tokenizer, val_msgs, prompt_format, cfg.max_length, template_date)
    if not train_rows:
        raise ValueError("no training example has an assistant reply within max_length")

    dtype = torch.bfloat16 if use_bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(base_model), local_files_only=True, dtype=dtype)
    if num_threads is None and device == "cpu" and model.num_parameters() < TINY_MODEL_PARAMS:
        num_threads = 1  # a tiny model gains nothing from a second thread and loses a lot under contention
    if num_threads is not None:
        torch.set_num_threads(max(1, num_threads))
    if not full_finetune:
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)

    work = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True, mode=0o700)  # weights learned from patients' words: owner-only
    try:
        has_val = bool(val_rows)
        strategy = "epoch" if has_val else "no"
        args = TrainingArguments(
            output_dir=str(work / "checkpoints"),
            num_train_epochs=cfg.epochs,
            max_steps=max_steps if max_steps is not None else -1,
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=0,
            logging_strategy="epoch",
            eval_strategy=strategy,
            save_strategy=strategy,
            save_only_model=True,
            save_total_limit=2,
            load_best_model_at_end=has_val,
            metric_for_best_model="eval_loss" if has_val else None,
            greater_is_better=False if has_val else None,
            eval_on_start=has_val,
            bf16=use_bf16,
            use_cpu=device == "cpu",
            seed=seed,
            data_seed=seed,
            report_to=[],
            disable_tqdm=True,
            remove_unused_columns=False,
            dataloader_pin_memory=False,
            dataloader_num_workers=0,
        )
        callbacks = [_make_callbacks(progress, cancel, max_seconds)]
        if has_val:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
        trainer = Trainer(
            model=model,
            args=args,
            data_collator=_Collator(tokenizer.pad_token_id),
            train_dataset=train_rows,
            eval_dataset=val_rows or None,
            processing_class=tokenizer,
            callbacks=callbacks,
        )
        trainer.remove_callback(PrinterCallback)
        output = trainer.train()
        state = trainer.state

        train_loss = [float(e["loss"]) for e in state.log_history if "loss" in e]
        evals = [(float(e["epoch"]), float(e["eval_loss"])) for e in state.log_history if "eval_loss" in e]
        initial_val = evals[0][1] if evals and evals[0][0] == 0 else None
        val_loss = [v for ep, v in evals if ep > 0]
        best_val = float(state.best_metric) if state.best_metric is not None else None
        planned_steps = state.max_steps
        stopped_early = state.global_step < planned_steps
        seconds = time.monotonic() - started
        train_seconds = float(output.metrics.get("train_runtime", seconds))
        examples_seen = float(output.metrics.get("train_samples_per_second", 0.0))

        final = work / "final"
        kind = "full" if full_finetune else "lora"
        trainer.model.save_pretrained(final)
        if full_finetune:
            tokenizer.save_pretrained(final)
        manifest: dict[str, Any] = {
            "kind": kind,
            "base_model": str(base_model),
            "dataset_hash": dataset_hash(examples),
            "num_examples": len(examples),
            "num_train": len(train_rows),
            "num_val": len(val_rows),
            "val_fraction": val_fraction,
            "seed": seed,
            "settings": cfg.model_dump(mode="json"),
            "prompt": {"format": prompt_format, "template_date": template_date, "task_line": "Task: <task>"},
            "metrics": {
                "train_loss": train_loss,
                "val_loss": val_loss,
                "initial_val_loss": initial_val,
                "best_val_loss": best_val,
                "steps": state.global_step,
                "epochs_run": float(state.epoch or 0.0),
                "stopped_early": stopped_early,
            },
            "training_seconds": round(train_seconds, 3),
            "examples_per_second": round(examples_seen, 3),
            "device": device,
            "torch_threads": torch.get_num_threads(),
            "code_version": code_version(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (final / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        _move_into_place(final, out_dir, work, overwrite)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    logger.info(
        "trained %s (%d steps, val loss %s -> %s) in %.1f s -> %s",
        kind, state.global_step, initial_val, best_val, seconds, out_dir,
    )
    return TrainResult(
        out_dir=out_dir,
        kind=kind,
        train_loss=train_loss,
        val_loss=val_loss,
        initial_val_loss=initial_val,
        best_val_loss=best_val,
        steps=state.global_step,
        epochs_run=float(state.epoch or 0.0),
        stopped_early=stopped_early,
        seconds=seconds,
        examples_per_second=examples_seen,
        num_train=len(train_rows),
        num_val=len(val_rows),
        dataset_hash=manifest["dataset_hash"],
        manifest=manifest,
    )


def _move_into_place(final: Path, out_dir: Path, work: Path, overwrite: bool) -> None:
    """Rename the finished directory to ``out_dir`` (same filesystem: atomic)."""
    if out_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{out_dir} appeared while training; the new result was discarded")
        os.replace(out_dir, work / "previous")
    make_private(final)  # directories 0700, files 0600, before it appears under its name
    os.replace(final, out_dir)


def result_summary(result: TrainResult) -> dict[str, Any]:
    """A JSON-able summary (for jobs and the CLI)."""
    data = asdict(result)
    data["out_dir"] = str(result.out_dir)
    data.pop("manifest", None)
    if data.get("best_val_loss") is not None and math.isnan(data["best_val_loss"]):
        data["best_val_loss"] = None
    return data
