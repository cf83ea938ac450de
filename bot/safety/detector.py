"""Safety triage of every patient message, before the model is asked.

One call, :func:`triage`, decides for a patient's message:

* **crisis** (self-harm or suicidal thoughts, intent to hurt others, a medical emergency): the
  model is not asked; the core sends crisis resources and alerts moderators. Detection is
  multilingual rules OR an offline classifier (:mod:`bot.safety.classifier`, trained on the
  labelled set in ``bot/safety/data/``). Rules catch explicit phrasing with certainty; the
  classifier catches indirect, misspelled and slang phrasing. A rule match that sits inside
  a clearly negated or resolved phrase ("I'm not suicidal", "years ago … I'm fine now") is
  ignored, but the classifier still votes on the whole message.
* **language**: a message in a language the service does not answer in gets a clear
  statement, in that language, of what is supported (and the red-flag / emergency advice).
* **red flags** from the condition pack: the reply must advise a doctor and is gated.
* **out of scope** (other conditions, dosing questions, diagnosing someone else): a kind
  boundary and a pointer to a clinician, from :data:`BOUNDARY`, not from the model.
* **prompt injection** ("ignore your instructions", fake system turns, requests for the
  prompt): the model is still asked, with a guard line in its system turn; replies are
  checked afterwards (:mod:`bot.safety.reply_checks`), so nothing the patient writes changes what
  the service does.

The order of precedence is crisis > unsupported language > red flags > out of scope >
injection > answer, and :attr:`Triage.action` names the outcome.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

from bot.safety.corpus import UNREADABLE_SCRIPT, corpus_files, load_corpus, script_of, training_hash

from bot.safety.language import _CJK, _TOKEN, detect_language
from bot.safety.encoded import find_encoded
from bot.safety.rules import all_crisis_rule_hits, injection_hits
from bot.safety.scope import out_of_scope, policy_for
from bot.safety.verdict import Triage

log = logging.getLogger(__name__)

UNREADABLE_LANGUAGE = "und"  # ISO 639-2 "undetermined": the language of a script no batch covers

# Thresholds on the learned model's probabilities (bot.safety.classifier, MODEL_VERSION hash-mlp-6),
# chosen on the pooled leave-one-writer-out CV of the whole triage (rules + model) over the shipped
# corpus (24 batches, 45,691 messages; `python bench/bench_safety.py --sweep`), recall-first; the
# figures at these values are in docs/safety.md. Rules fire regardless.
DEFAULT_THRESHOLD = 0.55  # crisis, Latin script: the lowest keeping benign-as-crisis within 0.10 on CV
NON_LATIN_THRESHOLD = 0.35  # crisis, other scripts pooled (used by a script without its own, below)
POSSIBLE_THRESHOLD = 0.075  # possible crisis (a person looks first): crisis OR possible reaches 0.97 on CV
RED_FLAG_THRESHOLD = 0.8  # crisis threshold when the message trips a pack red flag and no crisis rule
LEARNED_RED_FLAG_THRESHOLD = 0.75  # a red flag the pack's patterns missed, outside the pack's language
LEARNED_RED_FLAG_OWN_LANGUAGE = 0.925  # the same, in the pack's own language (its patterns read it too)
INJECTION_THRESHOLD = 0.85  # the highest still reaching injection recall 0.90 on CV
# Per script (the corpus spec's script names; ``bot.safety.corpus.script_of``), chosen the same way on
# that script's CV messages alone where CV had enough of them (150 benign messages for crisis, 80
# red flags or injections): these override the values above for that script.
CRISIS_BY_SCRIPT: tuple[tuple[str, float], ...] = (
    ("Arabic", 0.375), ("Bengali", 0.25), ("Cyrillic", 0.35), ("Devanagari", 0.45), ("Greek", 0.275), ("Han", 0.25),
    ("Hangul", 0.35), ("Hebrew", 0.3), ("Japanese", 0.35), ("Latin", 0.55), ("Thai", 0.2),
)
RED_FLAG_BY_SCRIPT: tuple[tuple[str, float], ...] = (  # learned red flag, where not own_language()
    ("Arabic", 0.675), ("Bengali", 0.8), ("Cyrillic", 0.725), ("Devanagari", 0.125), ("Greek", 0.8), ("Han", 0.825),
    ("Hangul", 0.825), ("Hebrew", 0.75), ("Japanese", 0.85), ("Latin", 0.775), ("Thai", 0.875),
)
INJECTION_BY_SCRIPT: tuple[tuple[str, float], ...] = (
    ("Arabic", 0.675), ("Bengali", 0.875), ("Cyrillic", 0.9), ("Devanagari", 0.575), ("Greek", 0.775), ("Han", 0.8),
    ("Hangul", 0.825), ("Hebrew", 0.825), ("Japanese", 0.75), ("Latin", 0.9), ("Thai", 0.775),
)
MIN_CLASSIFIER_WORDS = 2  # one word: the rules only (the model mostly echoes its prior)

# --------------------------------------------------------------------------------------------
# The learned model (trained once per corpus: cached on disk by corpus hash, and per process)

_model_lock = threading.Lock()
_models: dict[str, Any] = {}
_pack_models: dict[int, tuple[Any, Any]] = {}  # per pack object: no file checks on the hot path


def training_files(pack: Any = None) -> list[Path]:
    """The corpus files the model is trained on (only ``bot/safety/data/`` and the pack's own)."""
    return corpus_files(pack)


def default_cache_dir() -> Path:
    """Where the fitted model is kept when no data directory is given (library use, benches, tests)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "llm4sweat"


def crisis_model(pack: Any = None, cache_dir: Path | None = None):
    """The trained :class:`bot.safety.classifier.SafetyModel` for this pack's corpus: from this
    process's memory, else the cache file for the corpus hash (files and exclusions) in ``cache_dir`` (the service
    passes its data directory), else trained now and cached there."""
    from bot.safety.classifier import load_or_train

    cached = _pack_models.get(id(pack))
    if cached is not None and cached[0] is pack:
        return cached[1]
    files = training_files(pack)
    key = training_hash(files)  # the files and excluded.tsv: either changes the rows trained on
    with _model_lock:
        model = _models.get(key)
        if model is None:
            started = time.perf_counter()
            model = load_or_train(lambda: load_corpus(files), key, cache_dir or default_cache_dir())
            _models[key] = model
            log.info(
                "safety model ready (%d labelled messages, %.1f s)", model.n_train, time.perf_counter() - started
            )
        if pack is not None:
            _pack_models[id(pack)] = (pack, model)
    return model


def red_flags_in(text: str, pack: Any) -> tuple[str, ...]:
    finder = getattr(pack, "find_red_flags", None)
    if finder is not None:
        return tuple(dict.fromkeys(flag.id for flag in finder(text)))
    found = []
    for flag in getattr(pack, "red_flags", ()):
        matches = getattr(flag, "matches", None)
        if matches is not None:
            hit = matches(text)
        else:
            hit = any(re.search(p, text, re.I) for p in flag.patterns)
        if hit:
            found.append(flag.id)
    return tuple(found)


@dataclass(frozen=True)
class Thresholds:
    """Where the learned model's probabilities turn into decisions (defaults: chosen by CV)."""

    crisis: float = DEFAULT_THRESHOLD
    crisis_other_scripts: float = NON_LATIN_THRESHOLD
    # Per script (the corpus spec's script names), overriding the two above: ((script, threshold), …).
    crisis_by_script: tuple[tuple[str, float], ...] = CRISIS_BY_SCRIPT
    possible: float = POSSIBLE_THRESHOLD
    crisis_with_red_flag: float = RED_FLAG_THRESHOLD
    red_flag: float = LEARNED_RED_FLAG_THRESHOLD
    red_flag_own_language: float = LEARNED_RED_FLAG_OWN_LANGUAGE
    injection: float = INJECTION_THRESHOLD
    min_words: int = MIN_CLASSIFIER_WORDS
    red_flag_by_script: tuple[tuple[str, float], ...] = RED_FLAG_BY_SCRIPT
    injection_by_script: tuple[tuple[str, float], ...] = INJECTION_BY_SCRIPT


