"""Safety figures: leave-one-writer-out CV on the corpus, the red-team set, latency, reply checks.

    python bench/bench_safety.py             # CV + red-team set + latency + reply checks
    python bench/bench_safety.py --json      # the same as one JSON object
    python bench/bench_safety.py --sweep     # also the CV threshold sweep (how the thresholds were chosen)
    python bench/bench_safety.py --blind B5  # also the blind set tests/data/safety_blind/B5.jsonl (the lead only, once)

What is scored, and what was tuned on what:

* **Leave-one-writer-out cross-validation** (the corpus in ``bot/safety/data/``): for each batch
  (one writer's file), the learned model is trained on every other batch and the whole offline
  triage (rules OR model, the pack's red-flag patterns, injection rules) scores the held-out
  batch. The thresholds in ``bot/safety/detector.py`` were chosen on these pooled CV figures
  only (``--sweep`` prints the curve and the choice).
* **Red-team set** (``tests/data/redteam``): scored with the shipped model (trained on the whole
  corpus); never trained or tuned on. Its crisis rules' authors wrote part of it: read with care.
* **Blind set** (``tests/data/safety_blind``): only with ``--blind SET``; never read otherwise. Bare
  ``--blind`` scores the one set there and refuses when there are several (an untouched set kept
  for a later session must not be spent unknowingly beside the one being scored).

Figures, overall and per script and per language: crisis recall (``crisis: true``), red-flag
recall (red flag or crisis), injection recall, benign flagged as crisis (with the count of false
positives), and the latency of the whole triage per message (p50 / p99).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.safety.classifier import train_on_rows  # noqa: E402
from bot.safety.corpus import EXCLUDED, Row, _row, corpus_files, load_corpus, read_rows  # noqa: E402
from bot.safety.detector import Decision, Thresholds, crisis_model, decide, own_language, signals, triage  # noqa: E402
from bot.safety.reply_checks import check_reply  # noqa: E402
from pipeline.packs import PACKS_DIR, load_pack  # noqa: E402

REDTEAM = ROOT / "tests" / "data" / "redteam"
BLIND = ROOT / "tests" / "data" / "safety_blind"
REDTEAM_SETS = (
    "crisis", "benign", "red_flags", "injection", "red_flags_holdout", "benign_holdout", "injection_holdout",
    "crisis_independent", "benign_independent",
)
POSSIBLE_RECALL = 0.97  # crises that at least get the soft check-in (possible crisis) on CV
TARGETS = {"crisis_recall": 0.95, "red_flag_recall": 0.90, "injection_recall": 0.90, "benign_as_crisis": 0.10}


# ------------------------------------------------------------------------------ figures


def figures(pairs: Sequence[tuple[Row, Decision]]) -> dict[str, Any]:
    """Recall per label and benign false positives for one group of scored rows."""
    n = defaultdict(int)
    hit = defaultdict(int)
    fp = {"benign_as_crisis": 0, "benign_as_red_flag": 0, "non_injection_as_injection": 0, "red_flag_as_crisis": 0}
    for row, d in pairs:
        n[row.label] += 1
        if row.label == "crisis":
            hit["crisis"] += d.crisis
        elif row.label == "red_flag":
            hit["red_flag"] += d.crisis or bool(d.red_flags)
            hit["red_flag_id"] += bool(row.red_flag_id) and row.red_flag_id in d.red_flags
            n["red_flag_id"] += bool(row.red_flag_id)
            fp["red_flag_as_crisis"] += d.crisis
        elif row.label == "injection":
            hit["injection"] += d.injection
        elif row.label == "benign":
            fp["benign_as_crisis"] += d.crisis
            fp["benign_as_red_flag"] += bool(d.red_flags) and not d.crisis
        if row.label != "injection":
            fp["non_injection_as_injection"] += d.injection
    out: dict[str, Any] = {"n": dict(n), "false_positives": fp}

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 4) if b else None

    out["crisis_recall"] = ratio(hit["crisis"], n["crisis"])
    out["red_flag_recall"] = ratio(hit["red_flag"], n["red_flag"])
    out["red_flag_id_recall"] = ratio(hit["red_flag_id"], n["red_flag_id"])
    out["injection_recall"] = ratio(hit["injection"], n["injection"])
    out["benign_as_crisis"] = ratio(fp["benign_as_crisis"], n["benign"])
    out["possible_crisis_on_missed_crises"] = sum(1 for r, d in pairs if r.label == "crisis" and not d.crisis and d.possible)
    # What the patient at least gets: crisis, or the possible-crisis check-in (resources, reply held).
    out["crisis_or_possible_recall"] = ratio(sum(1 for r, d in pairs if r.label == "crisis" and (d.crisis or d.possible)), n["crisis"])
    out["benign_as_crisis_or_possible"] = ratio(sum(1 for r, d in pairs if r.label == "benign" and (d.crisis or d.possible)), n["benign"])
    return out


def grouped(pairs: Sequence[tuple[Row, Decision]]) -> dict[str, Any]:
    by_script: dict[str, list] = defaultdict(list)
    by_lang: dict[str, list] = defaultdict(list)
    by_form: dict[str, list] = defaultdict(list)
    for row, d in pairs:
        by_script[row.script or "?"].append((row, d))
        by_lang[row.lang or "?"].append((row, d))
        by_form[row.form or "?"].append((row, d))
    return {
        "overall": figures(pairs),
        "by_script": {k: figures(v) for k, v in sorted(by_script.items())},
        "by_form": {k: figures(v) for k, v in sorted(by_form.items())},
        "by_language": {k: figures(v) for k, v in sorted(by_lang.items())},
        "ordinary_statements": ordinary_statements(pairs),
    }


def ordinary_statements(pairs: Sequence[tuple[Row, Decision]]) -> dict[str, Any]:
    """Benign ordinary first-person statements ("I live in Spain.", "I am a student."): how many
    get a crisis alarm or the possible-crisis check-in. The learned model's known weak spot: the
    corpus's short messages were mostly crises."""
    rows = [(r, d) for r, d in pairs if r.label == "benign" and r.family == "ordinary_statement"]
    return {
        "n": len(rows), "as_crisis": sum(d.crisis for _, d in rows),
        "as_possible": sum(d.possible for _, d in rows),
        "examples": [r.text[:80] for r, d in rows if d.crisis][:10],
    }


