"""The in-process transformers + peft backend on the tiny model: generation, batching,
atomic adapter hot swap under load, refusing bad adapters, and failures surfacing as
ModelUnavailable instead of hanging."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import pytest

from bot.inference.base import AdapterLoadError, InferenceBackend, ModelUnavailable
from bot.inference.local_backend import LocalBackend
from bot.settings import InferenceSettings

PROMPTS = [
    "My hands sweat so much that paper gets wet.",
    "My feet are always wet. What can I do?",
    "Does botox work for underarm sweating?",
    "What is iontophoresis?",
]


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def settings(**overrides) -> InferenceSettings:
    values = dict(max_new_tokens=12, temperature=0.0, max_batch_size=8, batch_window_ms=5.0, device="cpu")
    values.update(overrides)
    return InferenceSettings(**values)


async def started(model_dir: Path, **kwargs) -> LocalBackend:
    backend = LocalBackend(settings(), str(model_dir), **kwargs)
    await backend.start()
    return backend


async def answers(backend: LocalBackend) -> dict[str, str]:
    """Greedy answer per prompt, one request at a time (the reference for batched runs)."""
    return {p: (await backend.generate(chat(p))).text for p in PROMPTS}


async def test_generates_text_with_exact_token_counts(tiny_model_dir: Path, tiny_adapter_dirs: dict) -> None:
    from transformers import AutoTokenizer

    backend = await started(tiny_model_dir, adapter_version="v2", adapter_path=tiny_adapter_dirs["v2"])
    try:
        assert isinstance(backend, InferenceBackend)
        result = await backend.generate(chat(PROMPTS[0]))
        assert result.adapter_version == "v2" and result.model == str(tiny_model_dir)
        assert result.text.startswith("Version two")
        assert "<|" not in result.text  # special tokens stripped
        assert 0 < result.completion_tokens <= 12 and result.prompt_tokens > 5 and result.latency_s > 0
        short = await backend.generate(chat(PROMPTS[0]), max_tokens=2)
        assert short.completion_tokens <= 2 and len(short.text) < len(result.text)
        sampled = await backend.generate(chat(PROMPTS[1]), temperature=0.9)
        assert sampled.completion_tokens <= 12

        tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)
        text = "Sweating of the hands, feet and armpits."
        assert backend.count_tokens(text) == len(tokenizer.encode(text, add_special_tokens=False))
        status = backend.status()
        assert status.healthy and status.adapter_version == "v2" and status.detail["requests_served"] == 3
    finally:
        await backend.close()
    with pytest.raises(ModelUnavailable):
        await backend.generate(chat("after close"))


async def test_concurrent_requests_are_batched_and_match_single_answers(
    tiny_model_dir: Path, tiny_adapter_dirs: dict
) -> None:
    backend = await started(tiny_model_dir, adapter_version="v1", adapter_path=tiny_adapter_dirs["v1"])
    try:
        reference = await answers(backend)
        assert set(backend.batch_sizes) == {1}
        backend.batch_sizes.clear()
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(8)]
        # Mixed temperatures and lengths in one batch: greedy ones must still match exactly.
        results = await asyncio.gather(*(backend.generate(chat(p)) for p in prompts))
        assert max(backend.batch_sizes) > 1, list(backend.batch_sizes)
        assert sum(backend.batch_sizes) == 8
        assert [r.text for r in results] == [reference[p] for p in prompts]
        mixed = await asyncio.gather(
            backend.generate(chat(PROMPTS[0])),
            backend.generate(chat(PROMPTS[1]), temperature=0.7),
            backend.generate(chat(PROMPTS[2]), max_tokens=3),
        )
        assert mixed[0].text == reference[PROMPTS[0]]
        assert mixed[2].completion_tokens <= 3
    finally:
        await backend.close()


async def test_swap_under_concurrent_load_is_atomic(tiny_model_dir: Path, tiny_adapter_dirs: dict) -> None:
    backend = await started(tiny_model_dir)
    try:
        reference: dict[str | None, dict[str, str]] = {None: await answers(backend)}
        for version in ("v1", "v2"):
            await backend.swap_adapter(version, tiny_adapter_dirs[version])
            reference[version] = await answers(backend)
        assert reference["v1"] != reference["v2"] != reference[None]

        async def load(n: int) -> list:
            return await asyncio.gather(
                *(backend.generate(chat(PROMPTS[i % len(PROMPTS)])) for i in range(n)), return_exceptions=True
            )

        async def swapper() -> list[float]:
            times = []
            for version in ["v1", "v2", "v1", None, "v2"]:
                await asyncio.sleep(0.02)
                path = tiny_adapter_dirs[version] if version else None
                times.append(await backend.swap_adapter(version, path))
            return times

        results, times = await asyncio.gather(load(80), swapper())
        failures = [r for r in results if isinstance(r, BaseException)]
        assert failures == []
        seen = set()
        for i, result in enumerate(results):
            prompt = PROMPTS[i % len(PROMPTS)]
            # Wholly old or wholly new: the text is exactly the answer of the adapter it names.
            assert result.text == reference[result.adapter_version][prompt], (result.adapter_version, result.text)
            seen.add(result.adapter_version)
        assert len(seen) >= 2  # the swaps really happened while requests were in flight
        assert len(times) == 5 and all(t < 5 for t in times)
        assert backend.active_adapter == "v2"
        await asyncio.sleep(0.05)
        assert list(backend._peft.peft_config) == [backend._active.name]  # old adapters were freed
    finally:
        await backend.close()


def _corrupt_copies(source: Path, root: Path) -> dict[str, Path]:
    bad: dict[str, Path] = {"missing": root / "does-not-exist"}
    (root / "empty").mkdir()
    bad["empty"] = root / "empty"
    for name in ("bad-config", "bad-weights", "truncated-weights", "no-weights"):
        shutil.copytree(source, root / name)
        bad[name] = root / name
    (root / "bad-config" / "adapter_config.json").write_text("{not json")
    (root / "bad-weights" / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 100)
    weights = root / "truncated-weights" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    (root / "no-weights" / "adapter_model.safetensors").unlink()
    # Readable weights that do not fit this base model (as from an adapter for another model):
    # peft fails only after it has started injecting layers, which must be undone.
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, root / "wrong-shape")
    bad["wrong-shape"] = root / "wrong-shape"
    weights = root / "wrong-shape" / "adapter_model.safetensors"
    save_file({k: t[:, :-1].contiguous() for k, t in load_file(str(weights)).items()}, str(weights))
    return bad


async def test_corrupt_or_missing_adapter_is_refused_and_old_keeps_serving(
    tiny_model_dir: Path, tiny_adapter_dirs: dict, tmp_path: Path
) -> None:
    bad = _corrupt_copies(tiny_adapter_dirs["v1"], tmp_path)
    backend = await started(tiny_model_dir)
    try:
        base_answers = await answers(backend)
        # First adapter ever (no peft wrapper yet): a failure must leave the plain base model.
        for name, path in bad.items():
            with pytest.raises(AdapterLoadError) as info:
                await backend.swap_adapter(f"bad-{name}", path)
            assert f"bad-{name}" in str(info.value)
            assert backend.active_adapter is None
        assert await answers(backend) == base_answers

        await backend.swap_adapter("v1", tiny_adapter_dirs["v1"])
        v1_answers = await answers(backend)
        for name, path in bad.items():
            pending = [asyncio.create_task(backend.generate(chat(p))) for p in PROMPTS]
            with pytest.raises(AdapterLoadError):
                await backend.swap_adapter(f"bad-{name}", path)
            done = await asyncio.gather(*pending)
            assert [g.text for g in done] == list(v1_answers.values())
            assert backend.active_adapter == "v1"
        assert await answers(backend) == v1_answers
        assert backend.status().healthy
    finally:
        await backend.close()


async def test_missing_adapter_at_start_serves_base_model_with_warning(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bot.inference.local_backend"):
        backend = await started(tiny_model_dir, adapter_version="v7", adapter_path=tmp_path / "gone")
    try:
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings and "BASE MODEL" in warnings[0].getMessage() and "v7" in warnings[0].getMessage()
        status = backend.status()
        assert status.healthy and status.adapter_version is None and "does not exist" in status.detail["adapter_error"]
        result = await backend.generate(chat(PROMPTS[0]))
        assert result.adapter_version is None
    finally:
        await backend.close()


async def test_missing_model_raises_model_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in (str(tmp_path / "no-model"), "nobody-llm4sweat/no-such-model"):
        backend = LocalBackend(settings(), name)
        with pytest.raises(ModelUnavailable) as info:
            await backend.start()
        assert "not available offline" in str(info.value)
        with pytest.raises(ModelUnavailable):
            await backend.generate(chat("hello"))


async def test_generation_error_raises_model_unavailable_and_recovers(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await started(tiny_model_dir)
    try:
        def broken(*args, **kwargs):
            raise RuntimeError("simulated out of memory")

        monkeypatch.setattr(backend._base, "generate", broken)
        results = await asyncio.wait_for(
            asyncio.gather(*(backend.generate(chat(p)) for p in PROMPTS), return_exceptions=True), timeout=10
        )
        assert all(isinstance(r, ModelUnavailable) and "simulated out of memory" in str(r) for r in results)
        assert backend.status().detail["last_error"]
        monkeypatch.undo()
        assert (await backend.generate(chat(PROMPTS[0]))).completion_tokens > 0  # the batcher survived
    finally:
        await backend.close()
