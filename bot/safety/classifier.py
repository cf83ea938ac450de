"""The offline learned safety model: hashed TF-IDF character and word n-grams → one hidden layer → four classes.

Four classes — crisis, red_flag, benign, injection — plus a red-flag head that names one of the
pack's red-flag ids, so a red flag written in Thai or Polish still yields ``rf-night-sweats``.
No GPU, no network: trained deterministically with torch from the corpus in ``bot/safety/data/``
(:mod:`bot.safety.corpus`), cached on disk keyed by the corpus hash, and run with numpy alone.

Why these features: patients in distress write indirectly, misspell, use slang and write in
many scripts. Character n-grams (1–5, within a word padded by a space on each side) survive
misspellings and inflections and work in scripts without spaces between words (Thai, Han,
Japanese), where a "word" is a whole clause; word unigrams and bigrams carry phrases ("no
point", "bye all"). The text is normalised first: NFKC, case-folded, zero-width characters
dropped, Latin, Greek and Cyrillic accents stripped (not the vowel signs of Devanagari, Bengali
or Thai, which carry meaning), Arabic diacritics and letter variants unified, leetspeak undone
inside words and letters repeated 3+ times collapsed.

Every n-gram is identified by a 64-bit polynomial hash of its code points, computed for a whole
batch of texts at once with numpy (no Python work per n-gram), and the vocabulary is the sorted
array of kept hashes: fitting it on 35,000 messages takes about two seconds instead of thirty
for scikit-learn's vectorizers, and the cached model holds no string table. Each block (characters,
words) is sublinear-tf × idf, L2-normalised.

Why a hidden layer: a linear model over n-grams can only add evidence up; one layer of ReLU
units learns conjunctions ("pills" with "tonight" but not with "dose", a farewell with no "see
you"), which raised leave-one-writer-out crisis recall at the same false-alarm rate (figures in
docs/safety.md). The first layer is a sparse lookup (``torch.nn.EmbeddingBag`` with TF-IDF
weights while training; ``vals @ W1[cols]`` at inference), so training takes tens of seconds
on two cores and triage stays about a millisecond.

The rules in :mod:`bot.safety.rules` stay a layer of their own: explicit phrasings fire with
certainty whatever the model says (:func:`bot.safety.detector.triage` ORs them).
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

MODEL_VERSION = "hash-mlp-6"  # part of the cache key: change it when features or training change
CLASSES = ("benign", "crisis", "injection", "red_flag")
KEEP_CACHED = 3
# Long messages are also read two sentences at a time: a crisis in one sentence of a long everyday
# post is diluted in the whole message's n-grams. A window the model is this sure of lifts the
# message's crisis probability to its own (a lower bar flagged too many long benign posts, whose
# sentences out of context read as crises; docs/safety.md has the figures).
WINDOW_MIN_SENTENCES = 3
WINDOW_SENTENCES = 2
WINDOW_CONFIDENT = 0.95
# Thai has no sentence punctuation (spaces part clauses): a long Thai message is read in half
# overlapping runs of this many characters instead. (Chinese typed with "." and no space, Urdu's ۔
# and the other full stops below are sentence ends.)
WINDOW_CHARS = 120
_THAI = re.compile("[\u0e00-\u0e7f]")
_WINDOW_STOPS = re.compile(r"(?<=[۔॥｡．])\s*|(?<=[\u3000-\u9fff\uac00-\ud7af][.!?])\s*")

_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_LEET_CHARS = frozenset("013457@$")
_ZERO_WIDTH = re.compile("[\u200b-\u200f\u2060\ufeff\u00ad]")
_ARABIC_MARKS = re.compile("[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed\u0640]")
_ARABIC_LETTERS = str.maketrans({"أ": "ا", "إ": "ا", "آ": "ا", "ٱ": "ا", "ى": "ي", "ی": "ي", "ک": "ك", "ة": "ه", "ۀ": "ه"})
_REPEAT = re.compile(r"(.)\1{2,}")
_WORD = re.compile(r"\S+")


def _strip_marks(text: str) -> str:
    """Drop combining accents on Latin, Greek and Cyrillic letters only."""
    out: list[str] = []
    for ch in unicodedata.normalize("NFD", text):
        if unicodedata.combining(ch) and out and ord(out[-1]) < 0x0530:
            continue
        out.append(ch)
    return unicodedata.normalize("NFC", "".join(out))


def _unleet(word: str) -> str:
    if any(c.isalpha() for c in word) and any(c in "013457@$" for c in word):
        return word.translate(_LEET)
    return word


def normalize(text: str) -> str:
    """The text as the model sees it (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text or "").casefold()
    text = _ZERO_WIDTH.sub("", text).replace("’", "'").replace("`", "'")
    text = _ARABIC_MARKS.sub("", text).translate(_ARABIC_LETTERS)
    if not text.isascii():
        text = _strip_marks(text)
    if not _LEET_CHARS.isdisjoint(text):
        text = _WORD.sub(lambda m: _unleet(m.group(0)), text)
    return _REPEAT.sub(r"\1\1", text)