@dataclass(frozen=True)
class Signals:
    """What every layer of the offline triage saw in one message, before any threshold."""

    rule_hits: tuple[tuple[str, str], ...]
    pack_flags: tuple[str, ...]
    injection_rule: bool
    probs: dict[str, float]
    learned_flag: str
    words: int
    language: str = "en"
    pack_language: str = "en"
    script: str = "Latin"


def signals(text: str, pack: Any, model: Any = None) -> Signals:
    """Rules, the pack's red-flag patterns and the learned model on one message.

    The message is decoded once (:func:`bot.safety.encoded.find_encoded`: base64, reversed,
    leetspeak, …) and both rule sets also read the decoded texts: a crisis hidden by an encoding
    is a crisis rule hit named by its encoding ("self_harm: base64: kill myself")."""
    model = model if model is not None else crisis_model(pack)
    words = len(_TOKEN.findall(text)) + (3 if _CJK.search(text) else 0)
    probs, learned_flag = model.assess(text) if text.strip() else ({}, "")
    pack_language = _pack_language(pack)
    decoded = find_encoded(text)
    script = script_of(text)
    # A script no batch covers is no known language either: "und", so the patient gets the
    # language notice (with its emergency line) rather than a reply to text nobody here can read.
    language = UNREADABLE_LANGUAGE if script == UNREADABLE_SCRIPT else detect_language(text, default=pack_language)
    return Signals(
        rule_hits=tuple(all_crisis_rule_hits(text, decoded)), pack_flags=red_flags_in(text, pack),
        injection_rule=bool(injection_hits(text, decoded)), probs=probs, learned_flag=learned_flag, words=words,
        language=language, pack_language=pack_language, script=script,
    )


