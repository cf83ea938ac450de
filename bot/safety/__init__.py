"""The safety layer: everything that decides whether a patient message or a model reply is safe.

Modules, each holding one thing:

* :mod:`bot.safety.rules` — explicit crisis and prompt-injection rules (regular expressions);
* :mod:`bot.safety.classifier` — the offline learned model (crisis / red flag / benign / injection);
* :mod:`bot.safety.corpus` — its labelled corpus (``bot/safety/data/`` only);
* :mod:`bot.safety.detector` — :func:`triage`, the offline verdict on one message (rules OR model);
* :mod:`bot.safety.remote` — Llama Guard 3 and OpenAI moderation behind :class:`SafetyClassifier`;
* :mod:`bot.safety.policy` — the one recall-first combine rule for all layers;
* :mod:`bot.safety.verdict` — :class:`Triage`, the verdict and the action it implies;
* :mod:`bot.safety.language` — language guess, the unsupported-language notice, crisis prefaces;
* :mod:`bot.safety.scope` — out-of-scope rules and dosing ranges from the pack's policy;
* :mod:`bot.safety.reply_checks` — checks on every model reply;
* :mod:`bot.safety.ratelimit` — per-patient rate limit and fair model slots;
* :mod:`bot.safety.layer` — :class:`SafetyLayer`, the one interface the conversation core calls;
* :mod:`bot.safety.scoring` — scoring labelled sets (``llm4sweat triage``, ``bench/bench_safety.py``).
"""

from bot.safety.detector import (
    DEFAULT_THRESHOLD,
    POSSIBLE_THRESHOLD,
    advises_doctor,
    crisis_model,
    loggable,
    red_flags_in,
    training_files,
    triage,
)
from bot.safety.language import (
    CRISIS_PREFACES,
    LANGUAGE_NAMES,
    LANGUAGE_NOTICES,
    crisis_text,
    detect_language,
    language_notice,
)
from bot.safety.layer import SafetyLayer
from bot.safety.policy import combine
from bot.safety.remote import LayerVerdict, SafetyClassifier
from bot.safety.rules import INJECTION_GUARD, crisis_rule_hits, injection_hits
from bot.safety.scope import BOUNDARY, DoseRange, SafetyPolicy, out_of_scope, policy_for
from bot.safety.verdict import Triage

__all__ = [
    "BOUNDARY",
    "CRISIS_PREFACES",
    "DEFAULT_THRESHOLD",
    "DoseRange",
    "INJECTION_GUARD",
    "LANGUAGE_NAMES",
    "LANGUAGE_NOTICES",
    "LayerVerdict",
    "POSSIBLE_THRESHOLD",
    "SafetyClassifier",
    "SafetyLayer",
    "SafetyPolicy",
    "Triage",
    "advises_doctor",
    "combine",
    "crisis_model",
    "crisis_rule_hits",
    "crisis_text",
    "detect_language",
    "injection_hits",
    "language_notice",
    "loggable",
    "out_of_scope",
    "policy_for",
    "red_flags_in",
    "training_files",
    "triage",
]
