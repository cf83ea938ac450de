"""Learning signal: does training on a fact raise accuracy on the questions about that fact?

On the tiny model (built here, tokenizer trained on the pack's own texts): the pack's facts
that have evaluation questions are split at random (seeded) into two halves. A LoRA adapter is
trained on examples that state the facts of one half (the fact's text as the assistant's
reply to a generic question about its task; the evaluation questions never appear in
training; the system turn is the pack's system prompt, as in the evaluation). Both the base
model and the adapter answer every evaluation question (dev and
test, closed book, ``pipeline.evaluate``); questions are grouped by whether their facts were
taught. Reported per seed and pooled:

- accuracy before → after on taught and on untaught questions, with 95% Wilson CIs;
- an exact McNemar test of before vs after within each group (paired on the same questions);
- the difference of the gains (taught minus untaught) with a 95% paired bootstrap CI (scipy):
  resampling questions within each group, the statistic is mean(after − before) on taught
  questions minus the same on untaught questions. If the interval excludes 0, training on a
  fact helps the questions about it more than it helps the others.

Every metric of ``pipeline.evaluate`` is printed; the project's score (mean token log-prob) is
the headline. The figures describe the tiny model on this pack and say nothing of a real model.

Run: python bench/bench_learning.py [--seeds 3] [--steps 400] [--examples-per-fact 3]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPTS = [
    "Tell me one thing worth knowing about {task}.",
    "What is a fact about {task} that patients should know?",
    "Share something true about {task}, please.",
    "I'd like to learn about {task}. What is one key point?",
]


def build_model(root: Path, pack):
    from pipeline.tinymodel import build_tiny_model, corpus_from_conversations

    corpus = corpus_from_conversations(pack.seed_conversations()) + [f.text for f in pack.facts]
    corpus += [q.question + " " + " ".join(q.options) for q in pack.eval_questions]
    return build_tiny_model(root / "model", corpus, seed=0)


def teaching_examples(pack, facts, per_fact: int, rng: random.Random) -> list:
    from pipeline import evaluate as ev

    system = ev.system_text(pack)  # the system turn the evaluation uses (closed book)
    examples = []
    for fact in facts:
        task = fact.task.replace("_", " ")
        for prompt in rng.sample(PROMPTS, k=min(per_fact, len(PROMPTS))):
            examples.append([{"role": "system", "content": system},
                             {"role": "user", "content": prompt.format(task=task)},
                             {"role": "assistant", "content": fact.text}])
    return examples


def group_stats(before: list[bool], after: list[bool]) -> dict:
    from pipeline import evaluate as ev
    from pipeline.gate import pair

    bits_a = "".join("1" if x else "0" for x in after)
    bits_b = "".join("1" if x else "0" for x in before)
    p = pair(bits_a, bits_b)
    return {"n": len(before), "before": ev.accuracy_entry(sum(before), len(before)),
            "after": ev.accuracy_entry(sum(after), len(after)), "better": p.only_candidate,
            "worse": p.only_reference, "p": p.p_value()}


def gain_difference(taught: list[tuple[bool, bool]], untaught: list[tuple[bool, bool]], seed: int) -> dict:
    """mean(after − before | taught) − mean(after − before | untaught), 95% bootstrap CI."""
    import numpy as np
    from scipy import stats

    a = np.array([int(y) - int(x) for x, y in taught], dtype=float)
    b = np.array([int(y) - int(x) for x, y in untaught], dtype=float)
    value = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2 or (a.std() == 0 and b.std() == 0):
        return {"value": value, "ci95": [value, value]}
    result = stats.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis),
                             n_resamples=9999, confidence_level=0.95, method="percentile",
                             random_state=np.random.default_rng(seed))
    return {"value": value, "ci95": [float(result.confidence_interval.low), float(result.confidence_interval.high)]}


def fmt(entry: dict) -> str:
    low, high = entry["ci95"]
    return f"{entry['accuracy']:.3f} [{low:.2f}-{high:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="random halves of the facts (one adapter each)")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps per adapter")
    parser.add_argument("--examples-per-fact", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    args = parser.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(1)
    from bot.settings import TrainingSettings
    from pipeline import evaluate as ev
    from pipeline.packs import PACKS_DIR, load_pack
    from pipeline.training import train_lora

    pack = load_pack(PACKS_DIR / "hyperhidrosis")
    questions = [q for q in ev.questions_from_pack(pack) if q.fact_ids]
    asked = sorted({f for q in questions for f in q.fact_ids})
    facts = [pack.fact(f) for f in asked]
    per_split = ", ".join(f"{s} {sum(q.split == s for q in questions)}" for s in ev.splits_of(questions))
    print(f"pack {pack.name} {pack.version}: {len(questions)} questions with facts ({per_split}), "
          f"{len(facts)} facts asked about")
    print(f"torch {torch.__version__}, 1 thread; {args.seeds} seeds × {args.steps} steps, lr {args.learning_rate}, "
          f"LoRA r16/α32, batch 8, {args.examples_per_fact} examples per taught fact; closed book\n")
    cfg = TrainingSettings(lora_rank=16, lora_alpha=32, learning_rate=args.learning_rate, epochs=1000, batch_size=8,
                           max_length=1024)
    pooled: dict[str, dict[str, list]] = {m: {"taught": [], "untaught": []} for m in ev.METRICS}
    with tempfile.TemporaryDirectory(prefix="bench-learning-") as tmp:
        root = Path(tmp)
        model = build_model(root, pack)
        for seed in range(args.seeds):
            rng = random.Random(seed)
            taught_ids = set(rng.sample(asked, k=len(asked) // 2))
            examples = teaching_examples(pack, [f for f in facts if f.id in taught_ids], args.examples_per_fact, rng)
            started = time.perf_counter()
            result = train_lora(model, examples, root / f"adapter-{seed}", cfg, val_fraction=0.0, seed=seed,
                                max_steps=args.steps)
            train_s = time.perf_counter() - started
            started = time.perf_counter()
            report = ev.evaluate(model, [ev.Subject("base"), ev.Subject("trained", "trained", result.out_dir)], pack,
                                 ev.EvalConfig(safety=False, controls=False), questions=questions)
            eval_s = time.perf_counter() - started
            before = {a["id"]: a for a in report["runs"]["base"]["answers"]}
            after = {a["id"]: a for a in report["runs"]["trained"]["answers"]}
            is_taught = {q.id: any(f in taught_ids for f in q.fact_ids) for q in questions}
            print(f"seed {seed}: {len(taught_ids)} facts taught with {len(examples)} examples, {result.steps} steps in "
                  f"{train_s:.0f} s (train loss {result.train_loss[0]:.2f} → {result.train_loss[-1]:.2f}); "
                  f"evaluated in {eval_s:.0f} s; {sum(is_taught.values())} taught / "
                  f"{sum(not v for v in is_taught.values())} untaught questions")
            for metric in ev.METRICS:
                groups = {}
                for name, want in (("taught", True), ("untaught", False)):
                    pairs = [(before[i]["pred"][metric] == before[i]["answer"], after[i]["pred"][metric] == after[i]["answer"])
                             for i in before if is_taught[i] == want]
                    pooled[metric][name] += pairs
                    groups[name] = (group_stats([x for x, _ in pairs], [y for _, y in pairs]), pairs)
                diff = gain_difference(groups["taught"][1], groups["untaught"][1], seed)
                t, u = groups["taught"][0], groups["untaught"][0]
                print(f"  {ev.METRIC_TITLES[metric]:<14} taught {fmt(t['before'])} → {fmt(t['after'])} "
                      f"(+{t['better']}/−{t['worse']}, McNemar p={t['p']:.3g}); untaught {fmt(u['before'])} → "
                      f"{fmt(u['after'])} (+{u['better']}/−{u['worse']}, p={u['p']:.3g}); gain difference "
                      f"{diff['value']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]")
        print(f"\npooled over {args.seeds} seeds (each question once per seed):")
        for metric in ev.METRICS:
            t_pairs, u_pairs = pooled[metric]["taught"], pooled[metric]["untaught"]
            t = group_stats([x for x, _ in t_pairs], [y for _, y in t_pairs])
            u = group_stats([x for x, _ in u_pairs], [y for _, y in u_pairs])
            diff = gain_difference(t_pairs, u_pairs, 1234)
            print(f"  {ev.METRIC_TITLES[metric]:<14} taught {fmt(t['before'])} → {fmt(t['after'])} "
                  f"(+{t['better']}/−{t['worse']}, p={t['p']:.3g}); untaught {fmt(u['before'])} → {fmt(u['after'])} "
                  f"(+{u['better']}/−{u['worse']}, p={u['p']:.3g}); gain difference {diff['value']:+.3f} "
                  f"[{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]")


if __name__ == "__main__":
    main()