def _pack_language(pack: Any) -> str:
    return getattr(getattr(pack, "meta", None), "language", None) or getattr(pack, "language", None) or "en"


@dataclass(frozen=True)
class Decision:
    crisis: bool
    possible: bool
    red_flags: tuple[str, ...]
    injection: bool
    kind: str | None
    score: float
    reasons: tuple[str, ...]


def own_language(sig: Signals) -> bool:
    """Is the message in the pack's language, where the pack's red-flag patterns read it too? (A
    message in another script is not, whatever the language detector says: it may not know the
    language and answer with the pack's; the pack's patterns are written in Latin script.)"""
    return sig.language == sig.pack_language and sig.script == "Latin"


def decide(sig: Signals, th: Thresholds = Thresholds()) -> Decision:
    """The offline combine rule: a rule OR the model (crisis, red flag, injection)."""
    score = sig.probs.get("crisis", 0.0) if sig.words >= th.min_words else 0.0
    # The false-alarm target holds per script: the model is surer in some scripts than in others
    # (it sees far more Latin-script messages), so each script with enough CV messages has the
    # threshold that keeps its own benign-as-crisis within target.
    cut = dict(th.crisis_by_script).get(sig.script, th.crisis if sig.script == "Latin" else th.crisis_other_scripts)
    flags = sig.pack_flags
    if flags and not sig.rule_hits:
        # A message describing red-flag symptoms ("I wake up drenched every night") shares words
        # with medical emergencies; without a rule match the model needs to be surer.
        cut = max(cut, th.crisis_with_red_flag)
    crisis = bool(sig.rule_hits) or score >= cut
    # A red flag the pack's patterns missed: the model names the id. The pack's own language (where
    # the patterns already read the message and know "no fever, both sides the same") has its own
    # threshold; other languages one per script.
    if own_language(sig):
        rf_cut = th.red_flag_own_language
    else:
        rf_cut = dict(th.red_flag_by_script).get(sig.script, th.red_flag)
    if not flags and not crisis and sig.learned_flag and sig.probs.get("red_flag", 0.0) >= rf_cut:
        flags = (sig.learned_flag,)
    possible = not crisis and score >= min(th.possible, cut)
    kind = sig.rule_hits[0][0] if sig.rule_hits else ("classifier" if crisis else None)
    reasons = tuple(f"{k}: {m}" for k, m in sig.rule_hits) + ((f"classifier: p={score:.2f}",) if score >= cut else ())
    if sig.script == UNREADABLE_SCRIPT and not crisis:
        # Neither the rules nor the model can read this script: like a layer that cannot answer,
        # it counts as a possible crisis (resources at once, the reply held for a person), never "safe".
        possible = True
        reasons += ("script the offline detector cannot read",)
    injection = sig.injection_rule or sig.probs.get("injection", 0.0) >= dict(th.injection_by_script).get(
        sig.script, th.injection)
    return Decision(crisis, possible, flags, injection, kind, score, reasons)


def triage(
    text: str,
    pack: Any,
    *,
    reply_languages: Iterable[str] = (),
    threshold: float | None = None,
    possible_threshold: float | None = None,
    model: Any = None,
) -> Triage:
    """Classify one patient message (see the module docstring for the order of precedence).

    ``model``: a :class:`bot.safety.classifier.SafetyModel` to use instead of the shipped one
    (cross-validation passes the model trained without the batch it scores)."""
    text = text or ""
    th = Thresholds()
    if threshold is not None:  # the setting overrides every script's threshold
        th = replace(th, crisis=threshold, crisis_other_scripts=threshold, crisis_by_script=())
    if possible_threshold is not None:
        th = replace(th, possible=possible_threshold)
    sig = signals(text, pack, model)
    d = decide(sig, th)
    language, pack_language = sig.language, sig.pack_language
    supported = {pack_language, *reply_languages}
    verdict = Triage(
        crisis=d.crisis,
        red_flags=d.red_flags,
        injection=d.injection,
        reasons=d.reasons,
        crisis_kind=d.kind,
        crisis_score=d.score,
        out_of_scope=out_of_scope(text, policy_for(pack)),
        language=language,
        language_supported=language in supported,
        possible_crisis=d.possible,
    )
    log.debug("triage: action=%s flags=%s", verdict.action, verdict.risk_flags)
    return verdict


def advises_doctor(reply: str) -> bool:
    """Does a reply send the patient to a clinician? (The reply checks' own test; used by evaluation.)"""
    from bot.safety.reply_checks import advises_doctor as check

    return check(reply)


def loggable(text: str, settings: Any = None) -> str:
    """Message text for a log line: only when ``settings.log_message_text`` is on; else its length."""
    if settings is not None and getattr(settings, "log_message_text", False):
        return repr(text)
    return f"<{len(text)} chars>"
