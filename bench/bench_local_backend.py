"""Local backend: batching speed-up and adapter hot swap under load, on the tiny model.

How it is measured (printed with the figures):

(a) Batching. The tiny Llama model (hidden 128, 2 layers, head size 32) is built in a temp
    dir. Eight chat requests (different prompts, so rows are left-padded) are sent to one
    LocalBackend (a) one after another, each awaited before the next is sent, and (b) all at
    once with asyncio.gather. Greedy decoding and a fixed ``max_new_tokens``; the untrained
    base model never emits its end token, so every request generates exactly that many
    tokens in both runs and both runs do the same work. One warm-up round, then
    ``--rounds`` rounds alternating the two ways; medians. Requests/second = 8 / wall time.
    Shown with the default batch window (5 ms, which a lone request waits out) and with 0.
(b) Swap under load. Two LoRA adapters are trained briefly on the tiny model (different
    answers). The backend serves adapter v1; 200 requests are put in flight at once while a
    second task swaps the adapter 5 times (v2, v1, v2, v1, v2) at even intervals. Counted:
    failed requests, and answers that are not exactly the greedy answer of the adapter the
    response names (i.e. mixed old/new). Swap time = wall time of ``swap_adapter`` as the
    caller sees it (includes waiting for the batch that is running); load = time the worker
    spent reading the adapter.

Run: python bench/bench_local_backend.py [--rounds 5] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.inference.local_backend import LocalBackend  # noqa: E402
from bot.settings import InferenceSettings, TrainingSettings  # noqa: E402
from pipeline.tinymodel import build_tiny_model, corpus_from_conversations, sample_conversations  # noqa: E402
from pipeline.training import train_lora  # noqa: E402

PROMPTS = [
    "My hands sweat so much that paper gets wet.",
    "My feet are always wet. What can I do?",
    "Does botox work for underarm sweating?",
    "What is iontophoresis?",
    "I sweat at night and lost weight without trying.",
    "I feel embarrassed to shake hands at work.",
    "Hello",
    "Is it normal to sweat when I am not hot or nervous, even in winter?",
]


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def batching(model_dir: Path, rounds: int, max_new_tokens: int, window_ms: float) -> float:
    settings = InferenceSettings(
        max_new_tokens=max_new_tokens, temperature=0.0, max_batch_size=8, batch_window_ms=window_ms, device="cpu"
    )
    backend = LocalBackend(settings, str(model_dir))
    await backend.start()
    threads = await asyncio.get_running_loop().run_in_executor(backend._executor, _torch_threads)  # the worker's
    try:
        async def one_by_one() -> float:
            started = time.perf_counter()
            for p in PROMPTS:
                await backend.generate(chat(p))
            return time.perf_counter() - started

        async def together() -> float:
            started = time.perf_counter()
            results = await asyncio.gather(*(backend.generate(chat(p)) for p in PROMPTS))
            assert all(r.completion_tokens == max_new_tokens for r in results), "unequal work"
            return time.perf_counter() - started

        await one_by_one()
        await together()  # warm-up
        backend.batch_sizes.clear()
        seq_times, conc_times = [], []
        for _ in range(rounds):  # interleaved, so both see the same machine noise
            seq_times.append(await one_by_one())
            conc_times.append(await together())
        seq, conc = statistics.median(seq_times), statistics.median(conc_times)
        sizes = [s for s in backend.batch_sizes if s > 1]
    finally:
        await backend.close()
    seq_rps, conc_rps = len(PROMPTS) / seq, len(PROMPTS) / conc
    print(
        f"(a) batching, 8 requests, greedy, max_new_tokens = {max_new_tokens}, "
        f"batch_window_ms = {window_ms:g}, torch threads = {threads}"
    )
    print(f"    one after another : {seq_rps:7.1f} req/s  ({seq * 1000:.0f} ms for 8)")
    print(f"    8 concurrent      : {conc_rps:7.1f} req/s  ({conc * 1000:.0f} ms for 8, batch sizes {sorted(set(sizes))})")
    print(f"    ratio             : {conc_rps / seq_rps:7.2f}x  (target >= 3x)")
    return conc_rps / seq_rps


async def swap_under_load(model_dir: Path, adapters: dict[str, Path], n_requests: int, n_swaps: int) -> None:
    settings = InferenceSettings(
        max_new_tokens=16, temperature=0.0, max_batch_size=8, batch_window_ms=5.0, device="cpu"
    )
    backend = LocalBackend(settings, str(model_dir), adapter_version="v1", adapter_path=adapters["v1"])
    await backend.start()
    try:
        reference: dict[str, dict[str, str]] = {}
        for version in ("v2", "v1"):
            await backend.swap_adapter(version, adapters[version])
            reference[version] = {p: (await backend.generate(chat(p))).text for p in PROMPTS}
        backend.swap_times.clear()
        backend.load_times.clear()

        # How long the load takes without swaps, to space the swaps across it.
        started = time.perf_counter()
        await asyncio.gather(*(backend.generate(chat(PROMPTS[i % 8])) for i in range(n_requests)))
        plain = time.perf_counter() - started

        async def swapper() -> list[float]:
            times = []
            for k in range(n_swaps):
                await asyncio.sleep(plain / (n_swaps + 1))
                version = "v2" if k % 2 == 0 else "v1"
                times.append(await backend.swap_adapter(version, adapters[version]))
            return times

        started = time.perf_counter()
        results, times = await asyncio.gather(
            asyncio.gather(*(backend.generate(chat(PROMPTS[i % 8])) for i in range(n_requests)), return_exceptions=True),
            swapper(),
        )
        loaded = time.perf_counter() - started
        failed = [r for r in results if isinstance(r, BaseException)]
        ok = [(i, r) for i, r in enumerate(results) if not isinstance(r, BaseException)]
        mixed = sum(1 for i, r in ok if r.text != reference[r.adapter_version][PROMPTS[i % 8]])
        by_version = {v: sum(1 for _, r in ok if r.adapter_version == v) for v in ("v1", "v2")}
        loads = list(backend.load_times)
    finally:
        await backend.close()
    print(f"(b) {n_requests} requests in flight, adapter swapped {n_swaps} times")
    print(f"    failed requests   : {len(failed)}")
    print(f"    mixed/wrong answers: {mixed}  (each answer must equal its adapter's greedy answer)")
    print(f"    answered by v1/v2 : {by_version['v1']}/{by_version['v2']}")
    print(f"    swap times (ms)   : {', '.join(f'{t * 1000:.1f}' for t in times)}")
    print(f"    adapter load (ms) : {', '.join(f'{t * 1000:.1f}' for t in loads)}")
    print(f"    wall time         : {loaded:.2f} s with swaps, {plain:.2f} s without")


async def main(rounds: int, max_new_tokens: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = build_tiny_model(root / "model", corpus_from_conversations(sample_conversations(48)), seed=0)
        print(f"tiny model, CPU cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
        # (a) before any training in this process: the service never trains in-process (the
        # retrain job is its own process), and a training run leaves the heap much larger.
        await batching(model_dir, rounds, max_new_tokens, window_ms=5.0)  # the default setting
        # With no batching window a lone request does not wait for company (fairer to the
        # one-after-another run); concurrent requests still batch because they queue up together.
        await batching(model_dir, rounds, max_new_tokens, window_ms=0.0)
        cfg = TrainingSettings(learning_rate=1e-2, epochs=4, batch_size=8, max_length=256)
        adapters = {
            v: train_lora(model_dir, sample_conversations(24, seed=i, variant=text), root / v, cfg, val_fraction=0.0).out_dir
            for i, (v, text) in enumerate({"v1": "Answer one.", "v2": "Version two speaking."}.items())
        }
        await swap_under_load(model_dir, adapters, 200, 5)
    print(__doc__.split("How it is measured")[1].split("Run:")[0].rstrip().replace("(printed with the figures):", "How it was measured:"))


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.max_new_tokens))
