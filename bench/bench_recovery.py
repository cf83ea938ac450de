"""How fast a backlog is answered after an outage: one by one versus the model's batch capacity.

How it is measured: a whole Service (SQLite file on disk, the local platform) on the ``fixed``
backend. The model is down while N patients (one conversation each, ``--per-conversation``
messages each) write; every message is stored and queued. Then the model comes back and one
call of the retry loop (``ConversationCore.retry_queued``) works through the backlog; the wall
time until every message has its reply is printed, for ``inference.max_concurrency`` 1 (what the
service did before: one message at a time) and for the given capacity (default 8, the setting's
default). Each model call takes ``--delay`` seconds however many run at once, which is how a
batching server (vLLM, or the local backend up to ``inference.max_batch_size``) behaves up to
its batch size; a real server slows down somewhat as its batch fills, so read the speed-up as
the core's part of the gain.

Run: python bench/bench_recovery.py [--messages 103] [--per-conversation 1] [--delay 1.0] [--capacity 8]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.inference.fixed import FixedBackend  # noqa: E402
from bot.local.platform import LocalPlatform  # noqa: E402
from bot.platform import IncomingMessage  # noqa: E402
from bot.service import Service  # noqa: E402
from bot.settings import load_settings  # noqa: E402


async def run(messages: int, per_conversation: int, delay: float, capacity: int) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(data_dir=Path(tmp))
        settings.inference.max_concurrency = capacity
        settings.safety.rate_limit_messages = max(10, per_conversation + 1)
        backend = FixedBackend(delay_s=0.0)
        service = Service(settings, backend)
        service.add_platform(LocalPlatform())
        await service.start(retry_loop=False)
        try:
            backend.fail_with = "connection refused"
            conversations = max(1, messages // per_conversation)
            for turn in range(per_conversation):
                for c in range(conversations):
                    text = f"question {turn} from patient {c} about sweaty palms"
                    await service.core.handle_message(IncomingMessage("local", f"p{c}", "console", f"p{c}", text))
            queued = await service.db.fetchval("SELECT COUNT(*) FROM messages WHERE status = 'queued_retry'")
            backend.fail_with = None
            backend.delay_s = delay
            started = time.perf_counter()
            answered = await service.core.retry_queued()
            seconds = time.perf_counter() - started
            assert answered == queued, (answered, queued)
            return answered, seconds
        finally:
            await service.stop()


async def main(args: argparse.Namespace) -> None:
    print(f"backlog of {args.messages} messages ({args.per_conversation} per conversation), model call {args.delay:.2f} s")
    results = {}
    for capacity in (1, args.capacity):
        answered, seconds = await run(args.messages, args.per_conversation, args.delay, capacity)
        results[capacity] = seconds
        print(f"  max_concurrency {capacity:>3}: {answered} answered in {seconds:6.1f} s ({answered / seconds:5.1f} messages/s)")
    print(f"speed-up at capacity {args.capacity}: {results[1] / results[args.capacity]:.1f}x")


if __name__ == "__main__":
    logging.disable(logging.CRITICAL)  # the outage logs one error per queued message
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=103)
    parser.add_argument("--per-conversation", type=int, default=1)
    parser.add_argument("--delay", type=float, default=1.0)
    parser.add_argument("--capacity", type=int, default=8)
    asyncio.run(main(parser.parse_args()))
