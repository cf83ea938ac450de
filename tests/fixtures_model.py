"""Fixtures that build the tiny local model (owned by the local-backend work).

Built once per test session: most of the cost is importing torch/transformers, the model
itself takes well under a second and each adapter about a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.tinymodel import corpus_from_conversations, sample_conversations

# Each adapter learns to open every answer with its own words, so their greedy answers differ.
ADAPTER_VARIANTS = {"v1": "Answer from version one.", "v2": "Version two speaking."}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama model + tokenizer (head size 32, chat template) in a temp dir."""
    import torch

    from pipeline.tinymodel import build_tiny_model

    # One torch thread for the whole session: the tiny model gains nothing from two, and with
    # two OpenMP threads per process, tests running beside other CPU work slow down tenfold.
    torch.set_num_threads(1)
    corpus = corpus_from_conversations(sample_conversations(48))
    corpus += list(ADAPTER_VARIANTS.values())
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model", corpus, seed=0)


@pytest.fixture(scope="session")
def tiny_adapter_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two LoRA adapters on the tiny model ({"v1": path, "v2": path}) that answer differently."""
    from bot.settings import TrainingSettings
    from pipeline.training import train_lora

    root = tmp_path_factory.mktemp("tiny-adapters")
    cfg = TrainingSettings(lora_rank=8, lora_alpha=16, learning_rate=1e-2, epochs=4, batch_size=8, max_length=256)
    dirs = {}
    for i, (version, variant) in enumerate(ADAPTER_VARIANTS.items()):
        examples = sample_conversations(24, seed=i, variant=variant)
        dirs[version] = train_lora(tiny_model_dir, examples, root / version, cfg, val_fraction=0.0, seed=i).out_dir
    return dirs
