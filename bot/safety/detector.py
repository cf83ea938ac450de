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
import re
import threading
from pathlib import Path
from typing import Any, Iterable

from bot.safety.language import _CJK, _TOKEN, detect_language
from bot.safety.rules import crisis_rule_hits, injection_hits
from bot.safety.scope import out_of_scope, policy_for
from bot.safety.verdict import Triage

log = logging.getLogger(__name__)

SAFETY_DATA = Path(__file__).resolve().parent / "data"
CRISIS_TRAIN = SAFETY_DATA / "crisis_train.jsonl"
DEFAULT_THRESHOLD = 0.5  # classifier probability for a crisis (rules fire regardless)
MIN_CLASSIFIER_WORDS = 3
RED_FLAG_THRESHOLD = 0.8  # classifier threshold when the message trips a pack red flag and no crisis rule
POSSIBLE_THRESHOLD = 0.4  # below crisis but worth a human look: the reply is held for review

# --------------------------------------------------------------------------------------------
# The classifier (trained once per process from the shipped labelled set)

_model_lock = threading.Lock()
_models: dict[tuple[str, ...], Any] = {}
_pack_models: dict[int, tuple[Any, Any]] = {}  # per pack object: no file checks on the hot path


def training_files(pack: Any = None) -> list[Path]:
    files = [CRISIS_TRAIN]
    pack_path = getattr(pack, "path", None)
    if pack_path is not None:
        extra = Path(pack_path) / "safety" / "crisis_train.jsonl"
        if extra.is_file():
            files.append(extra)
    return files


def crisis_model(pack: Any = None):
    """The trained classifier for this pack (cached; about a tenth of a second to train)."""
    from bot.safety.classifier import CrisisModel, read_examples

    cached = _pack_models.get(id(pack))
    if cached is not None and cached[0] is pack:
        return cached[1]
    files = training_files(pack)
    key = tuple(f"{f}:{f.stat().st_mtime_ns}" for f in files)
    with _model_lock:
        model = _models.get(key)
        if model is None:
            examples = read_examples(files)
            model = CrisisModel.train([e.text for e in examples], [e.label for e in examples], threshold=DEFAULT_THRESHOLD)
            _models[key] = model
            log.info("crisis classifier trained on %d labelled messages", len(examples))
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


def triage(
    text: str,
    pack: Any,
    *,
    reply_languages: Iterable[str] = (),
    threshold: float | None = None,
    possible_threshold: float | None = None,
) -> Triage:
    """Classify one patient message (see the module docstring for the order of precedence)."""
    text = text or ""
    rule_hits = crisis_rule_hits(text)
    model = crisis_model(pack)
    # The classifier needs some words to go on: on one or two words it mostly echoes its prior,
    # so very short messages are left to the rules (which cover the short explicit forms).
    words = len(_TOKEN.findall(text))
    enough = words >= MIN_CLASSIFIER_WORDS or bool(_CJK.search(text))
    score = model.proba(text) if enough else 0.0
    cut = DEFAULT_THRESHOLD if threshold is None else threshold
    flags = red_flags_in(text, pack)
    if flags and not rule_hits:
        # A message describing red-flag symptoms ("I wake up drenched every night") shares words
        # with medical emergencies; without a rule match the classifier needs to be very sure.
        cut = max(cut, RED_FLAG_THRESHOLD)
    crisis = bool(rule_hits) or score >= cut
    maybe = POSSIBLE_THRESHOLD if possible_threshold is None else possible_threshold
    possible = not crisis and score >= min(maybe, cut)
    kind = rule_hits[0][0] if rule_hits else ("classifier" if crisis else None)
    reasons = tuple(f"{k}: {m}" for k, m in rule_hits) + ((f"classifier: p={score:.2f}",) if score >= cut else ())
    pack_language = getattr(getattr(pack, "meta", None), "language", None) or getattr(pack, "language", None) or "en"
    language = detect_language(text, default=pack_language)
    supported = {pack_language, *reply_languages}
    scope = out_of_scope(text, policy_for(pack))
    injection = bool(injection_hits(text))
    verdict = Triage(
        crisis=crisis,
        red_flags=flags,
        injection=injection,
        reasons=reasons,
        crisis_kind=kind,
        crisis_score=score,
        out_of_scope=scope,
        language=language,
        language_supported=language in supported,
        possible_crisis=possible,
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