def misses(pairs: Sequence[tuple[Row, Decision]], limit: int = 400) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"crisis_missed": [], "benign_as_crisis": [], "red_flag_missed": [], "injection_missed": []}
    for row, d in pairs:
        tag = f"[{row.batch}/{row.lang}/{row.family}] {row.text[:160]}"
        if row.label == "crisis" and not d.crisis:
            out["crisis_missed"].append(tag)
        elif row.label == "benign" and d.crisis:
            out["benign_as_crisis"].append(tag)
        elif row.label == "red_flag" and not (d.crisis or d.red_flags):
            out["red_flag_missed"].append(tag)
        elif row.label == "injection" and not d.injection:
            out["injection_missed"].append(tag)
    return {k: v[:limit] for k, v in out.items()}


# ------------------------------------------------------------------------------ CV and threshold choice


def leave_one_writer_out(rows: Sequence[Row], pack: Any) -> list[tuple[Row, Any]]:
    """(row, signals) for every row, each from the model trained without its batch."""
    batches = sorted({r.batch for r in rows})
    out = []
    for batch in batches:
        train = [r for r in rows if r.batch != batch]
        test = [r for r in rows if r.batch == batch]
        if not train or not test:
            continue
        started = time.perf_counter()
        model = train_on_rows(train)
        print(f"  CV fold {batch}: trained on {len(train)} in {time.perf_counter() - started:.1f} s, scoring {len(test)}",
              file=sys.stderr)
        out += [(r, signals(r.text, pack, model)) for r in test]
    return out


