"""Agreement statistics: reviewers with each other and the LLM judge with the reviewers.

The maths is scikit-learn's, statsmodels' and scipy's; these tests check that we call them
right (known values, the weights, the bootstrap interval) and that ``llm4sweat reviews
agreement`` prints the figures of a real database filled through the service and the judge."""

from __future__ import annotations

import asyncio
import json
import random
import statistics

import pytest
from sklearn.metrics import cohen_kappa_score

from reviewers.agreement import SCORES, agreement_figures, cohen_kappa, fleiss_kappa
from tests.test_cli import run_cli


def test_cohen_known_values():
    assert cohen_kappa(["a", "b", "a", "b"], ["a", "b", "a", "b"]) == 1.0
    # Classic example: observed 0.7, expected 0.5 -> kappa 0.4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa([], []) is None
    assert cohen_kappa([3, 3, 3], [3, 3, 3], weights="quadratic", labels=SCORES) is None  # undefined, not 1 or 0


def test_quadratic_weights_count_how_far_apart_scores_are():
    truth = [1, 2, 3, 4, 5] * 4
    misses = [i for i in range(len(truth)) if i % 4 == 0]
    near = [(s + 1 if s < 5 else s - 1) if i in misses else s for i, s in enumerate(truth)]  # off by one
    far = [(s + 3 if s <= 2 else s - 3) if i in misses else s for i, s in enumerate(truth)]  # off by three or more
    assert cohen_kappa(truth, near) == pytest.approx(cohen_kappa(truth, far), abs=0.1)  # unweighted: alike
    assert cohen_kappa(truth, near, weights="quadratic", labels=SCORES) > 0.9 > \
        cohen_kappa(truth, far, weights="quadratic", labels=SCORES)
    # By hand, weights (i-j)^2/16: observed weighted disagreement 1/64, expected 29/64 -> 1 - 1/29
    assert cohen_kappa([1, 1, 5, 5], [1, 2, 5, 5], weights="quadratic", labels=SCORES) == pytest.approx(28 / 29)


def test_fleiss_known_value():
    # Fleiss (1971)-style check: perfect agreement -> 1, and a hand-computed mixed case.
    assert fleiss_kappa([["a", "a", "a"], ["b", "b", "b"]]) == 1.0
    ratings = [["a", "a", "b"], ["a", "b", "b"], ["a", "a", "a"], ["b", "b", "b"]]
    # P_i = [1/3, 1/3, 1, 1] -> P_bar = 2/3; p_a = p_b = 0.5 -> P_e = 0.5; kappa = (2/3-1/2)/(1/2) = 1/3
    assert fleiss_kappa(ratings) == pytest.approx(1 / 3)
    assert fleiss_kappa([["a"]]) is None


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_more_items():
    rng = random.Random(7)

    def pairs(n):
        a = [rng.randint(1, 5) for _ in range(n)]
        return a, [min(5, max(1, x + rng.choice([-1, 0, 0, 0, 1]))) for x in a]

    small = agreement_figures(*pairs(20), weights="quadratic", labels=SCORES)
    large = agreement_figures(*pairs(400), weights="quadratic", labels=SCORES)
    for figures in (small, large):
        low, high = figures["ci95"]
        assert low <= figures["kappa"] <= high
    assert large["ci95"][1] - large["ci95"][0] < small["ci95"][1] - small["ci95"][0]
    a, b = pairs(30)
    assert agreement_figures(a, b, weights="quadratic", labels=SCORES)["kappa"] == pytest.approx(
        cohen_kappa_score(a, b, weights="quadratic", labels=SCORES), abs=5e-4)
    assert agreement_figures(a[:4], b[:4], weights="quadratic", labels=SCORES)["ci95"] is None  # too few items


def test_the_bootstrap_statistic_is_scikit_learns_kappa():
    """Each resample's kappa comes from statsmodels' contingency-table kappa (fast); it must be the
    same number scikit-learn gives for the same ratings, weighted and not."""
    import numpy as np
    from sklearn.metrics import confusion_matrix
    from statsmodels.stats.inter_rater import cohens_kappa

    rng = random.Random(3)
    for _ in range(20):
        a = [rng.randint(1, 5) for _ in range(25)]
        b = [rng.choice([x, rng.randint(1, 5)]) for x in a]
        table = confusion_matrix(a, b, labels=SCORES).astype(float)
        for weights in (None, "quadratic"):
            assert float(cohens_kappa(table, wt=weights, return_results=False)) == pytest.approx(
                cohen_kappa_score(a, b, weights=weights, labels=SCORES), abs=1e-12)
        assert np.isfinite(table).all()


