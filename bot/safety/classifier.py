"""The offline learned safety model: TF-IDF character and word n-grams → a linear model (logistic loss).

Four classes — crisis, red_flag, benign, injection — plus a red-flag head that names one of the
pack's red-flag ids, so a red flag written in Thai or Polish still yields ``rf-night-sweats``.
No GPU, no network, only scikit-learn; trained deterministically from the corpus in
``bot/safety/data/`` (:mod:`bot.safety.corpus`) and cached on disk keyed by the corpus hash.

Why these features: patients in distress write indirectly, misspell, use slang and write in
many scripts. Character n-grams (1–5, within word boundaries) survive misspellings and
inflections and work in scripts without spaces between words (Thai, Han, Japanese), where a
"word" is a whole clause; word unigrams and bigrams carry phrases ("no point", "bye all").
The text is normalised first: NFKC, case-folded, zero-width characters dropped, Latin, Greek and
Cyrillic accents stripped (not the vowel signs of Devanagari, Bengali or Thai, which carry
meaning), Arabic diacritics and letter variants unified, leetspeak undone inside words and
letters repeated 3+ times collapsed.

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

MODEL_VERSION = "tfidf-sgd-4-aug"  # part of the cache key: change it when features or training change
CLASSES = ("benign", "crisis", "injection", "red_flag")
KEEP_CACHED = 3

_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
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
    text = _strip_marks(text)
    text = _WORD.sub(lambda m: _unleet(m.group(0)), text)
    return _REPEAT.sub(r"\1\1", text)


def _vectorizer():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion([
        ("chars", TfidfVectorizer(
            analyzer="char_wb", ngram_range=(1, 5), preprocessor=normalize, min_df=2, sublinear_tf=True,
            max_features=300_000, dtype=np.float32,
        )),
        ("words", TfidfVectorizer(
            analyzer="word", ngram_range=(1, 2), preprocessor=normalize, token_pattern=r"(?u)\b\w+\b",
            min_df=1, sublinear_tf=True, max_features=200_000, dtype=np.float32,
        )),
    ])


def _linear():
    from sklearn.linear_model import SGDClassifier

    return SGDClassifier(loss="log_loss", alpha=1e-5, class_weight="balanced", max_iter=30, tol=None, random_state=0)


@dataclass
class SafetyModel:
    """Fitted vectorizer + four-class logistic regression + red-flag-id head."""

    vectorizer: object
    classifier: object
    red_flag_head: object | None
    n_train: int = 0
    corpus_hash: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    def probs_matrix(self, texts: Sequence[str]) -> np.ndarray:
        """Rows of class probabilities in :data:`CLASSES` order."""
        X = self.vectorizer.transform(list(texts))
        proba = self.classifier.predict_proba(X)
        order = [list(self.classifier.classes_).index(c) if c in self.classifier.classes_ else -1 for c in CLASSES]
        out = np.zeros((len(texts), len(CLASSES)))
        for j, k in enumerate(order):
            if k >= 0:
                out[:, j] = proba[:, k]
        return out

    def probs(self, text: str) -> dict[str, float]:
        return dict(zip(CLASSES, (float(p) for p in self.probs_matrix([text])[0])))

    def proba(self, text: str) -> float:
        """The probability that ``text`` is a crisis."""
        return self.probs(text)["crisis"]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_fast", None)  # rebuilt on first use; not worth a second copy in the cache file
        state.pop("_analyzers", None)
        return state

    def _weights(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Both linear layers as one contiguous (features × outputs) matrix: one sparse product per
        message instead of sklearn's per-call checks (several ms each on a busy machine)."""
        cached = getattr(self, "_fast", None)
        if cached is None:
            coefs, biases = [self.classifier.coef_], [self.classifier.intercept_]
            if self.red_flag_head is not None:
                coefs.append(self.red_flag_head.coef_)
                biases.append(self.red_flag_head.intercept_)
            weights = np.ascontiguousarray(np.vstack(coefs).T, dtype=np.float64)
            cached = (weights, np.concatenate(biases).astype(np.float64), len(self.classifier.classes_))
            self._fast = cached
        return cached

    def _parts(self) -> list[tuple[object, dict, np.ndarray, int]]:
        """(analyzer, vocabulary, idf, column offset) of each TF-IDF block of the feature union."""
        parts = getattr(self, "_analyzers", None)
        if parts is None:
            parts, offset = [], 0
            for _, vec in self.vectorizer.transformer_list:
                parts.append((vec.build_analyzer(), vec.vocabulary_, vec.idf_.astype(np.float64), offset))
                offset += len(vec.vocabulary_)
            self._analyzers = parts
        return parts

    def features(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Column indices and values of ``vectorizer.transform([text])``, computed directly
        (sublinear tf × idf, L2-normalised per block): a tenth of sklearn's per-call cost."""
        cols: list[int] = []
        vals: list[float] = []
        for analyze, vocab, idf, offset in self._parts():
            counts: dict[int, int] = {}
            for gram in analyze(text):
                j = vocab.get(gram)
                if j is not None:
                    counts[j] = counts.get(j, 0) + 1
            if not counts:
                continue
            idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            tf = 1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))
            w = tf * idf[idx]
            w /= np.sqrt(np.dot(w, w)) or 1.0
            cols.extend((idx + offset).tolist())
            vals.extend(w.tolist())
        return np.asarray(cols, dtype=np.int64), np.asarray(vals, dtype=np.float64)

    def assess(self, text: str) -> tuple[dict[str, float], str]:
        """Class probabilities and the likeliest red-flag id, from one featurization (the same
        numbers as ``classifier.predict_proba`` / ``red_flag_head.predict``)."""
        weights, bias, k = self._weights()
        cols, vals = self.features(text)
        scores = vals @ weights[cols] + bias
        proba = 1.0 / (1.0 + np.exp(-scores[:k]))  # one-vs-rest logistic, normalised (as SGDClassifier)
        proba /= proba.sum()
        probs = {c: 0.0 for c in CLASSES}
        for c, p in zip(self.classifier.classes_, proba):
            probs[str(c)] = float(p)
        rf = ""
        if self.red_flag_head is not None:
            head = scores[k:]
            classes = self.red_flag_head.classes_
            rf = str(classes[int(head[0] > 0)] if len(classes) == 2 else classes[int(np.argmax(head))])
        return probs, rf

    def red_flag_ids(self, texts: Sequence[str]) -> list[str]:
        if self.red_flag_head is None:
            return ["" for _ in texts]
        return [str(x) for x in self.red_flag_head.predict(self.vectorizer.transform(list(texts)))]

    def red_flag_id(self, text: str) -> str:
        return self.red_flag_ids([text])[0]

    @classmethod
    def train(cls, texts: Sequence[str], labels: Sequence[str], red_flag_ids: Sequence[str] = (), *, corpus_hash: str = "") -> "SafetyModel":
        """Deterministic: same texts and labels, same model (a fixed random state).

        Logistic loss by stochastic gradient descent: as good as lbfgs on leave-one-writer-out CV
        (crisis-vs-benign AUC 0.969 vs 0.968 on 7,008 messages) and five times faster to train."""
        if not texts:
            raise ValueError("no training examples")
        vectorizer = _vectorizer()
        X = vectorizer.fit_transform(list(texts))
        y = np.asarray(labels)
        classifier = _linear()
        classifier.fit(X, y)
        head = None
        ids = list(red_flag_ids) if red_flag_ids else []
        rf_rows = [i for i, (lab, rid) in enumerate(zip(labels, ids)) if lab == "red_flag" and rid]
        if len({ids[i] for i in rf_rows}) >= 2:
            head = _linear()
            head.fit(X[rf_rows], [ids[i] for i in rf_rows])
        counts = {c: int((y == c).sum()) for c in CLASSES}
        return cls(vectorizer, classifier, head, n_train=len(texts), corpus_hash=corpus_hash, counts=counts)


def train_on_rows(rows: Sequence, corpus_hash: str = "") -> SafetyModel:
    """A model from :class:`bot.safety.corpus.Row` objects, augmented first
    (:mod:`bot.safety.augment`: everyday sentences alone, splices, a crisis inside a long message).

    Augmenting the rows of every leave-one-writer-out fold raised pooled CV crisis recall from 0.859
    to 0.886 at the same false-alarm target (and long messages with a buried crisis 0.56 → 0.79)."""
    from bot.safety.augment import augmented

    rows = augmented(rows)
    return SafetyModel.train(
        [r.text for r in rows], [r.label for r in rows], [r.red_flag_id for r in rows], corpus_hash=corpus_hash
    )


def cache_path(cache_dir: Path, corpus_hash: str) -> Path:
    import sklearn

    return cache_dir / f"safety-model-{MODEL_VERSION}-sk{sklearn.__version__}-{corpus_hash[:20]}.joblib"


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