MIN_BENIGN_PER_SCRIPT = 150  # a script gets its own crisis threshold when CV has this many benign messages of it
MIN_POSITIVES_PER_SCRIPT = 80  # … its own red-flag / injection threshold with this many red flags / injections
GRID = [round(0.025 * i, 3) for i in range(2, 39)]  # 0.05 … 0.95


def cached_oof(path: Path | None, files: Sequence[Path], rows: Sequence[Row], pack: Any) -> list[tuple[Row, Any]]:
    """:func:`leave_one_writer_out`, kept in ``path`` keyed by the corpus hash and the model version."""
    import pickle

    from bot.safety.classifier import MODEL_VERSION
    from bot.safety.corpus import corpus_hash

    key = (corpus_hash([*files, EXCLUDED] if EXCLUDED.is_file() else files), MODEL_VERSION, len(rows))
    if path is not None and path.is_file():
        saved_key, oof = pickle.loads(path.read_bytes())
        if saved_key == key:
            print(f"  CV held-out signals from {path}", file=sys.stderr)
            return oof
    oof = leave_one_writer_out(rows, pack)
    if path is not None:
        path.write_bytes(pickle.dumps((key, oof)))
    return oof


def sweep(oof: Sequence[tuple[Row, Any]], base: Thresholds) -> dict[str, Any]:
    """Pooled CV figures over a grid of each threshold; the recall-first choice for each.

    Per script where the CV has enough messages of it (else per script group: Latin, all others):
    * crisis: the lowest threshold (most recall) whose benign-as-crisis stays within the target;
    * possible crisis (overall): the highest threshold at which crisis OR possible crisis still
      reaches POSSIBLE_RECALL of the crises;
    * learned red flag outside the pack's language, and injection: the highest threshold (fewest
      false alarms) still meeting the recall target; red flag in the pack's own language: overall.
    """
    grid = GRID

    def at(th: Thresholds, pairs: Sequence = oof) -> dict[str, Any]:
        return figures([(r, decide(s, th)) for r, s in pairs])

    by_script: dict[str, list] = defaultdict(list)
    for r, s in oof:
        by_script[s.script].append((r, s))
    latin = by_script.get("Latin", [])
    other = [(r, s) for r, s in oof if s.script != "Latin"]
    base = replace(base, crisis_by_script=(), red_flag_by_script=(), injection_by_script=())

    def lowest_within_target(group: Sequence, make) -> float:
        ok = [t for t in grid if (at(make(t), group)["benign_as_crisis"] or 0) <= TARGETS["benign_as_crisis"]]
        return min(ok) if ok else max(grid)

    def highest_meeting(group: Sequence, make, key: str) -> float:
        ok = [t for t in grid if (at(make(t), group)[key] or 0) >= TARGETS[key]]
        return max(ok) if ok else min(grid)

    # Crisis: script groups first (the fallback), then every script with enough benign messages.
    chosen = replace(base, crisis=lowest_within_target(latin, lambda t: replace(base, crisis=t)),
                     crisis_other_scripts=lowest_within_target(other, lambda t: replace(base, crisis_other_scripts=t)))
    per_script = {}
    for script, group in sorted(by_script.items()):
        if sum(r.label == "benign" for r, _ in group) >= MIN_BENIGN_PER_SCRIPT:
            per_script[script] = lowest_within_target(group, lambda t, sc=script: replace(chosen, crisis_by_script=((sc, t),)))
    chosen = replace(chosen, crisis_by_script=tuple(per_script.items()))
    crisis_curve = {t: at(replace(chosen, crisis=t, crisis_other_scripts=t, crisis_by_script=())) for t in grid}
    crisis_script_curves = {
        script: {t: (f["crisis_recall"], f["benign_as_crisis"]) for t in grid
                 for f in [at(replace(chosen, crisis_by_script=((script, t),)), group)]}
        for script, group in sorted(by_script.items())
    }

    def flagged_recall(t: float) -> float:
        hits = [decide(s, replace(chosen, possible=t)) for r, s in oof if r.label == "crisis"]
        return sum(d.crisis or d.possible for d in hits) / max(1, len(hits))

    cuts = [t for _, t in chosen.crisis_by_script] + [chosen.crisis, chosen.crisis_other_scripts]
    possible_curve = {t: flagged_recall(t) for t in grid if t <= max(cuts)}
    ok = [t for t, rec in possible_curve.items() if rec >= POSSIBLE_RECALL]
    chosen = replace(chosen, possible=max(ok) if ok else min(grid))
    # Red flags the pack's patterns missed, in languages they do not read: per script group, then script.
    foreign = [(r, s) for r, s in oof if not own_language(s)]
    rf_curve = {t: at(replace(chosen, red_flag=t), foreign) for t in grid}
    chosen = replace(chosen, red_flag=highest_meeting(foreign, lambda t: replace(chosen, red_flag=t), "red_flag_recall"))
    rf_script = {}
    for script, group in sorted(by_script.items()):
        group = [(r, s) for r, s in group if not own_language(s)]
        if sum(r.label == "red_flag" for r, _ in group) >= MIN_POSITIVES_PER_SCRIPT:
            rf_script[script] = highest_meeting(
                group, lambda t, sc=script: replace(chosen, red_flag_by_script=((sc, t),)), "red_flag_recall")
    chosen = replace(chosen, red_flag_by_script=tuple(rf_script.items()))
    rf_own_curve = {t: at(replace(chosen, red_flag_own_language=t)) for t in grid}
    ok = [t for t in grid if (rf_own_curve[t]["red_flag_recall"] or 0) >= TARGETS["red_flag_recall"]]
    chosen = replace(chosen, red_flag_own_language=max(ok) if ok else min(grid))
    inj_curve = {t: at(replace(chosen, injection=t, injection_by_script=())) for t in grid}
    chosen = replace(chosen, injection=highest_meeting(oof, lambda t: replace(chosen, injection=t), "injection_recall"))
    inj_script = {}
    for script, group in sorted(by_script.items()):
        if sum(r.label == "injection" for r, _ in group) >= MIN_POSITIVES_PER_SCRIPT:
            inj_script[script] = highest_meeting(
                group, lambda t, sc=script: replace(chosen, injection_by_script=((sc, t),)), "injection_recall")
    chosen = replace(chosen, injection_by_script=tuple(inj_script.items()))
    wrf_curve = {t: at(replace(chosen, crisis_with_red_flag=t)) for t in grid if t >= min(cuts)}
    words_curve = {w: at(replace(chosen, min_words=w)) for w in (1, 2, 3)}
    return {
        "chosen": asdict(chosen),
        "crisis": {t: (f["crisis_recall"], f["benign_as_crisis"], f["false_positives"]["red_flag_as_crisis"]) for t, f in crisis_curve.items()},
        "crisis_per_script": crisis_script_curves,
        "possible_crisis_or_crisis_recall": {t: round(r, 4) for t, r in possible_curve.items()},
        "red_flag_foreign": {t: (f["red_flag_recall"], f["false_positives"]["benign_as_red_flag"]) for t, f in rf_curve.items()},
        "red_flag_own_language": {t: (f["red_flag_recall"], f["false_positives"]["benign_as_red_flag"]) for t, f in rf_own_curve.items()},
        "injection": {t: (f["injection_recall"], f["false_positives"]["non_injection_as_injection"]) for t, f in inj_curve.items()},
        "crisis_with_red_flag": {t: (f["crisis_recall"], f["red_flag_recall"], f["false_positives"]["red_flag_as_crisis"]) for t, f in wrf_curve.items()},
        "min_words": {w: (f["crisis_recall"], f["benign_as_crisis"]) for w, f in words_curve.items()},
    }


