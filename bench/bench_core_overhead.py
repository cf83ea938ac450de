"""Core overhead per patient message, excluding model time.

How it is measured: a whole Service (SQLite file on disk, WAL, the local platform) on the
``fixed`` backend, whose generation is an asyncio sleep of a known delay. N conversations
send messages at once (each conversation sends its next message as soon as the previous one
is answered), so N messages are in flight at every moment. For each message the wall time
of ``handle_message`` is taken. Conversations start at random moments spread over one model
time (as patients do; a start in lock-step would measure one synthetic burst of 100), so
after the first round 100 messages are in flight at every moment. The time, and the time spent inside the backend's generate (measured,
i.e. the known delay plus any oversleep) is subtracted: what is left is the core's own
overhead — storing, triage, prompt building, review item, delivery, with all the waiting on
the shared database and the event loop that the load causes.

The default model time is 1 s, about what one reply of a 1B model takes on a vLLM server;
with 100 conversations that is ~100 messages/s through the core. A shorter ``--delay`` raises
the message rate (100 / delay) and so measures the core under a heavier load.

The physical floor is printed in the same run, on the same disk: the latency of one SQLite
commit in WAL mode with the service's settings (``synchronous=NORMAL``: a commit appends to the
WAL without an fsync; one insert per transaction, as each of the service's writes is), the same
with ``synchronous=FULL`` (an fsync per commit) for reference, and one round trip to the
database thread (``SELECT 1`` through aiosqlite, as every read and write of the service makes).
The service stores a message in four commits (message; claim; reply with its review item and
effects; effects done), so read the overhead as a multiple of those floors.

Triage runs in the service's process (``safety.triage_process`` off, the default); to measure the
triage child process instead, run with ``LLM4SWEAT_SAFETY__TRIAGE_PROCESS=true``. Measured on
2 cores, interleaved, 3 runs each: at 1 s model time (load 1.4-1.7) in-process p50 4.17 / 4.20 /
3.73 ms, p99 9.9 / 10.0 / 8.6 ms vs the child 7.34 / 7.11 / 6.32 ms, 28.2 / 22.8 / 16.2 ms; at
0.25 s (400 messages/s, load 1.5-2.2) in-process p50 28 / 21 / 104 ms vs 152 / 40 / 295 ms --
the child's round trip costs more than the CPU it takes off the loop, so it is off by default.

Run: python bench/bench_core_overhead.py [--conversations 100] [--rounds 5] [--delay 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiosqlite

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.inference.fixed import FixedBackend  # noqa: E402
from bot.local.platform import LocalPlatform  # noqa: E402
from bot.platform import IncomingMessage  # noqa: E402
from bot.service import Service  # noqa: E402
from bot.safety.detector import crisis_model, default_cache_dir  # noqa: E402
from bot.settings import load_settings  # noqa: E402
from pipeline.packs import load_pack  # noqa: E402


TARGET_P50_MS = 5.0
TARGET_P99_MS = 25.0


def commit_floor(directory: Path, synchronous: str, n: int = 300) -> list[float]:
    """Seconds per commit of one single-row insert, WAL mode, on ``directory``'s disk."""
    conn = sqlite3.connect(directory / f"floor-{synchronous}.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, text TEXT NOT NULL, at REAL NOT NULL)")
    times = []
    for i in range(n):
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (text, at) VALUES (?, ?)", (f"message {i} about sweaty palms", time.time()))
        conn.execute("COMMIT")
        times.append(time.perf_counter() - started)
    conn.close()
    return times


