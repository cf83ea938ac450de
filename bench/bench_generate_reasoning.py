"""A generation run against a server that behaves like GPT-5, with faults injected at known rates.

How it is measured: the fake OpenAI-compatible server of the tests (``tests/openai_fake.py``,
reasoning mode) answers like OpenAI's reasoning models: 400 ``unsupported_parameter`` for
``max_tokens``, 400 ``unsupported_value`` for a ``temperature`` other than 1, and hidden
reasoning tokens spent from ``max_completion_tokens`` first (each request draws 500-3000
reasoning tokens, seeded; the budget is 2500, so some replies come back empty and are asked
again with a larger budget). The real ``pipeline.generate.generate`` fills a fresh SQLite
database through the real openai client.

Every vignette the fake writes is valid, except for faults injected at fixed rates (seeded,
decided per request): a cited fact the answer does not use, a number contradicting a cited
fact, an answer copied from an earlier one for the same fact (only once one exists), an
evaluation question with two words changed in
the patient's message, a long evaluation option pasted into the answer. The script prints how
many of each were injected and how many vignettes were refused for each reason, so the guards'
recall on these faults can be read off (a refused slot is asked again, up to
``attempts_per_slot`` times, so injected faults can exceed the slots left missing).

A second, short run uses a reasoning model the settings do not name: the first requests are
refused, the run adapts once and says so.

Run: python bench/bench_generate_reasoning.py [--count 200] [--rate 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.settings import GenerationSettings  # noqa: E402
from bot.storage import Database  # noqa: E402
from pipeline import generate as gen  # noqa: E402
from pipeline.packs import eval_heldout_items, load_pack  # noqa: E402
from tests.openai_fake import FakeOpenAI, plan_of, vignette_for  # noqa: E402

FAULTS = ("unused_fact", "contradicted_number", "copied_answer", "edited_eval_question", "eval_option_in_answer")


def two_word_edit(text: str) -> str:
    words = text.split()
    picks = [i for i, w in enumerate(words) if re.fullmatch(r"[A-Za-z]{4,}", w)]
    for i, new in zip((picks[0], picks[len(picks) // 2]), ("really", "perhaps")):
        words[i] = new
    return " ".join(words)


def responder(pack, rate: float, injected: Counter, seed: int = 0):
    rng = random.Random(seed)
    questions = pack.eval_questions
    stems = {q.question for q in questions}
    options = [i.question for i in eval_heldout_items(questions) if i.question not in stems]
    answers: dict[str, str] = {}  # an earlier answer per planned fact (a copy must still use its fact)

    def respond(body, index):
        plan = plan_of(body)
        v = vignette_for(plan, pack, salt=str(index))
        roll = rng.random()
        fault = FAULTS[int(roll / rate)] if roll < rate * len(FAULTS) else None
        if fault == "unused_fact":
            v["fact_ids"] = [plan["fact"], "tx-ets-other-risks"]
        elif fault == "contradicted_number":
            v["fact_ids"] = [plan["fact"], "dx-criteria-1"]
            v["answer"] += (" Doctors call it primary once visible, excessive focal sweating has gone on for three"
                            " months with no apparent underlying cause.")
        elif fault == "copied_answer" and plan["fact"] in answers:
            v["answer"] = answers[plan["fact"]]
        elif fault == "edited_eval_question":
            v["question"] = f"I read this and wondered: {two_word_edit(rng.choice(questions).question)} " + v["question"]
        elif fault == "eval_option_in_answer":
            v["answer"] += f" In short: {rng.choice(options)}."
        else:
            fault = None
        if fault:
            injected[fault] += 1
        else:
            answers.setdefault(plan["fact"], v["answer"])  # only clean answers are copied later
        return json.dumps(v)

    return respond


async def run(count: int, rate: float, model: str, workdir: Path) -> None:
    pack = load_pack("hyperhidrosis")
    injected: Counter = Counter()
    draws = random.Random(1)
    server = FakeOpenAI(responder(pack, rate, injected), reasoning=True,
                        reasoning_tokens=lambda body: draws.randint(500, 3000))
    async with server:
        settings = GenerationSettings(base_url=server.base_url, model=model, concurrency=4, max_retries=0,
                                      timeout_s=30, max_completion_tokens=2500)
        db = await Database(workdir / f"{model}.db").open()
        try:
            started = time.perf_counter()
            summary = await gen.generate(db, pack, settings, count)
            elapsed = time.perf_counter() - started
        finally:
            await db.close()
    statuses = Counter(server.statuses)
    print(f"\n== {model}: {count} planned vignettes, concurrency 4, max_completion_tokens 2500 "
          f"(reasoning 500-3000 tokens per request), fault rate {rate:.0%} each")
    for line in summary.lines():
        print("  " + line)
    print(f"  HTTP statuses: {dict(statuses)}; requests with temperature or max_tokens after the first 400s: "
          f"{sum(1 for b in server.requests[statuses[400]:] if 'temperature' in b or 'max_tokens' in b)}")
    budgets = Counter(b.get("max_completion_tokens") for b in server.requests)
    print(f"  max_completion_tokens sent: {dict(budgets)}")
    print(f"  injected faults: {dict(injected)}")
    refused = summary.rejected
    print(f"  refused by reason: {dict(refused)}; duplicates by kind: {dict(summary.duplicate_kinds)}")
    print(f"  wall time {elapsed:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--rate", type=float, default=0.05, help="rate of each injected fault")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.count, args.rate, "gpt-5", Path(tmp)))
        asyncio.run(run(min(40, args.count), 0.0, "acme-reasoner", Path(tmp)))


if __name__ == "__main__":
    main()