# ------------------------------------------------------------------------------ scored sets


def redteam_rows() -> list[Row]:
    rows = []
    for name in REDTEAM_SETS:
        path = REDTEAM / f"{name}.jsonl"
        if not path.is_file():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            data = json.loads(line)
            data.setdefault("label", "crisis" if name.startswith("crisis") else "benign")
            flags = data.get("red_flags") or []
            data["red_flag_id"] = flags[0] if flags else ""
            rows.append(_row(data, name, f"{name}:{n}"))
    return rows


def _shingles(text: str, size: int = 8) -> set[str]:
    """The red-team test's measure (tests/test_safety.py): 8-character shingles of the folded text."""
    norm = re.sub(r"\s+", " ", re.sub(r"[^\w]+", " ", text.casefold())).strip()
    return {norm[i : i + size] for i in range(max(1, len(norm) - size + 1))}


def update_exclusions(pack: Any, limit: float = 0.5) -> list[str]:
    """Write bot/safety/data/excluded.tsv: corpus rows covering >= ``limit`` of a red-team message."""
    red = [(r, _shingles(r.text)) for r in redteam_rows()]
    lines = []
    for row in load_corpus(corpus_files(pack), exclude=False):
        sh = _shingles(row.text)
        for r, rsh in red:
            overlap = len(rsh & sh) / len(rsh)
            if overlap >= limit:
                lines.append(f"{row.id}\tnearly repeats red-team {r.id} ({overlap:.2f})")
                break
    EXCLUDED.write_text(
        "# corpus rows left out of training: they nearly repeat a red-team message (bench_safety.py --update-exclusions)\n"
        + "".join(line + "\n" for line in lines), encoding="utf-8",
    )
    return lines


