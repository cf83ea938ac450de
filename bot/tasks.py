"""Which of the three tasks (diagnosis, treatment, psychological support) a question is about.

Used to tag replies and dataset examples; keyword rules are enough for tagging, and the
reviewer sees (and the dataset keeps) the tag, so a wrong guess is visible."""

from __future__ import annotations

import re

TASKS = ("diagnosis", "treatment", "psychological_support")

_KEYWORDS = {
    "treatment": r"treat|antiperspirant|aluminium|aluminum|botox|botulinum|iontophoresis|glycopyr|oxybutynin|"
    r"sofpironium|qbrexza|miradry|microwave|surgery|sympathectomy|ets\b|medication|pill|cream|wipe|drysol|cure|help with",
    "psychological_support": r"anxi|embarrass|ashamed|shame|depress|lonely|isolat|confiden|social|date|dating|"
    r"relationship|work|job|interview|school|afraid|scared|fear|stress|cope|coping|hate|feel",
    "diagnosis": r"diagnos|normal|is it|do i have|cause|why do|hdss|scale|primary|secondary|test|symptom|"
    r"how do i know|condition",
}


_COMPILED = {task: re.compile(pattern) for task, pattern in _KEYWORDS.items()}


def classify_task(text: str) -> str:
    """The task whose keywords occur most often; diagnosis when nothing matches."""
    lowered = text.lower()
    scores = {task: len(pattern.findall(lowered)) for task, pattern in _COMPILED.items()}
    best = max(scores, key=lambda task: scores[task])
    return best if scores[best] > 0 else "diagnosis"
