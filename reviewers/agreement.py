"""Agreement: between reviewers, and between the LLM judge and the reviewers, per rubric axis.

So a team can see whether its experts judge alike, and whether the judge (reviewers/judge.py)
reads replies as they do before trusting its ordering of the queue. Computed on request:

* **Reviewers with each other** — items that two or more reviewers decided: the first two
  reviewers' scores per item give Cohen's kappa (quadratic weights for the 1–5 rubric scores,
  whose distances matter; unweighted for the decision, a category), with a bootstrap 95% CI,
  the number of items and the exact-agreement rate; Fleiss' kappa uses every reviewer of each
  item (items cut to the smallest number of reviewers, as the statistic needs).
* **The judge with the reviewers** — items the judge scored and at least one reviewer scored on
  that axis: one pair per item, the judge's score against the reviewers' median (the lower
  middle value when they are an even number, so it is a score someone gave).

The statistics come from the field's libraries: scikit-learn's ``cohen_kappa_score`` (over the
whole 1–5 scale, so weights are the same whichever scores happen to occur), statsmodels'
``fleiss_kappa``, and scipy's ``stats.bootstrap`` (paired resampling of items, percentile
interval over the resamples where kappa is defined; each resample's kappa by statsmodels'
``cohens_kappa`` on its contingency table, the same statistic, fast enough for 1,000 resamples). Kappa is undefined (None) when both sides
gave one and the same score throughout.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import warnings
from collections import defaultdict
from typing import Any, Hashable, Sequence

from bot.storage import Database
from reviewers.models import RUBRIC_CRITERIA

SCORES = [1, 2, 3, 4, 5]
ACTIONS = ["approve", "edit", "reject"]
BOOTSTRAP_RESAMPLES = 1000
MIN_ITEMS_FOR_CI = 5  # fewer items: no interval (it would mean nothing)


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable], *, weights: str | None = None,
                labels: Sequence[Hashable] | None = None) -> float | None:
    """Cohen's kappa for two raters over the same items (scikit-learn); None when undefined."""
    if len(a) != len(b) or not a:
        return None
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 0/0 when kappa is undefined: reported as None
        value = cohen_kappa_score(list(a), list(b), weights=weights, labels=list(labels) if labels else None)
    return None if math.isnan(value) else float(value)


def fleiss_kappa(ratings: Sequence[Sequence[Hashable]]) -> float | None:
    """Fleiss' kappa (statsmodels); ``ratings[i]`` holds every rater's category for item i
    (items with fewer than two ratings are left out; the rest are cut to the smallest count)."""
    items = [list(r) for r in ratings if len(r) >= 2]
    if not items:
        return None
    import numpy as np
    from statsmodels.stats.inter_rater import aggregate_raters
    from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

    n = min(len(r) for r in items)
    categories = sorted({c for r in items for c in r}, key=str)
    codes = np.array([[categories.index(c) for c in r[:n]] for r in items])
    table, _ = aggregate_raters(codes, n_cat=len(categories))
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        value = float(sm_fleiss_kappa(table, method="fleiss"))
    if math.isnan(value):
        return 1.0 if len(categories) == 1 else None  # everyone gave the one category: perfect agreement
    return value


def agreement_figures(a: Sequence[Hashable], b: Sequence[Hashable], *, weights: str | None,
                      labels: Sequence[Hashable]) -> dict[str, Any]:
    """n, exact-agreement rate, kappa and its bootstrap 95% CI for paired ratings."""
    n = len(a)
    figures: dict[str, Any] = {"n": n, "exact": None, "kappa": None, "ci95": None}
    if n == 0:
        return figures
    figures["exact"] = round(sum(x == y for x, y in zip(a, b)) / n, 3)
    kappa = cohen_kappa(a, b, weights=weights, labels=labels)
    figures["kappa"] = None if kappa is None else round(kappa, 3)
    if kappa is not None and n >= MIN_ITEMS_FOR_CI:
        figures["ci95"] = _bootstrap_ci(a, b, weights=weights, labels=labels)
    return figures


def _bootstrap_ci(a: Sequence[Hashable], b: Sequence[Hashable], *, weights: str | None,
                  labels: Sequence[Hashable]) -> list[float] | None:
    """Percentile 95% interval of kappa over paired bootstrap resamples of the items (scipy)."""
    import numpy as np
    from scipy import stats

    from statsmodels.stats.inter_rater import cohens_kappa

    index = {label: i for i, label in enumerate(labels)}
    x = np.array([index[v] for v in a])
    y = np.array([index[v] for v in b])
    size = len(labels)

    def kappa(xs: Any, ys: Any) -> float:
        # The same statistic as cohen_kappa (tests check they agree), from the resample's
        # contingency table: statsmodels is ~25x faster per call than scikit-learn here.
        table = np.zeros((size, size))
        np.add.at(table, (xs, ys), 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(cohens_kappa(table, wt=weights, return_results=False))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples (kappa undefined) are dropped below
        result = stats.bootstrap((x, y), kappa, paired=True, vectorized=False, n_resamples=BOOTSTRAP_RESAMPLES,
                                 method="percentile", rng=np.random.default_rng(0))
    values = np.asarray(result.bootstrap_distribution, dtype=float)
    defined = values[~np.isnan(values)]
    if len(defined) < BOOTSTRAP_RESAMPLES / 2:
        return None
    low, high = np.percentile(defined, [2.5, 97.5])
    return [round(float(low), 3), round(float(high), 3)]


async def agreement_report(db: Database) -> dict[str, dict[str, dict[str, Any]]]:
    """``{"reviewers": {field: figures}, "judge": {criterion: figures}}`` (see the module docstring).

    Reviewer figures have ``items`` (items with ≥ 2 reviewers for the field) and
    ``fleiss_kappa`` besides n (the items with two reviewers' scores), exact, kappa and ci95.
    The statistics run in a thread: the bootstrap must not hold up the service's event loop."""
    rows = await db.fetchall(
        "SELECT item_id, reviewer_id, action, accuracy, appropriateness, empathy"
        " FROM review_decisions ORDER BY item_id, id"
    )
    verdicts = await db.fetchall(
        "SELECT item_id, accuracy, appropriateness, empathy FROM judge_verdicts WHERE status = 'done'")
    return await asyncio.to_thread(_report, [dict(r) for r in rows], [dict(v) for v in verdicts])


def _report(rows: list[dict[str, Any]], verdicts: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    per_item: dict[int, list[Any]] = defaultdict(list)
    for row in rows:
        per_item[row["item_id"]].append(row)
    reviewers: dict[str, dict[str, Any]] = {}
    for field in ("action", *RUBRIC_CRITERIA):
        matrix = [[d[field] for d in decisions if d[field] is not None] for decisions in per_item.values()]
        matrix = [r for r in matrix if len(r) >= 2]
        ordinal = field != "action"
        figures = agreement_figures([r[0] for r in matrix], [r[1] for r in matrix],
                                    weights="quadratic" if ordinal else None, labels=SCORES if ordinal else ACTIONS)
        reviewers[field] = {"items": len(matrix), **figures, "fleiss_kappa": _round(fleiss_kappa(matrix))}
    judge: dict[str, dict[str, Any]] = {}
    for field in RUBRIC_CRITERIA:
        judged, human = [], []
        for verdict in verdicts:
            scores = [d[field] for d in per_item.get(verdict["item_id"], []) if d[field] is not None]
            if scores:
                judged.append(verdict[field])
                human.append(statistics.median_low(scores))
        judge[field] = agreement_figures(judged, human, weights="quadratic", labels=SCORES)
    return {"reviewers": reviewers, "judge": judge}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
