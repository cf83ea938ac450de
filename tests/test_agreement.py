import pytest

from reviewers.agreement import cohen_kappa, fleiss_kappa


def test_cohen_known_values():
    assert cohen_kappa(["a", "b", "a", "b"], ["a", "b", "a", "b"]) == 1.0
    # Classic example: observed 0.7, expected 0.5 -> kappa 0.4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa([], []) is None


def test_fleiss_known_value():
    # Fleiss (1971)-style check: perfect agreement -> 1, and a hand-computed mixed case.
    assert fleiss_kappa([["a", "a", "a"], ["b", "b", "b"]]) == 1.0
    ratings = [["a", "a", "b"], ["a", "b", "b"], ["a", "a", "a"], ["b", "b", "b"]]
    # P_i = [1/3, 1/3, 1, 1] -> P_bar = 2/3; p_a = p_b = 0.5 -> P_e = 0.5; kappa = (2/3-1/2)/(1/2) = 1/3
    assert fleiss_kappa(ratings) == pytest.approx(1 / 3)