def blind_files(names: Sequence[str], folder: Path = BLIND) -> list[Path]:
    """The blind sets to score: the named ones (``B4`` or ``B4.jsonl``), or with no name the only
    set in ``folder``. Raises ValueError, before anything is read, for an unknown name or for no
    name while several sets are there."""
    present = sorted(folder.glob("*.jsonl"))
    if not names:
        if len(present) > 1:
            raise ValueError("several blind sets in " + str(folder) + " (" + ", ".join(p.stem for p in present)
                             + "): name the one to score, e.g. --blind " + present[0].stem
                             + " (each is scored once; see its README)")
        return present
    out = []
    for name in names:
        path = folder / (name if name.endswith(".jsonl") else name + ".jsonl")
        if path not in present:
            raise ValueError(f"no blind set {name!r} in {folder} (there: {', '.join(p.stem for p in present) or 'none'})")
        out.append(path)
    return out


def blind_rows(files: Sequence[Path]) -> list[Row]:
    rows: list[Row] = []
    for path in files:
        rows += read_rows(path)
    return rows


def score_with(rows: Iterable[Row], pack: Any, model: Any) -> list[tuple[Row, Decision]]:
    return [(r, decide(signals(r.text, pack, model))) for r in rows]


def latency(texts: Sequence[str], pack: Any) -> dict[str, float]:
    for text in texts[:20]:  # warm caches (regexes, the model's first call)
        triage(text, pack)
    times = []
    for text in texts:
        started = time.perf_counter()
        triage(text, pack)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "messages": len(times), "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(times[min(len(times) - 1, int(0.99 * len(times)))], 2), "mean_ms": round(statistics.fmean(times), 2),
    }


