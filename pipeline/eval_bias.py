"""How much the *form* of a multiple-choice set gives away, and the limits a pack must respect.

A question set can be answered without reading the questions when the correct option is
usually the longest (writers add the qualifications that make it true), usually the shortest,
or usually in the same position. The first hyperhidrosis set had the correct option longest in
97 of 132 questions: "always pick the longest" scored 0.735 with no knowledge at all. These
figures are printed by ``llm4sweat pack check`` and the limits below are enforced by
:func:`pipeline.packs.check_pack` for every pack, per split and per task within a split.

Lengths are counted in characters of the option text with outer spaces stripped. A tie counts
for both sides: when the correct option and a wrong one are equally long and the longest, the
question counts as "correct is longest" (a model that prefers long options is not penalised
by the tie), and the same for the shortest.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_LONGEST_CORRECT",
    "MAX_SHORTEST_CORRECT",
    "POSITION_TOLERANCE",
    "LENGTH_RATIO_TARGET",
    "OptionBias",
    "option_bias",
    "bias_problems",
]

# The correct option may be the longest (ties count) in at most this share of questions...
MAX_LONGEST_CORRECT = 0.35
# ...and the shortest (ties count) in at most this share.
MAX_SHORTEST_CORRECT = 0.35
# Each answer position (A, B, C, D) must be correct in 1/options ± this share of a split's
# questions: with four options, between 15% and 35%. Checked per split, not per task, where the
# groups are small enough for chance alone to break the band.
POSITION_TOLERANCE = 0.10
# Reported, not enforced: within a question, longest / shortest option length (characters)
# should stay at or under this for most questions, so that no option stands out by its size.
LENGTH_RATIO_TARGET = 1.8

LETTERS = "ABCDEFGH"


@dataclass(frozen=True)
class OptionBias:
    """The form figures of a group of questions (one split, or one task within a split)."""

    questions: int
    longest_correct: int  # the correct option is the longest (ties count)
    shortest_correct: int  # the correct option is the shortest (ties count)
    positions: tuple[int, ...]  # how often each answer index is the correct one
    pick_longest: float  # expected accuracy of "always pick the longest" (ties broken at random)
    length_ratios: tuple[float, ...]  # per question: longest / shortest option, in characters

    @property
    def longest_share(self) -> float:
        return self.longest_correct / self.questions if self.questions else 0.0

    @property
    def shortest_share(self) -> float:
        return self.shortest_correct / self.questions if self.questions else 0.0

    @property
    def position_shares(self) -> tuple[float, ...]:
        return tuple(n / self.questions if self.questions else 0.0 for n in self.positions)

    @property
    def within_ratio_target(self) -> float:
        """Share of questions whose longest / shortest option ratio is <= LENGTH_RATIO_TARGET."""
        if not self.length_ratios:
            return 0.0
        return sum(r <= LENGTH_RATIO_TARGET for r in self.length_ratios) / len(self.length_ratios)


def option_bias(questions: Iterable[Any], options_per_question: int = 4) -> OptionBias:
    """Form figures of ``questions`` (anything with ``options`` and ``answer``). Questions whose
    answer index is out of range are left out (the pack checker reports them separately)."""
    n = longest = shortest = 0
    pick_longest = 0.0
    positions = [0] * options_per_question
    ratios = []
    for q in questions:
        lengths = [len(o.strip()) for o in q.options]
        if not lengths or not 0 <= q.answer < len(lengths):
            continue
        n += 1
        mine, top, bottom = lengths[q.answer], max(lengths), min(lengths)
        longest += mine == top
        shortest += mine == bottom
        if mine == top:
            pick_longest += 1 / lengths.count(top)
        if q.answer < options_per_question:
            positions[q.answer] += 1
        ratios.append(top / bottom if bottom else float("inf"))
    return OptionBias(n, longest, shortest, tuple(positions), pick_longest / n if n else 0.0, tuple(ratios))


def bias_problems(bias: OptionBias, where: str, *, check_positions: bool) -> list[str]:
    """One clear line per limit that ``bias`` breaks; ``where`` names the group, e.g.
    ``"eval.jsonl: split 'test', task 'diagnosis'"``."""
    problems = []
    if not bias.questions:
        return problems
    if bias.longest_share > MAX_LONGEST_CORRECT:
        problems.append(
            f"{where}: the correct option is the longest in {bias.longest_share:.0%} of questions "
            f"({bias.longest_correct} of {bias.questions}), limit {MAX_LONGEST_CORRECT:.0%}: "
            "a model could score by picking the longest option"
        )
    if bias.shortest_share > MAX_SHORTEST_CORRECT:
        problems.append(
            f"{where}: the correct option is the shortest in {bias.shortest_share:.0%} of questions "
            f"({bias.shortest_correct} of {bias.questions}), limit {MAX_SHORTEST_CORRECT:.0%}: "
            "a model could score by picking the shortest option"
        )
    if check_positions:
        fair = 1 / len(bias.positions)
        low, high = fair - POSITION_TOLERANCE, fair + POSITION_TOLERANCE
        for index, (count, share) in enumerate(zip(bias.positions, bias.position_shares)):
            if not low - 1e-9 <= share <= high + 1e-9:
                problems.append(
                    f"{where}: answer {LETTERS[index]} is correct in {share:.0%} of questions "
                    f"({count} of {bias.questions}), allowed {low:.0%}-{high:.0%}: spread the correct "
                    "position evenly"
                )
    return problems


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def bias_table(groups: Sequence[tuple[str, str, OptionBias]]) -> list[str]:
    """Report lines: one row per ``(split, task, figures)`` group, then the length-ratio
    distribution of each split (rows whose task is ``"all"``)."""
    width = max([len(task) for _, task, _ in groups] + [4])
    lines = [
        f"  option form (correct option longest / shortest, ties count; limits {MAX_LONGEST_CORRECT:.0%} / "
        f"{MAX_SHORTEST_CORRECT:.0%}; answer positions {0.25 - POSITION_TOLERANCE:.0%}-"
        f"{0.25 + POSITION_TOLERANCE:.0%} per split):",
        f"    {'split':<5}  {'task':<{width}}  {'n':>4}  {'longest':>7}  {'shortest':>8}  "
        f"{'A':>4} {'B':>4} {'C':>4} {'D':>4}  {'pick-longest':>12}",
    ]
    for split, task, bias in groups:
        shares = " ".join(f"{s:>4.0%}" for s in bias.position_shares)
        lines.append(
            f"    {split:<5}  {task:<{width}}  {bias.questions:>4}  {bias.longest_share:>7.1%}  "
            f"{bias.shortest_share:>8.1%}  {shares}  {bias.pick_longest:>12.3f}"
        )
    for split, task, bias in groups:
        if task != "all" or not bias.length_ratios:
            continue
        ratios = bias.length_ratios
        lines.append(
            f"  option length ratio, {split} (longest / shortest option, characters): median "
            f"{statistics.median(ratios):.2f}, 90th percentile {_percentile(ratios, 0.9):.2f}, max "
            f"{max(ratios):.2f}; <= {LENGTH_RATIO_TARGET} in {bias.within_ratio_target:.0%} of questions"
        )
    return lines