# ---------------------------------------------------------------------------- a test database


def _planned_scores(n: int):
    """Reviewer 1, reviewer 2 and the judge's scores per item and axis (deterministic)."""
    plan = []
    for i in range(n):
        first = {"accuracy": 1 + i % 5, "appropriateness": 1 + (i * 2) % 5, "empathy": 2 + i % 4}
        second = {k: (min(5, v + 1) if i % 4 == 0 else v) for k, v in first.items()}
        judge = {k: (6 - v if i % 7 == 0 else min(5, v + 1) if i % 3 == 0 else v) for k, v in first.items()}
        plan.append((first, second, judge))
    return plan


async def _fill(tmp_path, n: int) -> None:
    """Replies through the real service, two reviewers' decisions, and the real judge against a local
    OpenAI-compatible server answering the planned verdicts."""
    from bot.inference.fixed import FixedBackend
    from bot.platform import IncomingMessage
    from bot.service import Service
    from bot.settings import load_settings
    from reviewers.models import Action, Actor, Rubric
    from tests.openai_fake import FakeOpenAI
    from tests.test_judge import wait_for

    plan = _planned_scores(n)

    def respond(body, index):
        question = body["messages"][1]["content"]
        number = int(question.split("question number ")[1].split(".")[0])
        return json.dumps({**plan[number][2], "reason": f"planned verdict {number}"})

    async with FakeOpenAI(respond) as server:
        settings = load_settings(data_dir=tmp_path, review={"quorum": 2},
                                 judge={"enabled": True, "base_url": server.base_url, "model": "judge",
                                        "concurrency": 4})
        service = Service(settings, FixedBackend())
        await service.start(retry_loop=False)
        try:
            reviewers = [Actor("local", f"rev{k}", f"Dr {k}", frozenset({"reviewer"})) for k in (1, 2)]
            items = []
            for i in range(n):
                result = await service.core.handle_message(IncomingMessage(
                    "local", f"p{i}", "console", f"p{i}", f"Is my sweating normal? This is question number {i}."))
                items.append(result.item_id)
            await wait_for(lambda: service.db.fetchval(
                "SELECT COUNT(*) = ? FROM judge_verdicts WHERE status = 'done'", (n,)), timeout=60)
            for item_id, (first, second, _) in zip(items, plan):
                for reviewer, scores in zip(reviewers, (first, second)):
                    await service.core.decide(item_id, reviewer, Action.APPROVE, rubric=Rubric(**scores))
        finally:
            await service.stop()


async def _report(tmp_path) -> dict:
    from bot.settings import load_settings
    from bot.storage import Database
    from reviewers.agreement import agreement_report

    db = await Database(load_settings(data_dir=tmp_path).db_path).open()
    try:
        return await agreement_report(db)
    finally:
        await db.close()


@pytest.mark.slow
def test_reviews_agreement_prints_the_figures_of_a_test_database(tmp_path):
    n = 30
    asyncio.run(_fill(tmp_path, n))
    printed = run_cli("reviews", "agreement", tmp_path=tmp_path, env_extra={"COLUMNS": "200"})
    assert printed.returncode == 0, printed.stderr
    print(printed.stdout)  # the figures, as an operator sees them (pytest -s, or the report)
    assert "Reviewers with each other" in printed.stdout and "The LLM judge with the reviewers" in printed.stdout
    report = asyncio.run(_report(tmp_path))
    plan = _planned_scores(n)
    for axis in ("accuracy", "appropriateness", "empathy"):
        first = [p[0][axis] for p in plan]
        second = [p[1][axis] for p in plan]
        judge = [p[2][axis] for p in plan]
        human = [statistics.median_low(pair) for pair in zip(first, second)]
        people, machine = report["reviewers"][axis], report["judge"][axis]
        assert people["n"] == machine["n"] == n
        assert people["kappa"] == pytest.approx(cohen_kappa_score(first, second, weights="quadratic",
                                                                  labels=SCORES), abs=5e-4)
        assert machine["kappa"] == pytest.approx(cohen_kappa_score(judge, human, weights="quadratic",
                                                                   labels=SCORES), abs=5e-4)
        assert machine["exact"] == pytest.approx(sum(j == h for j, h in zip(judge, human)) / n, abs=5e-4)
        for figures in (people, machine):
            assert figures["ci95"][0] <= figures["kappa"] <= figures["ci95"][1]
        assert f"{machine['kappa']:.3f}" in printed.stdout
    assert report["reviewers"]["action"]["exact"] == 1.0 and report["reviewers"]["action"]["kappa"] is None
