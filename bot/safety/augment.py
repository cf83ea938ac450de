"""Training-time augmentation of the safety corpus, so the learned model cannot lean on length.

The writers' batches have a bias a bag of n-grams learns at once: most very short messages are
crises ("cant do this anymore"), and a crisis written into a long everyday message is rare, so
the crisis sentence is diluted by the rest. Three kinds of extra rows, made deterministically
from the training rows alone (cross-validation augments each fold's training batches only, never
the held-out batch):

* **benign sentences**: each sentence of a benign message of an everyday family (questions
  about sweating, ordinary statements, gaming …) as a benign row of its own, so a short
  ordinary statement ("I live in Spain.") is seen as benign. Families whose single sentences
  would read as a crisis out of context (resolved past, fiction, idioms, third parties,
  venting, negated red flags, news) are left whole;
* **benign + benign** splices of two everyday messages in the same language (long is not a signal);
* **crisis, red flag or injection inside a benign message**: the labelled message inserted between
  two sentences of an everyday message in the same language, keeping its label (and red-flag id).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import replace
from typing import Sequence

from bot.safety.corpus import Row

# Sentence ends: Latin/Greek/Cyrillic/Arabic punctuation before a space, or the CJK/Devanagari
# full stops (no space follows them), or a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?;…؟])\s+|(?<=[。！？।])\s*|\n+")

# Benign families whose sentences are NOT benign on their own ("I wanted to die back then",
# "he shoots himself in chapter 3", "my hands are killing me").
CONTEXT_FAMILIES = frozenset({
    "resolved_past", "fiction", "third_party", "red_flag_negated", "venting_not_crisis", "news_or_other", "idiom",
})
SPLICES_PER_KIND = 1500  # per kind of splice (benign+benign, crisis/red flag/injection in benign)
MIN_SENTENCE_CHARS = 8
AUGMENTED_BATCH = "augmented"


def sentences(text: str) -> list[str]:
    """The sentences of a message, in order (the whole message when it is one sentence)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def augmented(rows: Sequence[Row], seed: int = 0, splices: int = SPLICES_PER_KIND) -> list[Row]:
    """``rows`` plus the extra rows described in the module docstring (same seed, same rows)."""
    rnd = random.Random(seed)
    out = list(rows)
    everyday = [r for r in rows if r.label == "benign" and r.family not in CONTEXT_FAMILIES]
    for r in everyday:
        parts = sentences(r.text)
        if len(parts) > 1:
            out += [_new(r, s, "benign") for s in parts if len(s) >= MIN_SENTENCE_CHARS]
    by_lang: dict[str, dict[str, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.label != "benign" or r.family not in CONTEXT_FAMILIES:
            by_lang[r.lang][r.label].append(r)
    langs = sorted(lang for lang, groups in by_lang.items() if len(groups["benign"]) >= 5)
    if not langs:
        return out
    for _ in range(splices):
        lang = rnd.choice(langs)
        a, b = rnd.sample(by_lang[lang]["benign"], 2)
        out.append(_new(a, f"{a.text} {b.text}", "benign"))
    for label in ("crisis", "red_flag", "injection"):
        for _ in range(splices if label == "crisis" else splices // 2):
            lang = rnd.choice(langs)
            if not by_lang[lang][label]:
                continue
            inner = rnd.choice(by_lang[lang][label])
            host = sentences(rnd.choice(by_lang[lang]["benign"]).text)
            cut = rnd.randint(0, len(host))
            out.append(_new(inner, " ".join(host[:cut] + [inner.text] + host[cut:]), label))
    return out


def _new(source: Row, text: str, label: str) -> Row:
    return replace(source, text=text, label=label, batch=AUGMENTED_BATCH, id=f"{source.id}+aug",
                   red_flag_id=source.red_flag_id if label == "red_flag" else "", form="augmented")
