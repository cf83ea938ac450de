"""Is a generated answer backed by the facts it cites?

A generated vignette lists the ids of the pack facts its reply relies on (``fact_ids``). The
generator can cite a fact it never uses, or state a number the fact does not support; either
would teach the small model something the knowledge base does not say. This module checks
both with a deterministic, explainable rule (no model in the loop):

**Used.** Each fact has *key terms*: its words of four letters or more, minus a short list of
English function words, minus the words that occur in more than ``COMMON_TERM_SHARE`` (20%)
of the pack's facts (in the hyperhidrosis pack: "sweating", "hyperhidrosis", "treatment" …:
words every answer has). Words are compared by their first ``STEM_LETTERS`` (5) letters, so
"injections" matches "injection" and "months" matches "month". A cited fact is *used* when the
answer contains at least two of its key terms (one if it has only one), or one key term that
occurs in at most ``RARE_TERM_FACTS`` (2) of the pack's facts (a distinctive word such as
"bromhidrosis"); otherwise the vignette is refused as ``fact_not_used``, naming the fact.

Measured on the hyperhidrosis pack (106 facts): of 200 seed answers paired with a fact they do
not cite, 72% are refused (59% when the fact is from the seed's own task). The hand-written
seeds cite loosely (a "validation" fact for a reply that only says "not your fault"): 26 of 40
would pass for every fact they cite. Generated replies are told to put each cited fact into
words, so the rule is strict on purpose; a refused slot is simply asked again.

**Not contradicted.** Numbers with a unit (months, weeks, days, hours, years, age, %, times,
sessions, minutes; digits or the words one to twelve) are read from the fact and from the
answer. When the answer gives a number for a unit the fact also quantifies, at least one of
the answer's numbers for that unit must be within ``NUMBER_TOLERANCE`` (15%) of one of the
fact's, otherwise the vignette is refused as ``fact_contradicted`` ("lasting at least three
months" against a fact that says six). The patient's own age and onset age (years) from the
profile are ignored, since an answer may repeat them.

What the rule cannot see: a fact used with other words throughout (synonyms only), a
contradiction without numbers ("iontophoresis suits the underarms best"), or a wrong claim
that cites no fact at all. Those are left to the experts' review.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

COMMON_TERM_SHARE = 0.2
STEM_LETTERS = 5
MIN_TERM_LETTERS = 4
NUMBER_TOLERANCE = 0.15
RARE_TERM_FACTS = 2  # a key term found in at most this many facts is distinctive on its own

STOPWORDS = frozenset("""
about above after again against also although among another anyone anything around because been before
being below between both cannot could does doing down during each either else even every from further
have having here however into itself just least less like made make many more most much must need needs
never often only other others over rather same several should since some such than that their them then
there these they this those through under until upon usually very what when where whether which while who
whom whose will with within without would your yours will well
""".split())

_WORD_RE = re.compile(r"[a-z]+")
_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
                 "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "half": 0.5}
_UNITS = {
    "month": "months", "months": "months", "week": "weeks", "weeks": "weeks", "day": "days", "days": "days",
    "hour": "hours", "hours": "hours", "minute": "minutes", "minutes": "minutes", "year": "years",
    "years": "years", "%": "percent", "percent": "percent", "per cent": "percent", "times": "times",
    "session": "sessions", "sessions": "sessions",
}
_NUMBER_RE = re.compile(
    r"(?P<age>\b(?:age|aged|ages)\s+)?(?P<num>\d+(?:\.\d+)?|" + "|".join(_NUMBER_WORDS) + r")"
    r"(?:\s*(?:-|–|to|or)\s*(?P<num2>\d+(?:\.\d+)?|" + "|".join(_NUMBER_WORDS) + r"))?"
    r"\s*(?P<unit>%|per cent|percent|[a-z]+)?",
    re.IGNORECASE,
)


def stem(word: str) -> str:
    return word[:STEM_LETTERS]


def terms(text: str) -> set[str]:
    """Stemmed content words of ``text``."""
    return {stem(w) for w in _WORD_RE.findall(text.lower()) if len(w) >= MIN_TERM_LETTERS and w not in STOPWORDS}


def numbers(text: str) -> list[tuple[float, str]]:
    """``(value, unit)`` for every number with a known unit ("6 months", "age 25", "2.8%")."""
    out = []
    for m in _NUMBER_RE.finditer(text.lower()):
        unit = (m.group("unit") or "").lower()
        unit = "years" if m.group("age") else _UNITS.get(unit)
        if unit is None:
            continue
        for raw in (m.group("num"), m.group("num2")):  # both ends of a range ("10-20%", "one or two sessions")
            if raw:
                out.append((float(_NUMBER_WORDS[raw]) if raw in _NUMBER_WORDS else float(raw), unit))
    return out


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= NUMBER_TOLERANCE * max(abs(a), abs(b))


@dataclass(frozen=True)
class FactProblem:
    """Why an answer does not match a fact it cites."""

    reason: str  # "fact_not_used" | "fact_contradicted"
    fact_id: str
    detail: str


class FactChecker:
    """The key terms and numbers of a pack's facts, computed once."""

    def __init__(self, facts: Sequence[Any]) -> None:
        counts: Counter[str] = Counter()
        fact_terms = {f.id: terms(f.text) for f in facts}
        for found in fact_terms.values():
            counts.update(found)
        limit = COMMON_TERM_SHARE * max(1, len(facts))
        self.common = {t for t, n in counts.items() if n > limit}
        self.facts_with = counts  # in how many facts each term occurs
        self.key_terms = {fid: found - self.common for fid, found in fact_terms.items()}
        self.numbers: dict[str, dict[str, set[float]]] = {}
        for f in facts:
            by_unit: dict[str, set[float]] = {}
            for value, unit in numbers(f.text):
                by_unit.setdefault(unit, set()).add(value)
            self.numbers[f.id] = by_unit

    def check(self, answer: str, fact_ids: Iterable[str], patient_ages: Iterable[float | None] = ()) -> FactProblem | None:
        """The first problem of ``answer`` with the facts it cites, or None. ``patient_ages``:
        the patient's age and onset age, which the answer may repeat (in years)."""
        answer_terms = terms(answer)
        ages = {float(v) for v in patient_ages if v is not None}
        answer_numbers: dict[str, set[float]] = {}
        for value, unit in numbers(answer):
            if not (unit == "years" and value in ages):
                answer_numbers.setdefault(unit, set()).add(value)
        for fid in fact_ids:
            key = self.key_terms.get(fid)
            if key is None:
                continue  # an unknown id is refused elsewhere
            found = key & answer_terms
            if not (len(found) >= min(2, len(key)) or any(self.facts_with[t] <= RARE_TERM_FACTS for t in found)):
                return FactProblem("fact_not_used", fid,
                                   f"the answer shares {len(found)} of the fact's key terms ({', '.join(sorted(key)[:8])})")
            for unit, fact_values in self.numbers.get(fid, {}).items():
                said = answer_numbers.get(unit)
                if said and not any(_close(a, b) for a in said for b in fact_values):
                    return FactProblem("fact_contradicted", fid,
                                       f"the answer says {sorted(said)} {unit}, the fact {sorted(fact_values)} {unit}")
        return None