# --------------------------------------------------------------------------------------------
# Hashed n-grams, a batch of texts at a time

_P = np.uint64(0x100000001B3)  # odd: invertible modulo 2**64
_P_INV = np.uint64(pow(0x100000001B3, -1, 2**64))
_BIGRAM = np.uint64(0x9E3779B97F4A7C15)
_CHAR_N = (1, 5)
_WORD_TABLE_SIZE = 0x30000  # code points above are private use or unassigned: not word characters
_word_table: np.ndarray | None = None


def _word_chars(codes: np.ndarray) -> np.ndarray:
    """Which code points are word characters: letters, marks (the vowel signs of Indic scripts are
    part of a word), digits and ``_``."""
    global _word_table
    if _word_table is None:
        _word_table = np.fromiter(
            (unicodedata.category(chr(c))[0] in "LMN" or c == 0x5F for c in range(_WORD_TABLE_SIZE)),
            dtype=bool, count=_WORD_TABLE_SIZE,
        )
    return _word_table[np.minimum(codes, _WORD_TABLE_SIZE - 1)]


def _codes(parts: list[str]) -> np.ndarray:
    return np.frombuffer("".join(parts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)


def _prefix(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """G and P**i such that the polynomial hash of ``codes[s:e]`` is ``P**(e-1) * (G[e] - G[s])``
    (all arithmetic modulo 2**64, which numpy's uint64 does by wrapping)."""
    n = len(codes)
    inv_pows = np.empty(n + 1, dtype=np.uint64)
    inv_pows[0] = 1
    pows = np.empty(n + 1, dtype=np.uint64)
    pows[0] = 1
    if n:
        with np.errstate(over="ignore"):
            inv_pows[1:] = np.cumprod(np.full(n, _P_INV, dtype=np.uint64))
            pows[1:] = np.cumprod(np.full(n, _P, dtype=np.uint64))
    g = np.zeros(n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        np.cumsum(codes * inv_pows[:n], out=g[1:])
    return g, pows


def _substring_hashes(g: np.ndarray, pows: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return pows[end - 1] * (g[end] - g[start])


def _grams(norm_texts: Sequence[str]) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(document index, hash) of every character n-gram and of every word unigram and bigram.

    Characters: n-grams of 1–5 code points inside each whitespace-separated word padded by a
    space on each side (" word "). Words: maximal runs of letters, marks, digits and ``_``."""
    parts = []
    lengths = np.empty(len(norm_texts), dtype=np.int64)
    for i, text in enumerate(norm_texts):
        words = text.split()
        part = "\0" + "\0".join(f" {w} " for w in words) + "\0" if words else "\0"
        parts.append(part)
        lengths[i] = len(part)
    codes = _codes(parts)
    doc_of = np.repeat(np.arange(len(norm_texts), dtype=np.int64), lengths)
    g, pows = _prefix(codes)
    length = len(codes)
    zeros = np.concatenate(([0], np.cumsum(codes == 0)))
    char_docs, char_keys = [], []
    for n in range(_CHAR_N[0], _CHAR_N[1] + 1):
        m = length - n + 1
        if m <= 0:
            break
        start = np.flatnonzero(zeros[n : n + m] == zeros[:m])  # no separator inside the window
        char_docs.append(doc_of[start])
        char_keys.append(_substring_hashes(g, pows, start, start + n))
    # Word tokens: runs of word characters (separators and padding are not word characters).
    is_word = _word_chars(codes)
    edges = np.diff(np.concatenate(([0], is_word.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    token_keys = _substring_hashes(g, pows, starts, ends)
    token_docs = doc_of[starts]
    same_doc = token_docs[1:] == token_docs[:-1]
    with np.errstate(over="ignore"):
        bigram_keys = (token_keys[:-1] * _BIGRAM + token_keys[1:])[same_doc] ^ _BIGRAM
    word_docs = np.concatenate((token_docs, token_docs[:-1][same_doc]))
    word_keys = np.concatenate((token_keys, bigram_keys))
    return (np.concatenate(char_docs) if char_docs else np.zeros(0, np.int64),
            np.concatenate(char_keys) if char_keys else np.zeros(0, np.uint64)), (word_docs, word_keys)


@dataclass
class _Block:
    """One fitted TF-IDF block: the kept n-gram hashes (sorted) and their idf."""

    keys: np.ndarray  # uint64, sorted
    idf: np.ndarray  # float32

    def matrix(self, docs: np.ndarray, keys: np.ndarray, n_docs: int):
        """Documents × block columns (scipy CSR): L2-normalised sublinear tf × idf of known n-grams."""
        import scipy.sparse as sp

        n_cols = len(self.keys)
        if n_cols:
            pos = np.searchsorted(self.keys, keys)
            pos[pos >= n_cols] = 0
            known = self.keys[pos] == keys
            docs, pos = docs[known], pos[known]
        else:
            docs = pos = np.zeros(0, dtype=np.int64)
        X = sp.csr_matrix((np.ones(len(pos), dtype=np.float32), (docs, pos)), shape=(n_docs, n_cols))
        X.sum_duplicates()  # counts, indices sorted
        X.data = (1.0 + np.log(X.data)) * self.idf[X.indices]
        lens = np.diff(X.indptr)
        row_of = np.repeat(np.arange(n_docs), lens)
        norms = np.sqrt(np.bincount(row_of, weights=X.data.astype(np.float64) ** 2, minlength=n_docs))
        X.data /= norms[row_of].astype(np.float32)
        return X

    def row(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Columns and values of one document (the same numbers as a row of :meth:`matrix`)."""
        n_cols = len(self.keys)
        if not n_cols or not len(keys):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        pos = np.searchsorted(self.keys, keys)
        pos[pos >= n_cols] = 0
        pos = np.sort(pos[self.keys[pos] == keys])
        if not len(pos):
            return pos, np.zeros(0, dtype=np.float32)
        first = np.concatenate(([True], pos[1:] != pos[:-1]))
        cols = pos[first]
        counts = np.diff(np.append(np.flatnonzero(first), len(pos))).astype(np.float32)
        v = (1.0 + np.log(counts)) * self.idf[cols]
        v /= np.float32(np.sqrt(np.dot(v.astype(np.float64), v)))
        return cols, v


def _fit_block(docs: np.ndarray, keys: np.ndarray, n_docs: int, min_df: int, max_features: int) -> _Block:
    """Document frequency of every n-gram hash; keep those in ``min_df`` documents or more, at most
    ``max_features`` of them (the most frequent; ties by hash, so deterministic).

    ``docs`` must be nondecreasing among equal keys (``_grams`` emits each n-gram length and each
    word-gram kind in document order), so a stable sort by key groups each key's documents in order."""
    order = np.argsort(keys, kind="stable")
    sk, sd = keys[order], docs[order]
    new_key = np.concatenate(([True], sk[1:] != sk[:-1])) if len(sk) else np.zeros(0, dtype=bool)
    new_pair = new_key | np.concatenate(([True], sd[1:] != sd[:-1])) if len(sk) else new_key
    key_id = np.cumsum(new_key) - 1
    uniq = sk[new_key]
    df = np.bincount(key_id[new_pair], minlength=len(uniq))
    keep = np.flatnonzero(df >= min_df)
    if len(keep) > max_features:
        keep = np.sort(keep[np.lexsort((uniq[keep], -df[keep]))[:max_features]])
    idf = (np.log((1.0 + n_docs) / (1.0 + df[keep])) + 1.0).astype(np.float32)
    return _Block(uniq[keep], idf)


@dataclass
class Featurizer:
    """Hashed TF-IDF features: a character block then a word block (column offset ``len(chars.keys)``)."""

    chars: _Block
    words: _Block

    @property
    def n_features(self) -> int:
        return len(self.chars.keys) + len(self.words.keys)

    @classmethod
    def fit_transform(cls, texts: Sequence[str], *, char_features: int, word_features: int,
                      min_df: int = 2) -> tuple["Featurizer", object]:
        """The fitted featurizer and the texts' matrix (as :meth:`transform` would give)."""
        norm = [normalize(t) for t in texts]
        (cd, ck), (wd, wk) = _grams(norm)
        fitted = cls(_fit_block(cd, ck, len(norm), min_df, char_features), _fit_block(wd, wk, len(norm), min_df, word_features))
        return fitted, fitted._matrix(cd, ck, wd, wk, len(norm))

    def _matrix(self, cd, ck, wd, wk, n_docs: int):
        import scipy.sparse as sp

        X = sp.hstack([self.chars.matrix(cd, ck, n_docs), self.words.matrix(wd, wk, n_docs)], format="csr")
        return X.astype(np.float32)

    def transform(self, texts: Sequence[str]):
        """A scipy CSR matrix (documents × features, float32)."""
        norm = [normalize(t) for t in texts]
        (cd, ck), (wd, wk) = _grams(norm)
        return self._matrix(cd, ck, wd, wk, len(norm))

    def features(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Column indices and values of one text (the same numbers as a row of :meth:`transform`)."""
        (_, ck), (_, wk) = _grams([normalize(text)])
        c1, v1 = self.chars.row(ck)
        c2, v2 = self.words.row(wk)
        return np.concatenate((c1, c2 + len(self.chars.keys))), np.concatenate((v1, v2))


# --------------------------------------------------------------------------------------------
# The network: sparse TF-IDF → hidden ReLU layer → four classes, and a red-flag-id head

@dataclass(frozen=True)
class Hyper:
    """How the model is trained. Chosen on a 4-fold CV grouping the writers' batches (crisis recall at
    benign-as-crisis ≤ 0.10 per script): the vocabulary size mattered (150k → 400k n-grams: +0.01–0.02),
    the hidden size hardly (32, 48, 64, 128 within ±0.005), nor dropout 0.2 vs 0.5 or 4 vs 8 epochs;
    row-wise AdaGrad on the first layer matched Adam at half the time; the linear part +0.003."""

    char_features: int = 280_000
    word_features: int = 90_000
    min_df: int = 2
    hidden: int = 32
    epochs: int = 6
    batch: int = 512
    lr: float = 2e-3  # Adam, for everything but the first layer's rows
    dropout: float = 0.2
    seed: int = 0
    optimizer: str = "rowada"  # first layer: "rowada" (row-wise AdaGrad, one accumulator per n-gram) or "adam" (lazy)
    lr1: float = 0.05  # row-wise AdaGrad's step
    wide: bool = True  # also a linear layer from the features straight to the class logits


HYPER = Hyper()


@dataclass
class SafetyModel:
    """Fitted featurizer + the network's weights (numpy, float32): hidden layer, class head, red-flag head."""

    featurizer: Featurizer
    w1: np.ndarray  # features × hidden
    b1: np.ndarray
    w2: np.ndarray  # hidden × classes (CLASSES order)
    b2: np.ndarray
    red_flag_classes: tuple[str, ...] = ()
    w3: np.ndarray | None = None  # hidden × red-flag ids
    b3: np.ndarray | None = None
    w0: np.ndarray | None = None  # features × classes: the linear ("wide") part, added to the class logits
    n_train: int = 0
    corpus_hash: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def red_flag_head(self) -> tuple[str, ...] | None:
        """The red-flag ids the head can name (None when the corpus had fewer than two)."""
        return self.red_flag_classes or None

    def _hidden(self, X) -> np.ndarray:
        return np.maximum(np.asarray(X @ self.w1) + self.b1, 0.0)

    def _whole_probs(self, texts: Sequence[str]) -> np.ndarray:
        X = self.featurizer.transform(list(texts))
        z = self._hidden(X) @ self.w2 + self.b2
        if self.w0 is not None:
            z += np.asarray(X @ self.w0)
        return _softmax(z).astype(np.float64)

    def probs_matrix(self, texts: Sequence[str]) -> np.ndarray:
        """Rows of class probabilities in :data:`CLASSES` order; for a long message the crisis
        entry is :func:`with_windows`' (so a row need not sum to one)."""
        texts = list(texts)
        return with_windows(self._whole_probs(texts), texts, self._whole_probs)

    def probs(self, text: str) -> dict[str, float]:
        return dict(zip(CLASSES, (float(p) for p in self.probs_matrix([text])[0])))

    def proba(self, text: str) -> float:
        """The probability that ``text`` is a crisis."""
        return self.probs(text)["crisis"]

    def features(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        return self.featurizer.features(text)

    def assess(self, text: str) -> tuple[dict[str, float], str]:
        """Class probabilities and the likeliest red-flag id, from one featurization (the same
        numbers as :meth:`probs_matrix` / :meth:`red_flag_ids`)."""
        cols, vals = self.features(text)
        h = np.maximum(vals @ self.w1[cols] + self.b1, 0.0)
        z = h @ self.w2 + self.b2
        if self.w0 is not None:
            z += vals @ self.w0[cols]
        p = with_windows(_softmax(z[None, :]).astype(np.float64), [text], self._whole_probs)[0]
        rf = self.red_flag_classes[int(np.argmax(h @ self.w3 + self.b3))] if self.red_flag_classes else ""
        return {c: float(x) for c, x in zip(CLASSES, p)}, rf

    def red_flag_ids(self, texts: Sequence[str]) -> list[str]:
        if not self.red_flag_classes:
            return ["" for _ in texts]
        h = self._hidden(self.featurizer.transform(list(texts)))
        return [self.red_flag_classes[int(i)] for i in np.argmax(h @ self.w3 + self.b3, axis=1)]

    def red_flag_id(self, text: str) -> str:
        return self.red_flag_ids([text])[0]

    @classmethod
    def train(cls, texts: Sequence[str], labels: Sequence[str], red_flag_ids: Sequence[str] = (), *,
              corpus_hash: str = "", hyper: Hyper = HYPER) -> "SafetyModel":
        """Deterministic: same texts and labels, same weights (fixed seeds, one thread order)."""
        if not texts:
            raise ValueError("no training examples")
        featurizer, X = Featurizer.fit_transform(texts, char_features=hyper.char_features,
                                                 word_features=hyper.word_features, min_df=hyper.min_df)
        y = np.asarray([CLASSES.index(lab) for lab in labels], dtype=np.int64)
        ids = list(red_flag_ids) if red_flag_ids else [""] * len(texts)
        rf_classes = tuple(sorted({rid for lab, rid in zip(labels, ids) if lab == "red_flag" and rid}))
        if len(rf_classes) < 2:
            rf_classes = ()
        rf_y = np.asarray([rf_classes.index(rid) if lab == "red_flag" and rid in rf_classes else -1
                           for lab, rid in zip(labels, ids)], dtype=np.int64)
        w1, b1, w2, b2, w3, b3, w0 = _fit_network(X, y, rf_y, len(rf_classes), hyper)
        counts = {c: int((y == i).sum()) for i, c in enumerate(CLASSES)}
        return cls(featurizer, w1, b1, w2, b2, red_flag_classes=rf_classes, w3=w3, b3=b3, w0=w0, n_train=len(texts),
                   corpus_hash=corpus_hash, counts=counts)


def windows(text: str) -> list[str]:
    """The overlapping runs of :data:`WINDOW_SENTENCES` sentences of a message of
    :data:`WINDOW_MIN_SENTENCES` sentences or more, every one of them (a goodbye is often the
    last sentence of a long post: ~5 ms for 64 windows, far less than the rules on the same text);
    none for a short message. A long Thai message without enough sentence stops is read in half
    overlapping runs of :data:`WINDOW_CHARS` characters."""
    from bot.safety.augment import sentences

    parts = [piece.strip() for part in sentences(text) for piece in _WINDOW_STOPS.split(part) if piece.strip()]
    if len(parts) < WINDOW_MIN_SENTENCES:
        step = WINDOW_CHARS // 2
        if len(text) < WINDOW_MIN_SENTENCES * step or len(_THAI.findall(text)) * 2 < len(text):
            return []
        return [text[i : i + WINDOW_CHARS] for i in range(0, len(text) - step, step)]
    return [" ".join(parts[i : i + WINDOW_SENTENCES]) for i in range(len(parts) - WINDOW_SENTENCES + 1)]


def with_windows(probs: np.ndarray, texts: Sequence[str], score) -> np.ndarray:
    """``probs`` (whole messages) with each long message's crisis probability raised to that of its
    most crisis-like window when the model gives that window :data:`WINDOW_CONFIDENT` or more.
    ``score``: texts → probability rows (the whole-message model)."""
    owners, parts = [], []
    for i, text in enumerate(texts):
        found = windows(text)
        owners += [i] * len(found)
        parts += found
    if not parts:
        return probs
    c = CLASSES.index("crisis")
    best = np.zeros(len(texts))
    np.maximum.at(best, np.asarray(owners), score(parts)[:, c])
    probs = probs.copy()
    lift = best >= WINDOW_CONFIDENT
    probs[lift, c] = np.maximum(probs[lift, c], best[lift])
    return probs


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class _Adam:
    """Adam; for the first layer "lazy": only the rows of the n-grams in the batch are read and
    updated (their moments too), so a step costs what the batch touches, not the vocabulary."""

    def __init__(self, params: list[np.ndarray], lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
        self.params, self.lr, self.b1, self.b2, self.eps = params, lr, b1, b2, eps
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads: list[tuple[np.ndarray | None, np.ndarray]]) -> None:
        """``grads``: for each parameter, (rows or None for the whole parameter, gradient)."""
        self.t += 1
        scale = float(self.lr * np.sqrt(1.0 - self.b2**self.t) / (1.0 - self.b1**self.t))
        b1, b2 = self.b1, self.b2
        for p, m, v, (rows, g) in zip(self.params, self.m, self.v, grads):
            if rows is None:
                m *= b1
                m += (1.0 - b1) * g
                v *= b2
                v += (1.0 - b2) * g * g
                p -= scale * m / (np.sqrt(v) + self.eps)
            else:
                mr = m[rows]
                mr *= b1
                mr += (1.0 - b1) * g
                vr = v[rows]
                vr *= b2
                g *= g
                g *= 1.0 - b2
                vr += g
                m[rows] = mr
                v[rows] = vr
                np.sqrt(vr, out=vr)
                vr += self.eps
                mr /= vr
                mr *= scale
                p[rows] -= mr


def _fit_network(X, y: np.ndarray, rf_y: np.ndarray, n_rf: int, hyper: Hyper):
    """Mini-batch Adam on cross-entropy (classes weighted to balance) plus the red-flag-id head's
    cross-entropy on red-flag rows, with dropout on the hidden units. The first layer is a sparse
    product: a batch reads and updates only the rows of its n-grams. numpy and scipy only, one
    thread's order of operations: the same corpus gives the same weights. Returns float32 weights."""
    import scipy.sparse as sp

    rng = np.random.default_rng(hyper.seed)
    n_feat, hidden, k = X.shape[1], hyper.hidden, len(CLASSES)
    f32 = np.float32
    w1 = (rng.standard_normal((n_feat, hidden), dtype=f32) * f32(1.0 / np.sqrt(hidden)))
    b1 = np.zeros(hidden, dtype=f32)
    w2 = rng.standard_normal((hidden, k), dtype=f32) * f32(1.0 / np.sqrt(hidden))
    b2 = np.zeros(k, dtype=f32)
    r = max(1, n_rf)
    w3 = rng.standard_normal((hidden, r), dtype=f32) * f32(1.0 / np.sqrt(hidden))
    b3 = np.zeros(r, dtype=f32)
    rowada = hyper.optimizer == "rowada"
    g1 = np.zeros(n_feat, dtype=f32) if rowada else None
    w0 = np.zeros((n_feat, k), dtype=f32) if hyper.wide else None
    g0 = np.zeros(n_feat, dtype=f32) if hyper.wide else None
    opt = _Adam(([] if rowada else [w1]) + [b1, w2, b2, w3, b3], hyper.lr)
    counts = np.bincount(y, minlength=k).astype(np.float64)
    class_weight = np.where(counts > 0, len(y) / (k * np.maximum(counts, 1)), 0.0).astype(f32)
    X = X.tocsr().astype(f32)
    keep = 1.0 - hyper.dropout
    for _ in range(hyper.epochs):
        order = rng.permutation(len(y))
        for s in range(0, len(order), hyper.batch):
            rows = order[s : s + hyper.batch]
            Xb = X[rows]
            cols, inverse = np.unique(Xb.indices, return_inverse=True)
            Xc = sp.csr_matrix((Xb.data, inverse.ravel(), Xb.indptr), shape=(len(rows), len(cols)))
            w1c = w1[cols]
            a1 = Xc @ w1c + b1
            h = np.maximum(a1, 0)
            mask = (rng.random(h.shape, dtype=f32) < keep).astype(f32) / f32(keep) if hyper.dropout else None
            hd = h * mask if mask is not None else h
            # class head: weighted softmax cross-entropy (mean over the batch's weights)
            z = hd @ w2 + b2
            if w0 is not None:
                w0c = w0[cols]
                z += Xc @ w0c
            p = _softmax(z)
            yb = y[rows]
            wy = class_weight[yb]
            p[np.arange(len(rows)), yb] -= 1.0
            dz = (p * (wy / wy.sum())[:, None]).astype(f32)
            gw2, gb2 = hd.T @ dz, dz.sum(axis=0)
            dh = dz @ w2.T
            # red-flag-id head on the batch's red-flag rows
            gw3, gb3 = np.zeros_like(w3), np.zeros_like(b3)
            rb = rf_y[rows]
            sel = np.flatnonzero(rb >= 0)
            if n_rf and len(sel):
                pr = _softmax(hd[sel] @ w3 + b3)
                pr[np.arange(len(sel)), rb[sel]] -= 1.0
                dzr = (pr / len(sel)).astype(f32)
                gw3, gb3 = hd[sel].T @ dzr, dzr.sum(axis=0)
                dh[sel] += dzr @ w3.T
            if mask is not None:
                dh *= mask
            da1 = dh * (a1 > 0)
            gw1 = np.asarray(Xc.T @ da1, dtype=f32)
            if w0 is not None:
                gw0 = np.asarray(Xc.T @ dz, dtype=f32)
                acc0 = g0[cols] + (gw0 * gw0).mean(axis=1)
                g0[cols] = acc0
                gw0 *= (hyper.lr1 / (np.sqrt(acc0) + 1e-8))[:, None].astype(f32)
                w0c -= gw0
                w0[cols] = w0c
            if rowada:
                acc = g1[cols] + (gw1 * gw1).mean(axis=1)
                g1[cols] = acc
                gw1 *= (hyper.lr1 / (np.sqrt(acc) + 1e-8))[:, None].astype(f32)
                w1c -= gw1
                w1[cols] = w1c
                opt.step([(None, da1.sum(axis=0)), (None, gw2), (None, gb2), (None, gw3), (None, gb3)])
            else:
                opt.step([(cols, gw1), (None, da1.sum(axis=0)), (None, gw2), (None, gb2), (None, gw3), (None, gb3)])
    return w1, b1, w2, b2, (w3 if n_rf else None), (b3 if n_rf else None), w0


def train_on_rows(rows: Sequence, corpus_hash: str = "", hyper: Hyper = HYPER) -> SafetyModel:
    """A model from :class:`bot.safety.corpus.Row` objects, augmented first
    (:mod:`bot.safety.augment`: everyday sentences alone, splices, a crisis inside a long message)."""
    from bot.safety.augment import augmented

    rows = augmented(rows)
    return SafetyModel.train(
        [r.text for r in rows], [r.label for r in rows], [r.red_flag_id for r in rows], corpus_hash=corpus_hash,
        hyper=hyper,
    )


def cache_path(cache_dir: Path, corpus_hash: str) -> Path:
    return cache_dir / f"safety-model-{MODEL_VERSION}-np{np.__version__}-{corpus_hash[:20]}.joblib"


def load_or_train(rows_loader, corpus_hash: str, cache_dir: Path | None) -> SafetyModel:
    """The cached model for this corpus hash, or a freshly trained one (then cached).

    The cache holds a pickle that this process wrote into the service's own data directory; a
    file that cannot be read is ignored and replaced."""
    import joblib

    path = cache_path(cache_dir, corpus_hash) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            model = joblib.load(path)
            if isinstance(model, SafetyModel) and model.corpus_hash == corpus_hash:
                return model
        except Exception as exc:  # noqa: BLE001 — a stale or damaged cache is retrained, not fatal
            log.warning("safety model cache %s unreadable (%s): retraining", path.name, type(exc).__name__)
    model = train_on_rows(rows_loader(), corpus_hash)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            joblib.dump(model, tmp)
            tmp.replace(path)
            # Keep the newest few (several checkouts may share one cache directory).
            cached = sorted(path.parent.glob("safety-model-*.joblib"), key=lambda f: f.stat().st_mtime, reverse=True)
            for old in cached[KEEP_CACHED:]:
                old.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not cache the safety model in %s: %s", path.parent, exc)
    return model
