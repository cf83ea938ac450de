"""An offline crisis classifier: hashed word and character n-grams + logistic regression.

Small on purpose: no model hub, no GPU, no extra dependency beyond numpy. It is trained at
first use from a labelled set that ships with the project (``bot/safety/data/crisis_train.jsonl``
plus an optional ``safety/crisis_train.jsonl`` inside the condition pack), in well under a
second, and deterministically, so the same files always give the same model.

Why these features: patients in distress write indirectly, misspell, use slang and write in
other languages. Character n-grams inside word boundaries (" kil", "kill", "ill ") survive
misspellings ("kil myslef") and inflections across languages ("suicidio", "suicidarme",
"Suizid"); word unigrams and bigrams carry phrases ("no point", "goodbye letters"). A
normalized copy of the text (accents stripped, leetspeak undone, repeated letters collapsed)
is featurized as well.

The rules in ``bot/safety/rules.py`` are combined with this model with OR: a rule catches the
explicit phrasings with certainty, the model the indirect ones.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

DIM = 1 << 18
# Chosen by 5-fold cross-validation of rules + classifier on the training set (bench/bench_safety.py
# prints it): word features count more than character n-grams, and non-crisis examples weigh twice
# (most real messages are not crises, and an unfamiliar message should not look like one).
WORD_WEIGHT = 2.0
CHAR_WEIGHT = 0.5
NEG_WEIGHT = 2.0
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"})
_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)
_REPEAT_RE = re.compile(r"(.)\1{2,}")


def _strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def normalize(text: str) -> str:
    """Case-folded, NFKC-normalized text with letters repeated 3+ times collapsed to two."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = text.replace("’", "'").replace("`", "'")
    return _REPEAT_RE.sub(r"\1\1", text)


def _variants(text: str) -> list[str]:
    base = normalize(text)
    plain = _strip_accents(base)
    # Leetspeak only inside words that are mostly letters ("k1ll", "d13"), not in numbers ("25").
    unleet = " ".join(
        w.translate(_LEET) if any(c.isalpha() for c in w) else w for w in plain.split()
    )
    out = [base]
    if plain != base:
        out.append(plain)
    if unleet != plain:
        out.append(unleet)
    return out


def _is_cjk(word: str) -> bool:
    return any("\u3040" <= c <= "\u30ff" or "\u4e00" <= c <= "\u9fff" or "\uac00" <= c <= "\ud7af" for c in word)


def _hash(key: str) -> int:
    return zlib.crc32(key.encode("utf-8")) & (DIM - 1)


@lru_cache(maxsize=50_000)
def _word_grams(word: str) -> tuple[tuple[int, float], ...]:
    """Hashed word and character n-gram features of one word (cached: words repeat a lot)."""
    grams: list[tuple[int, float]] = [(_hash("w:" + word), WORD_WEIGHT)]
    padded = f" {word} "
    sizes = (1, 2, 3) if _is_cjk(word) else (3, 4, 5)
    for n in sizes:
        for j in range(max(1, len(padded) - n + 1)):
            gram = padded[j : j + n]
            if gram.strip():
                grams.append((_hash("c:" + gram), CHAR_WEIGHT))
    return tuple(grams)


def features(text: str) -> dict[int, float]:
    """Hashed feature counts (sublinear tf, L2-normalized) for one text."""
    counts: dict[int, float] = {}
    for variant in _variants(text):
        words = _WORD_RE.findall(variant)
        for i, word in enumerate(words):
            for h, weight in _word_grams(word):
                counts[h] = counts.get(h, 0.0) + weight
            if i:
                h = _hash("b:" + words[i - 1] + " " + word)
                counts[h] = counts.get(h, 0.0) + WORD_WEIGHT
    vec = {h: (1.0 + math.log(c) if c >= 1 else c) for h, c in counts.items()}
    norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
    return {k: v / norm for k, v in vec.items()}


def _sparse(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, cols, vals = [], [], []
    for i, text in enumerate(texts):
        for k, v in features(text).items():
            rows.append(i)
            cols.append(k)
            vals.append(v)
    return np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64), np.asarray(vals, dtype=np.float64)


