"""The tiny model, assistant-only loss masking, LoRA training, adapters on disk, the demo model."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from bot.settings import TrainingSettings
from pipeline.tinymodel import corpus_from_conversations, sample_conversations
from pipeline.training import (
    IGNORE_INDEX,
    TrainingCancelled,
    TrainProgress,
    dataset_hash,
    tokenize_example,
    train_lora,
)

CONVERSATION = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "My hands sweat a lot."},
    {"role": "assistant", "content": "That may be palmar hyperhidrosis."},
    {"role": "user", "content": "What can I do?"},
    {"role": "assistant", "content": "Try a clinical strength antiperspirant."},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)


def test_tiny_model_is_deterministic_and_vllm_shaped(tiny_model_dir: Path, tmp_path: Path) -> None:
    from pipeline.tinymodel import build_tiny_model

    corpus = corpus_from_conversations(sample_conversations(12))
    a = build_tiny_model(tmp_path / "a", corpus, seed=3)
    b = build_tiny_model(tmp_path / "b", corpus, seed=3)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["hidden_size"] // config["num_attention_heads"] == 32  # vLLM CPU needs >= 32
    assert config["head_dim"] == 32 and config["num_key_value_heads"] == 2


def test_chat_template_and_special_tokens(tokenizer) -> None:
    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_tokens_to_ids("<|eot_id|>") in ids
    assert tokenizer.decode(ids, skip_special_tokens=True).count("<|") == 0
    assert tokenizer.eos_token == "<|eot_id|>" and tokenizer.pad_token is not None


def test_prompt_tokens_are_masked_and_assistant_tokens_are_not(tokenizer) -> None:
    row = tokenize_example(tokenizer, CONVERSATION, max_length=1024)
    ids, labels = row["input_ids"], row["labels"]
    assert len(ids) == len(labels) == len(row["attention_mask"])
    learned = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    masked = [i for i, label in zip(ids, labels) if label == IGNORE_INDEX]
    # Exactly the assistant replies, each with its end-of-turn token, carry a loss ...
    eot = "<|eot_id|>"
    expected = "That may be palmar hyperhidrosis." + eot + "Try a clinical strength antiperspirant." + eot
    assert tokenizer.decode(learned, skip_special_tokens=False) == expected
    # ... and nothing of the system prompt, the user's words or the headers does.
    prompt_text = tokenizer.decode(masked, skip_special_tokens=False)
    assert "My hands sweat a lot." in prompt_text and "What can I do?" in prompt_text
    assert "palmar" not in prompt_text and "antiperspirant" not in prompt_text
    assert all(label == i for i, label in zip(ids, labels) if label != IGNORE_INDEX)
    assert labels[0] == IGNORE_INDEX


def test_truncation_keeps_lengths_aligned(tokenizer) -> None:
    row = tokenize_example(tokenizer, CONVERSATION, max_length=20)
    assert len(row["input_ids"]) == len(row["labels"]) == 20
    assert all(label == IGNORE_INDEX for label in row["labels"])  # the replies are beyond 20 tokens


def test_dataset_hash_is_canonical() -> None:
    a = [[{"role": "user", "content": "x"}, {"content": "y", "role": "assistant"}]]
    b = [[{"content": "x", "role": "user"}, {"role": "assistant", "content": "y"}]]
    assert dataset_hash(a) == dataset_hash(b)
    assert dataset_hash(a) != dataset_hash([[{"role": "user", "content": "x!"}]])


def test_lora_training_lowers_validation_loss_and_adapter_loads(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    examples = sample_conversations(40, seed=1)
    reports: list[TrainProgress] = []
    cfg = TrainingSettings(learning_rate=1e-2, epochs=3, batch_size=8, max_length=256)
    out = tmp_path / "adapters" / "v1"
    result = train_lora(tiny_model_dir, examples, out, cfg, val_fraction=0.2, seed=0, progress=reports.append)

    assert result.initial_val_loss is not None and result.best_val_loss is not None
    assert result.best_val_loss < result.initial_val_loss
    assert len(result.val_loss) == len(result.train_loss) == 3  # one per epoch
    assert result.num_val == 8 and result.num_train == 32
    assert any(r.phase == "eval" for r in reports) and reports[-1].step == result.steps

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["base_model"] == str(tiny_model_dir)
    assert manifest["dataset_hash"] == dataset_hash(examples)
    assert manifest["settings"]["lora_rank"] == 8 and manifest["settings"]["learning_rate"] == 1e-2
    assert manifest["metrics"]["val_loss"] == result.val_loss
    assert manifest["training_seconds"] > 0 and manifest["code_version"]["package"]
    assert {p.name for p in out.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "manifest.json"}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # work dir removed
    # Weights learned from patients' words: owner-only, whatever the umask (issue 12).
    modes = {p.relative_to(out): stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert all(mode == (0o700 if (out / rel).is_dir() else 0o600) for rel, mode in modes.items()), \
        {str(k): oct(v) for k, v in modes.items()}

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), local_files_only=True)
    model = PeftModel.from_pretrained(base, str(out))
    with torch.inference_mode():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape[-1] == base.config.vocab_size

    with pytest.raises(FileExistsError):  # a finished adapter is never overwritten in place
        train_lora(tiny_model_dir, examples, out, cfg)


def test_early_stopping_stops_when_validation_loss_stops_improving(tiny_model_dir: Path, tmp_path: Path) -> None:
    import random

    # Answers are random word strings: whatever the model memorises about the training
    # answers cannot help on the held-out ones, so validation loss soon turns upwards.
    rng = random.Random(0)
    words = "sweat hands feet doctor botox iontophoresis night skin calm help water cream".split()
    examples = [
        [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": " ".join(rng.choices(words, k=12))}]
        for i in range(24)
    ]
    cfg = TrainingSettings(learning_rate=1e-2, epochs=30, batch_size=8, max_length=256)
    result = train_lora(
        tiny_model_dir, examples, tmp_path / "m", cfg, val_fraction=0.25, early_stopping_patience=1, full_finetune=True
    )
    assert result.stopped_early and result.epochs_run < 30
    assert result.val_loss[-1] > result.best_val_loss == min(result.val_loss)
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["metrics"]["stopped_early"] is True


@pytest.mark.parametrize("how", ["cancel", "ctrl-c"])
def test_interrupted_training_leaves_nothing_at_out_dir(tiny_model_dir: Path, tmp_path: Path, how: str) -> None:
    cfg = TrainingSettings(epochs=5, batch_size=4, max_length=128)
    out = tmp_path / "adapters" / "v9"
    out.parent.mkdir()
    steps: list[int] = []

    def progress(report: TrainProgress) -> None:
        steps.append(report.step)
        if how == "ctrl-c" and report.step >= 2:
            raise KeyboardInterrupt

    expected = TrainingCancelled if how == "cancel" else KeyboardInterrupt
    with pytest.raises(expected):
        train_lora(
            tiny_model_dir,
            sample_conversations(16),
            out,
            cfg,
            progress=progress,
            cancel=(lambda: len(steps) >= 2) if how == "cancel" else None,
        )
    assert steps  # training really had started
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no half-written work directory either


@pytest.mark.slow
async def test_demo_model_builds_once_and_is_labelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.demo as demo
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setattr(demo, "TARGET_STEPS", 30)  # the real build trains 300 steps (~10 s)
    seeds = sample_conversations(16)
    path = demo.build_demo_model(tmp_path, seeds)
    assert path == tmp_path / "demo-model"
    assert demo.is_demo_model(path)
    marker = demo.read_marker(path)
    assert marker and marker["demo"] is True and marker["train_steps"] == 30
    AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert demo.build_demo_model(tmp_path, seeds) == path  # second call: reused
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["demo-model"]
    assert marker["prompt_format"] == "task_only"
    # Served by the local backend in the format it was trained with: the system turn cut to its
    # task line (the pack's long system prompt is left out).
    from bot.chat_format import with_task
    from bot.inference.local_backend import LocalBackend
    from bot.settings import InferenceSettings

    backend = LocalBackend(InferenceSettings(max_new_tokens=8, temperature=0.0), str(path))
    await backend.start()
    try:
        assert backend.prompt_format == "task_only"
        served = with_task([{"role": "system", "content": "Guidance. " * 300},
                            {"role": "user", "content": "My feet sweat."}], "treatment")
        assert backend.prompt_text(served).count("Guidance") == 0 and "Task: treatment" in backend.prompt_text(served)
        reply = await backend.generate(served)
        assert reply.prompt_tokens < 40 and reply.completion_tokens > 0
    finally:
        await backend.close()
    # Different seed data: rebuilt in place.
    demo.build_demo_model(tmp_path, sample_conversations(8, seed=5))
    assert demo.read_marker(path)["seed_hash"] != marker["seed_hash"]
