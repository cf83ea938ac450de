"""Inter-reviewer agreement: Cohen's kappa (two reviewers) and Fleiss' kappa (several).

Computed on request over items that more than one reviewer scored, for the decision itself
and for each rubric criterion, so the team can see whether its experts judge alike.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Hashable, Sequence

from bot.storage import Database
from reviewers.models import RUBRIC_CRITERIA


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen's kappa for two raters over the same items; None when undefined."""
    if len(a) != len(b) or not a:
        return None
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb.get(k, 0) for k in ca) / (n * n)
    if expected == 1.0:
        return 1.0 if observed == 1.0 else None
    return (observed - expected) / (1 - expected)


def fleiss_kappa(ratings: Sequence[Sequence[Hashable]]) -> float | None:
    """Fleiss' kappa; ``ratings[i]`` holds every rater's category for item i (same count each)."""
    items = [list(r) for r in ratings if len(r) >= 2]
    if not items:
        return None
    n = min(len(r) for r in items)
    items = [r[:n] for r in items]
    categories = sorted({c for r in items for c in r}, key=str)
    counts = [[r.count(c) for c in categories] for r in items]
    total = len(items) * n
    p_j = [sum(row[j] for row in counts) / total for j in range(len(categories))]
    p_i = [(sum(x * x for x in row) - n) / (n * (n - 1)) for row in counts]
    p_bar = sum(p_i) / len(items)
    p_e = sum(p * p for p in p_j)
    if p_e == 1.0:
        return 1.0 if p_bar == 1.0 else None
    return (p_bar - p_e) / (1 - p_e)


async def agreement_report(db: Database) -> dict[str, dict[str, float | int | None]]:
    """Kappa for the decision and each rubric criterion over items with ≥ 2 reviewers."""
    rows = await db.fetchall(
        "SELECT item_id, reviewer_id, action, accuracy, appropriateness, empathy"
        " FROM review_decisions ORDER BY item_id, id"
    )
    per_item: dict[int, list] = defaultdict(list)
    for row in rows:
        per_item[row["item_id"]].append(row)
    multi = [decisions for decisions in per_item.values() if len(decisions) >= 2]
    report: dict[str, dict[str, float | int | None]] = {}
    for field in ("action", *RUBRIC_CRITERIA):
        matrix = [[d[field] for d in decisions if d[field] is not None] for decisions in multi]
        matrix = [r for r in matrix if len(r) >= 2]
        two = [r for r in matrix if len(r) == 2]
        report[field] = {
            "items": len(matrix),
            "cohen_kappa": cohen_kappa([r[0] for r in two], [r[1] for r in two]) if two else None,
            "fleiss_kappa": fleiss_kappa(matrix),
        }
    return report