@dataclass
class CrisisModel:
    """Logistic regression weights over the hashed features, with the decision threshold."""

    weights: np.ndarray
    bias: float
    threshold: float = 0.5
    n_train: int = 0

    def proba(self, text: str) -> float:
        vec = features(text)
        z = self.bias + sum(self.weights[k] * v for k, v in vec.items())
        return float(1.0 / (1.0 + math.exp(-max(-35.0, min(35.0, z)))))

    def predict(self, text: str) -> bool:
        return self.proba(text) >= self.threshold

    @classmethod
    def train(
        cls,
        texts: Sequence[str],
        labels: Sequence[int],
        *,
        threshold: float = 0.5,
        l2: float = 1e-4,
        epochs: int = 300,
        lr: float = 0.5,
    ) -> "CrisisModel":
        """Full-batch gradient descent (Adam) on the class-balanced logistic loss."""
        if not texts:
            raise ValueError("no training examples")
        y = np.asarray(labels, dtype=np.float64)
        n = len(y)
        pos = max(1.0, y.sum())
        neg = max(1.0, n - y.sum())
        sample_w = np.where(y == 1, n / (2 * pos), NEG_WEIGHT * n / (2 * neg))
        rows, cols, vals = _sparse(texts)
        used = np.unique(cols)
        col_of = {int(c): i for i, c in enumerate(used)}
        cols_local = np.fromiter((col_of[int(c)] for c in cols), dtype=np.int64, count=len(cols))
        w = np.zeros(len(used))
        b = 0.0
        m_w = np.zeros_like(w)
        v_w = np.zeros_like(w)
        m_b = v_b = 0.0
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        for t in range(1, epochs + 1):
            z = np.bincount(rows, weights=vals * w[cols_local], minlength=n) + b
            p = 1.0 / (1.0 + np.exp(-np.clip(z, -35, 35)))
            err = (p - y) * sample_w / n
            g_w = np.bincount(cols_local, weights=vals * err[rows], minlength=len(w)) + l2 * w
            g_b = float(err.sum())
            m_w = beta1 * m_w + (1 - beta1) * g_w
            v_w = beta2 * v_w + (1 - beta2) * g_w * g_w
            m_b = beta1 * m_b + (1 - beta1) * g_b
            v_b = beta2 * v_b + (1 - beta2) * g_b * g_b
            step = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
            w -= step * m_w / (np.sqrt(v_w) + eps)
            b -= step * m_b / (math.sqrt(v_b) + eps)
            lr_decay = 0.995
            lr *= lr_decay
        full = np.zeros(DIM)
        full[used] = w
        return cls(weights=full, bias=b, threshold=threshold, n_train=n)


# ------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # 1 crisis, 0 not
    kind: str = ""  # self_harm | harm_others | medical_emergency | benign_alarming | ordinary ...
    lang: str = "en"


def read_examples(paths: Iterable[Path]) -> list[Example]:
    """JSONL lines ``{"text": ..., "crisis": true|false, "kind": ..., "lang": ...}``."""
    out = []
    for path in paths:
        if not path.is_file():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                row = json.loads(line)
                out.append(Example(str(row["text"]), int(bool(row["crisis"])), row.get("kind", ""), row.get("lang", "en")))
            except (ValueError, KeyError) as exc:
                raise ValueError(f"{path} line {n}: {exc}") from None
    return out


def cross_validate(
    examples: Sequence[Example],
    folds: int = 5,
    threshold: float = 0.5,
    rules: "Callable[[str], bool] | None" = None,
) -> dict[str, float]:
    """Stratified k-fold recall / precision of the classifier (OR'ed with ``rules`` when given)."""
    order = sorted(range(len(examples)), key=lambda i: (examples[i].label, zlib.crc32(examples[i].text.encode())))
    fold_of = {idx: k % folds for k, idx in enumerate(order)}
    tp = fp = fn = tn = 0
    for f in range(folds):
        train = [examples[i] for i in range(len(examples)) if fold_of[i] != f]
        test = [examples[i] for i in range(len(examples)) if fold_of[i] == f]
        model = CrisisModel.train([e.text for e in train], [e.label for e in train], threshold=threshold)
        for e in test:
            hit = model.predict(e.text) or (rules is not None and rules(e.text))
            tp += hit and e.label == 1
            fp += hit and e.label == 0
            fn += (not hit) and e.label == 1
            tn += (not hit) and e.label == 0
    return {
        "recall": tp / max(1, tp + fn),
        "precision": tp / max(1, tp + fp),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }
