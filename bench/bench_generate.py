"""Generation throughput at concurrency 1 and 8 against a server with a fixed per-request delay.

How it is measured: the fake OpenAI-compatible server of the tests (``tests/openai_fake.py``)
runs in a process of its own, like a remote endpoint, and answers every request with a
valid vignette after a fixed delay (default 0.5 s, a fast frontier model). The real
``pipeline.generate.generate`` writes into a fresh SQLite file (WAL) through the real openai
client: plan, request, validation, red-flag and leak checks, near-duplicate index, insert.
Each concurrency gets its own database and enough vignettes for several rounds (8 per
worker); a short warm-up run first pays the imports. Throughput is stored vignettes per
second of wall time.

With requests that only wait on the server, N workers should approach N times the
throughput of one: the printed ratio should approach 8. What keeps it below 8 is the
client's own CPU time per vignette (roughly 10-20 ms here), which the workers share.

Run: python bench/bench_generate.py [--delay 0.5] [--per-worker 8]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.settings import GenerationSettings  # noqa: E402
from bot.storage import Database  # noqa: E402
from pipeline import generate as gen  # noqa: E402
from pipeline.packs import load_pack  # noqa: E402


def start_server(delay: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.openai_fake", "--delay", str(delay)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise SystemExit("the fake server did not start")
    return proc, url


async def run(url: str, concurrency: int, count: int, workdir: Path) -> tuple[float, gen.GenerationSummary]:
    pack = load_pack("hyperhidrosis")
    settings = GenerationSettings(base_url=url, model="bench", concurrency=concurrency, max_retries=0, timeout_s=30)
    db = await Database(workdir / f"c{concurrency}.db").open()
    try:
        started = time.perf_counter()
        summary = await gen.generate(db, pack, settings, count, concurrency=concurrency)
        return time.perf_counter() - started, summary
    finally:
        await db.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delay", type=float, default=0.5, help="server delay per request, seconds")
    parser.add_argument("--per-worker", type=int, default=8, help="vignettes per worker")
    args = parser.parse_args()
    proc, url = start_server(args.delay)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            (workdir / "warm").mkdir()
            await run(url, 2, 2, workdir / "warm")  # imports, connection set-up
            results = {}
            for concurrency in (1, 8):
                count = concurrency * args.per_worker
                elapsed, summary = await run(url, concurrency, count, workdir)
                assert summary.generated == count, summary.lines()
                results[concurrency] = count / elapsed
                print(f"concurrency {concurrency}: {count} vignettes in {elapsed:.2f} s = "
                      f"{results[concurrency]:.2f} vignettes/s (ideal {concurrency / args.delay:.2f})")
            print(f"ratio 8 / 1: {results[8] / results[1]:.2f} (ideal 8)")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