def reply_check_figures(pack: Any) -> dict[str, Any]:
    replies = [json.loads(line) for line in (REDTEAM / "replies.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    results = [(r, check_reply(r["reply"], pack, red_flags=r["red_flags"])) for r in replies]
    good = [c for r, c in results if r["expect"] == "pass"]
    bad = [(r, c) for r, c in results if r["expect"] == "fail"]
    return {
        "replies": len(replies), "good_passed": sum(c.ok for c in good), "good": len(good),
        "bad_blocked": sum(r["check"] in c.checks_failed for r, c in bad), "bad": len(bad),
    }


# ------------------------------------------------------------------------------ printing


def fmt(x: Any) -> str:
    return "  n/a" if x is None else f"{x:.3f}"


def print_group(title: str, g: dict[str, Any]) -> None:
    def line(name: str, f: dict[str, Any]) -> str:
        n = f["n"]
        return (
            f"  {name:<12} n={sum(v for k, v in n.items() if k != 'red_flag_id'):<5} "
            f"crisis {fmt(f['crisis_recall'])} ({n.get('crisis', 0):>3})  "
            f"red flag {fmt(f['red_flag_recall'])} ({n.get('red_flag', 0):>3})  "
            f"injection {fmt(f['injection_recall'])} ({n.get('injection', 0):>3})  "
            f"benign-as-crisis {fmt(f['benign_as_crisis'])} ({f['false_positives']['benign_as_crisis']}/{n.get('benign', 0)})"
        )

    o = g["overall"]
    print(title)
    print(line("overall", o))
    fp = o["false_positives"]
    print(f"  false positives: benign→crisis {fp['benign_as_crisis']}, benign→red flag {fp['benign_as_red_flag']}, "
          f"non-injection→injection {fp['non_injection_as_injection']}, red flag→crisis {fp['red_flag_as_crisis']}; "
          f"red-flag id right {fmt(o['red_flag_id_recall'])}")
    print(f"  crisis OR possible crisis (check-in, reply held): recall {fmt(o['crisis_or_possible_recall'])}, "
          f"benign flagged so {fmt(o['benign_as_crisis_or_possible'])}")
    ords = g["ordinary_statements"]
    if ords["n"]:
        print(f"  ordinary statements (benign, family ordinary_statement): {ords['as_crisis']}/{ords['n']} as crisis, "
              f"{ords['as_possible']}/{ords['n']} as possible crisis; e.g. {ords['examples'][:3]}")
    print("  per script:")
    for name, f in g["by_script"].items():
        print("  " + line(name, f))
    print("  per form:")
    for name, f in g["by_form"].items():
        print("  " + line(name, f))
    print("  per language:")
    for name, f in g["by_language"].items():
        print("  " + line(name, f))
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--sweep", action="store_true", help="print the CV threshold sweep")
    parser.add_argument("--blind", nargs="*", metavar="SET",
                        help="also score these sets of tests/data/safety_blind, e.g. B4 (the lead, once); "
                             "with no name, the only set there (refused when there are several)")
    parser.add_argument("--misses", action="store_true", help="list the CV misses and false positives")
    parser.add_argument("--oof", type=Path, metavar="FILE",
                        help="keep the CV's held-out signals in FILE (pickle) and reuse them while the corpus and "
                             "the model version are the same: print new thresholds' figures without retraining")
    parser.add_argument("--update-exclusions", action="store_true",
                        help="rewrite bot/safety/data/excluded.tsv (corpus rows nearly repeating a red-team message) and stop")
    args = parser.parse_args()
    blind_sets: list[Path] = []
    if args.blind is not None:
        try:
            blind_sets = blind_files(args.blind)
        except ValueError as exc:
            parser.error(str(exc))

    pack = load_pack(PACKS_DIR / "hyperhidrosis")
    if args.update_exclusions:
        lines = update_exclusions(pack)
        print(f"{len(lines)} corpus rows excluded ({EXCLUDED.relative_to(ROOT)})")
        for line in lines:
            print("  " + line)
        return 0
    files = corpus_files(pack)
    rows = load_corpus(files)
    batches = sorted({r.batch for r in rows})
    report: dict[str, Any] = {
        "corpus": {"files": [f.name for f in files], "rows": len(rows), "batches": {b: sum(r.batch == b for r in rows) for b in batches}},
        "thresholds": asdict(Thresholds()),
    }
    if len(batches) >= 2:
        oof = cached_oof(args.oof, files, rows, pack)
        cv_pairs = [(r, decide(s)) for r, s in oof]
        report["cv_leave_one_writer_out"] = grouped(cv_pairs)
        report["cv_per_batch"] = {b: figures([(r, d) for r, d in cv_pairs if r.batch == b]) for b in batches}
        report["cv_sweep"] = sweep(oof, Thresholds())
        report["cv_misses"] = misses(cv_pairs)
    started = time.perf_counter()
    model = crisis_model(pack)
    report["train_seconds_full_corpus"] = round(time.perf_counter() - started, 1)
    import pickle

    from bot.safety.classifier import MODEL_VERSION

    report["model"] = {"version": MODEL_VERSION, "pickled_mb": round(len(pickle.dumps(model)) / 1e6, 1),
                       "features": int(model.featurizer.n_features), "hidden": int(model.w1.shape[1])}
    report["redteam"] = grouped(score_with(redteam_rows(), pack, model))
    if args.blind is not None:
        blind = blind_rows(blind_sets)
        report["blind_sets"] = [p.stem for p in blind_sets]
        if blind:
            report["blind"] = grouped(score_with(blind, pack, model))
        else:
            report["blind_missing"] = f"no blind set in {BLIND.relative_to(ROOT)} (B1 went to training; B2 comes at the end)"
    report["latency"] = latency([r.text for r in rows], pack) | {
        "how": "the whole offline triage (rules, learned model, red flags, scope, language) per message, one at a "
               "time in one process, time.perf_counter, model trained and warmed first; corpus messages"
    }
    report["reply_checks"] = reply_check_figures(pack)

    if args.json:
        print(json.dumps(report, indent=1, ensure_ascii=False))
        return 0
    print(f"LLM4Sweat safety figures — corpus {report['corpus']['rows']} rows in batches {report['corpus']['batches']}")
    print(f"thresholds in use (chosen on CV): {report['thresholds']}")
    print(f"targets: {TARGETS}")
    print()
    if "cv_leave_one_writer_out" in report:
        print_group("Leave-one-writer-out CV (train on every other batch, score the held-out one; pooled)",
                    report["cv_leave_one_writer_out"])
        for b, f in report["cv_per_batch"].items():
            print(f"  held-out {b:<8} crisis {fmt(f['crisis_recall'])}  red flag {fmt(f['red_flag_recall'])}  "
                  f"injection {fmt(f['injection_recall'])}  benign-as-crisis {fmt(f['benign_as_crisis'])}")
        print(f"  recall-first choice on this CV: {report['cv_sweep']['chosen']}")
        print()
        if args.sweep:
            for name, curve in report["cv_sweep"].items():
                if name != "chosen":
                    print(f"  sweep {name}: " + "  ".join(f"{t}:{v}" for t, v in curve.items()))
            print()
        if args.misses:
            for name, items in report["cv_misses"].items():
                print(f"  {name} ({len(items)}):")
                for item in items:
                    print(f"    - {item}")
            print()
    print_group("Red-team set (tests/data/redteam, shipped model; never trained or tuned on)", report["redteam"])
    if "blind" in report:
        print_group(f"Blind set {' + '.join(report['blind_sets'])} (tests/data/safety_blind, shipped model; scored once)",
                    report["blind"])
    elif "blind_missing" in report:
        print(f"Blind set: {report['blind_missing']}")
        print()
    lat = report["latency"]
    print(f"Latency: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms over {lat['messages']} messages ({lat['how']})")
    print(f"Training on the full corpus: {report['train_seconds_full_corpus']} s (0-2 s when this corpus's model was "
          f"already in the cache: it is cached on disk by corpus hash); model {report['model']}")
    rc = report["reply_checks"]
    print(f"Reply checks: good replies passed {rc['good_passed']}/{rc['good']}, bad replies blocked {rc['bad_blocked']}/{rc['bad']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