async def hop_floor(db_path: Path, n: int = 300) -> list[float]:
    """Seconds per round trip to aiosqlite's thread (``SELECT 1``)."""
    times = []
    async with aiosqlite.connect(db_path) as conn:
        for _ in range(n):
            started = time.perf_counter()
            await (await conn.execute("SELECT 1")).fetchone()
            times.append(time.perf_counter() - started)
    return times


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def main(conversations: int, rounds: int, delay: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(data_dir=Path(tmp))
        # The safety model from the shared cache (trained once per corpus), not retrained in the
        # fresh data directory on every run: start-up is not what this bench measures.
        crisis_model(load_pack(settings.pack_path), cache_dir=default_cache_dir())
        backend = FixedBackend(delay_s=delay)
        service = Service(settings, backend)
        service.add_platform(LocalPlatform())
        load_before = os.getloadavg()[0]
        await service.start(retry_loop=False)
        worker = service.core.triage_worker  # the triage process (settings.safety.triage_process)
        if worker is not None and not await worker.wait_ready():
            raise RuntimeError("the triage process did not start")
        totals: list[tuple[int, float]] = []  # (reply id, seconds in handle_message)
        hops: list[float] = []  # seconds of each visit to the database thread (Database.run), under the load
        untimed_run = service.db.run

        async def timed_run(fn, write=True, **how):  # on this instance only: every read and write of the service
            started = time.perf_counter()
            try:
                return await untimed_run(fn, write, **how)
            finally:
                hops.append(time.perf_counter() - started)

        service.db.run = timed_run  # type: ignore[method-assign]

        rng = random.Random(0)

        async def conversation(i: int) -> None:
            await asyncio.sleep(rng.uniform(0, delay))
            for r in range(rounds + 1):
                text = f"Round {r}: my palms sweat a lot when I hold a pen, what can I do? (patient {i})"
                started = time.perf_counter()
                result = await service.core.handle_message(
                    IncomingMessage("local", f"p{i}", "console", f"t{i}", text, display_name=f"p{i}")
                )
                total = time.perf_counter() - started
                if result.reply_id is None:
                    raise RuntimeError(f"message not answered by the model ({result.status}): the figures would be wrong")
                if r > 0:  # the first round includes first-contact work; measure steady state
                    totals.append((result.reply_id, total))

        try:
            hops.clear()  # start-up's visits are not the load's
            child = await worker.cpu_seconds() if worker is not None else 0.0
            wall, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(conversation(i) for i in range(conversations)))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            child = (await worker.cpu_seconds() - child) if worker is not None else 0.0
            fallbacks = worker.fallbacks if worker is not None else 0
            service_here_busy = service.db.here_busy
            load_hops = [h * 1000 for h in hops]
            # The model time of each reply, read once after the run (not a read of the bench's own
            # per message, which would add to the load and the CPU measured).
            latency = {row[0]: row[1] / 1000 for row in await service.db.fetchall("SELECT id, latency_ms FROM replies")}
        finally:  # also on an error: the database thread would keep the process alive
            await service.stop()
        model_times = [latency[reply_id] for reply_id, _ in totals]
        overheads = [total - latency[reply_id] for reply_id, total in totals]
        ms = [o * 1000 for o in overheads]
        p50, p99 = pct(ms, 50), pct(ms, 99)
        met = p50 <= TARGET_P50_MS and p99 <= TARGET_P99_MS
        load_after = os.getloadavg()[0]
        print(f"core overhead at {conversations} conversations in flight: p50 {p50:.2f} ms (target <= {TARGET_P50_MS:g}), "
              f"p99 {p99:.2f} ms (target <= {TARGET_P99_MS:g}) -> TARGET {'MET' if met else 'NOT MET'}"
              f" (load average {load_before:.2f} before, {load_after:.2f} after, {os.cpu_count()} cores)")
        print(f"  SQLite on disk ({settings.db_path})")
        print(f"  messages measured : {len(ms)} (after 1 warm-up round per conversation)")
        print(f"  model time (fixed): {delay*1000:.1f} ms set, {statistics.mean(model_times)*1000:.1f} ms measured mean")
        print(f"  overhead p50      : {p50:.2f} ms   (target <= {TARGET_P50_MS:g} ms)")
        print(f"  overhead p99      : {p99:.2f} ms   (target <= {TARGET_P99_MS:g} ms)")
        print(f"  overhead mean/max : {statistics.mean(ms):.2f} / {max(ms):.2f} ms")
        print(f"  throughput        : {len(ms) / wall:.0f} messages/s over {wall:.1f} s")
        messages = conversations * (rounds + 1)
        print(f"  service CPU       : {(cpu + child) / messages * 1000:.2f} ms per message, all threads and the triage "
              f"process (less swayed by other programs' load than the latencies above)")
        if worker is not None:
            print(f"  of which triage process: {child / messages * 1000:.2f} ms per message (pid {worker.pid}; "
                  f"{fallbacks} message(s) triaged in the service's process instead)")
        else:
            print("  triage in the service's process (settings.safety.triage_process off)")
        print(f"  database visits   : {len(load_hops) / messages:.1f} per message; each took p50 {pct(load_hops, 50):.2f} / "
              f"p90 {pct(load_hops, 90):.2f} / p99 {pct(load_hops, 99):.2f} ms under this load (the floor below: one "
              f"round trip on an idle database)")
        print(f"  loop's connection : {service_here_busy} unit(s) found the database locked and went to the database "
              f"thread instead")
        normal = [t * 1000 for t in commit_floor(Path(tmp), "NORMAL")]
        full = [t * 1000 for t in commit_floor(Path(tmp), "FULL")]
        hop = [t * 1000 for t in await hop_floor(Path(tmp) / "floor-NORMAL.db")]
        print("physical floor, same disk, same run (p50 / p99):")
        print(f"  one WAL commit, synchronous=NORMAL (the service's): {pct(normal, 50):.3f} / {pct(normal, 99):.3f} ms")
        print(f"  one WAL commit, synchronous=FULL (fsync each)     : {pct(full, 50):.3f} / {pct(full, 99):.3f} ms")
        print(f"  one round trip to the database thread (SELECT 1)  : {pct(hop, 50):.3f} / {pct(hop, 99):.3f} ms")
        print(f"  overhead p50 = {pct(ms, 50) / pct(normal, 50):.0f}x one commit (4 commits per message), "
              f"{pct(ms, 50) / pct(hop, 50):.0f}x one round trip")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--delay", type=float, default=1.0)
    args = parser.parse_args()
    asyncio.run(main(args.conversations, args.rounds, args.delay))
