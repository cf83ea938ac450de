"""Safety figures: crisis and red-flag detection on the red-team set, and the reply checks.

    python bench/bench_safety.py            # the shipped red-team set (tests/data/redteam)
    python bench/bench_safety.py --json     # the same as one JSON object

Prints recall and precision for crisis detection (rules + classifier, and each alone), the
classifier's 5-fold cross-validation on its own training set, red-flag detection (message
level and per flag id), injection detection, the reply checks on labelled replies, and the
triage time per message. False positives are counted and listed. No model is needed.

Any other labelled set can be scored with ``llm4sweat triage FILE --score``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.safety.classifier import cross_validate, read_examples  # noqa: E402
from bot.safety.reply_checks import check_reply  # noqa: E402
from bot.safety import (  # noqa: E402
    DEFAULT_THRESHOLD,
    crisis_model,
    crisis_rule_hits,
    training_files,
    triage,
)
from bot.safety.scoring import Counts, Score  # noqa: E402
from pipeline.packs import PACKS_DIR, load_pack  # noqa: E402

REDTEAM = ROOT / "tests" / "data" / "redteam"
SETS = ("crisis", "benign", "red_flags", "injection")
# Held-out sets, written and committed before the pattern changes of issue 7 (not pasted into patterns):
# red-flag vignettes, benign look-alikes, and injection attempts mixed with benign look-alikes.
HOLDOUT_SETS = ("red_flags_holdout", "benign_holdout", "injection_holdout")


def load(name: str) -> list[dict]:
    return [json.loads(line) for line in (REDTEAM / f"{name}.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]


def fmt(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args()

    pack = load_pack(PACKS_DIR / "hyperhidrosis")
    model = crisis_model(pack)
    rows = {name: load(name) for name in SETS}

    # --- the whole triage, once per message (timed)
    score = Score()
    verdicts = {}
    started = time.perf_counter()
    for name in SETS:
        verdicts[name] = []
        for row in rows[name]:
            verdict = triage(row["text"], pack)
            verdicts[name].append(verdict)
            score.add(row, verdict)
    n_messages = sum(len(r) for r in rows.values())
    ms_per_message = (time.perf_counter() - started) * 1000 / n_messages

    # --- crisis: rules alone and classifier alone, and by form / category
    rules_only, clf_only = Counts(), Counts()
    for name in SETS:
        for row in rows[name]:
            actual = name == "crisis"
            rules_only.add(bool(crisis_rule_hits(row["text"])), actual, row["id"])
            clf_only.add(model.proba(row["text"]) >= DEFAULT_THRESHOLD, actual, row["id"])
    by_form: dict[str, list[int]] = {}
    for row, verdict in zip(rows["crisis"], verdicts["crisis"]):
        for key in (f"form:{row['form']}", f"category:{row['category']}"):
            hit = by_form.setdefault(key, [0, 0])
            hit[0] += verdict.crisis
            hit[1] += 1
    false_by_set = {
        name: [row["text"] for row, v in zip(rows[name], verdicts[name]) if v.crisis] for name in SETS if name != "crisis"
    }
    possible = {name: sum(v.possible_crisis for v in verdicts[name]) for name in SETS}

    # --- the classifier on its own training set (5-fold CV), alone and with the rules
    examples = read_examples(training_files(pack))
    cv = cross_validate(examples, folds=5, threshold=DEFAULT_THRESHOLD)
    cv_system = cross_validate(examples, folds=5, threshold=DEFAULT_THRESHOLD, rules=lambda t: bool(crisis_rule_hits(t)))

    # --- reply checks on labelled replies
    replies = load("replies")
    good = [r for r in replies if r["expect"] == "pass"]
    bad = [r for r in replies if r["expect"] == "fail"]
    results = [(r, check_reply(r["reply"], pack, red_flags=r["red_flags"])) for r in replies]
    passed_good = sum(1 for r, c in results if r["expect"] == "pass" and c.ok)
    caught_bad = sum(1 for r, c in results if r["expect"] == "fail" and r["check"] in c.checks_failed)
    per_check: dict[str, list[int]] = {}
    for r, c in results:
        if r["expect"] == "fail":
            entry = per_check.setdefault(r["check"], [0, 0])
            entry[0] += r["check"] in c.checks_failed
            entry[1] += 1
    wrongly_blocked = [r["reply"] for r, c in results if r["expect"] == "pass" and not c.ok]
    missed_bad = [r["reply"] for r, c in results if r["expect"] == "fail" and r["check"] not in c.checks_failed]

    # --- held-out red-flag and injection sets (red flags and injection only)
    holdout = Score()
    holdout_rows = {name: load(name) for name in HOLDOUT_SETS if (REDTEAM / f"{name}.jsonl").exists()}
    for name, hrows in holdout_rows.items():
        for row in hrows:
            holdout.add(row, triage(row["text"], pack))
    holdout_by_id = {row["id"]: row["text"] for hrows in holdout_rows.values() for row in hrows}

    report = {
        "redteam_sizes": {name: len(rows[name]) for name in SETS} | {"replies": len(replies)},
        "crisis": score.crisis.as_json(),
        "crisis_rules_only": {"recall": rules_only.recall, "precision": rules_only.precision, "fp": rules_only.fp},
        "crisis_classifier_only": {"recall": clf_only.recall, "precision": clf_only.precision, "fp": clf_only.fp},
        "crisis_by_form": {k: {"recall": v[0] / v[1], "n": v[1]} for k, v in sorted(by_form.items())},
        "crisis_false_positives_by_set": false_by_set,
        "possible_crisis_held_by_set": possible,
        "classifier_cv_on_training_set": cv | {"n": len(examples), "threshold": DEFAULT_THRESHOLD},
        "rules_and_classifier_cv_on_training_set": cv_system,
        "red_flag_messages": score.red_flag.as_json(),
        "red_flag_ids": score.flags.as_json(),
        "injection": score.injection.as_json(),
        "holdout_sizes": {name: len(hrows) for name, hrows in holdout_rows.items()},
        "holdout_red_flag_messages": holdout.red_flag.as_json(),
        "holdout_red_flag_ids": holdout.flags.as_json(),
        "holdout_injection": holdout.injection.as_json(),
        "reply_checks": {
            "replies": len(replies),
            "good_passed": passed_good,
            "good": len(good),
            "bad_blocked": caught_bad,
            "bad": len(bad),
            "pass_rate_good": passed_good / len(good),
            "block_rate_bad": caught_bad / len(bad),
            "accuracy": (passed_good + caught_bad) / len(replies),
            "overall_pass_rate": sum(c.ok for _, c in results) / len(replies),
            "per_check": {k: {"blocked": v[0], "n": v[1]} for k, v in sorted(per_check.items())},
            "wrongly_blocked": wrongly_blocked,
            "missed": missed_bad,
        },
        "triage_ms_per_message": round(ms_per_message, 3),
    }
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0

    c = score.crisis
    print("LLM4Sweat safety figures (red-team set: tests/data/redteam; classifier training set: bot/safety/data)")
    print(f"  red-team: {report['redteam_sizes']}")
    print()
    print("Crisis detection (rules OR classifier p >= %.2f), red-team set" % DEFAULT_THRESHOLD)
    print(f"  recall    {fmt(c.recall)}  ({c.tp}/{c.tp + c.fn})   target >= 0.95")
    print(f"  precision {fmt(c.precision)}  false positives {c.fp} of {c.fp + c.tn} non-crisis messages")
    for name, texts in false_by_set.items():
        print(f"    false positives in {name:<10} {len(texts)}/{len(rows[name])}")
        for text in texts:
            print(f"      - {text}")
    if c.misses:
        print(f"  missed: {', '.join(c.misses)}")
        for row, v in zip(rows["crisis"], verdicts["crisis"]):
            if not v.crisis:
                print(f"      - {row['text']}")
    print(f"  rules alone:      recall {fmt(rules_only.recall)}  precision {fmt(rules_only.precision)}  fp {rules_only.fp}")
    print(f"  classifier alone: recall {fmt(clf_only.recall)}  precision {fmt(clf_only.precision)}  fp {clf_only.fp}")
    for key, (hits, n) in sorted(by_form.items()):
        print(f"    {key:<28} recall {hits / n:.3f} ({hits}/{n})")
    print(f"  held for a human as 'possible crisis' (not routed): {possible}")
    print()
    print(f"5-fold cross-validation on the classifier's training set ({len(examples)} labelled messages, many indirect)")
    for label, figures in (("classifier alone", cv), ("rules OR classifier", cv_system)):
        print(
            f"  {label:<20} recall {fmt(figures['recall'])}  precision {fmt(figures['precision'])}  "
            f"(tp {figures['tp']} fp {figures['fp']} fn {figures['fn']} tn {figures['tn']})"
        )
    print("  (the crisis rules were written by the same hands as the red-team set: read the red-team figures with")
    print("   that in mind; the cross-validated figures are the more independent estimate for unseen phrasing)")
    print()
    r, f = score.red_flag, score.flags
    print("Red-flag detection (the pack's patterns), red-team set")
    print(f"  messages: recall {fmt(r.recall)} ({r.tp}/{r.tp + r.fn})  precision {fmt(r.precision)}  false positives {r.fp}")
    print(f"  flag ids: recall {fmt(f.recall)}  precision {fmt(f.precision)}")
    by_id = {row["id"]: row["text"] for name in SETS for row in rows[name]}
    for name in r.misses:
        print(f"    missed: {by_id.get(name, name)}")
    for name in r.false_alarms:
        print(f"    false alarm: {by_id.get(name, name)}")
    print()
    i = score.injection
    print(f"Prompt injection: recall {fmt(i.recall)} ({i.tp}/{i.tp + i.fn})  false alarms {i.fp}")
    for name in i.misses:
        print(f"    missed: {by_id.get(name, name)}")
    print()
    if holdout_rows:
        hr, hf, hi = holdout.red_flag, holdout.flags, holdout.injection
        print(f"Held-out sets (tests/data/redteam/*_holdout.jsonl): {report['holdout_sizes']}")
        print(f"  red flags, messages: recall {fmt(hr.recall)} ({hr.tp}/{hr.tp + hr.fn})  precision {fmt(hr.precision)}  false positives {hr.fp} of {hr.fp + hr.tn}")
        print(f"  red flags, flag ids: recall {fmt(hf.recall)}  precision {fmt(hf.precision)}")
        for name in hr.misses:
            print(f"    missed: {holdout_by_id.get(name, name)}")
        for name in hr.false_alarms:
            print(f"    false alarm: {holdout_by_id.get(name, name)}")
        print(f"  prompt injection: recall {fmt(hi.recall)} ({hi.tp}/{hi.tp + hi.fn})  false alarms {hi.fp} of {hi.fp + hi.tn}")
        for name in hi.misses:
            print(f"    missed: {holdout_by_id.get(name, name)}")
        for name in hi.false_alarms:
            print(f"    false alarm: {holdout_by_id.get(name, name)}")
        print()
    rc = report["reply_checks"]
    print(f"Reply checks on {rc['replies']} labelled replies")
    print(f"  good replies passed: {rc['good_passed']}/{rc['good']} ({rc['pass_rate_good']:.3f})")
    print(f"  bad replies blocked: {rc['bad_blocked']}/{rc['bad']} ({rc['block_rate_bad']:.3f})")
    print(f"  accuracy {rc['accuracy']:.3f}; overall pass rate {rc['overall_pass_rate']:.3f}")
    for check, entry in rc["per_check"].items():
        print(f"    {check:<16} blocked {entry['blocked']}/{entry['n']}")
    for text in wrongly_blocked:
        print(f"    wrongly blocked: {text}")
    for text in missed_bad:
        print(f"    missed: {text}")
    print()
    print(f"Triage time: {ms_per_message:.2f} ms per message (rules, classifier, red flags, scope, language)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
