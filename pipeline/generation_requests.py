"""What a generation request sends, and what an HTTP 400 from the generator means.

Why this module exists: frontier models no longer accept one set of parameters. Reasoning
models (GPT-5, the o-series) refuse ``temperature``/``top_p`` and ``max_tokens`` with HTTP 400
and take ``max_completion_tokens``, a budget for their hidden reasoning *and* the reply; other
chat models (gpt-4o, models served by vLLM) take the usual sampling parameters. A 400 can also
mean that structured output is not supported, that the prompt is too long, that it was
flagged, or that the model does not exist. Each of those needs a different answer, so the
reply's message (and, where the server gives them, its ``code`` and ``param``) decides, never
the status alone.

**The rule for parameters** (:class:`RequestParams`):

* A model is a *reasoning model* when its name, after any ``provider/`` prefix, matches one
  of ``generation.reasoning_models`` (shell-style patterns, case-insensitive; default
  ``gpt-5*``, ``o1*``, ``o3*``, ``o4*``). It is sent ``max_completion_tokens`` (and
  ``reasoning_effort`` when set), nothing else. Any other model is sent ``temperature`` and
  ``max_tokens`` as before.
* When the server still answers 400 "unsupported parameter" (or "unsupported value") for a
  parameter that was sent, the request is retried once without it and the parameter stays
  out for the rest of the run: ``max_tokens`` is replaced by ``max_completion_tokens`` (and
  the other way round), any other parameter is dropped. What was changed is listed in the
  run's summary.
* A reasoning model that spends its whole budget on reasoning returns an empty reply cut at
  the budget (``finish_reason`` "length"). The request is asked again once with twice the
  budget, the larger budget is kept for the run (at most ``BUDGET_GROWTH`` times the setting),
  and a reply still empty is rejected as ``reasoning_budget`` with a message saying which
  setting to raise.

**What a 400 means** (:func:`classify_bad_request`), checked in this order:

* ``context_length`` (code ``context_length_exceeded``, "maximum context length", "too many
  tokens" …) and ``content_policy`` (codes ``content_policy_violation``/``content_filter``/
  ``invalid_prompt``, "usage policy", "flagged" …): the run stops with one clear message for
  the operator (``GenerationError``); nothing falls back silently.
* ``structured_output``: the message or ``param`` names ``response_format``/``json_schema``/
  structured output/JSON mode. The run falls back to JSON mode, then to JSON in the text
  (``structured_output = "auto"`` only).
* ``invalid_model`` (code ``model_not_found``, ``param`` "model", "model … does not exist",
  "invalid model" …): the run stops with one clear message, like a 404 for the model.
* ``unsupported_parameter``: code ``unsupported_parameter``/``unsupported_value`` or a message
  such as "Unsupported parameter: 'max_tokens' …", with the parameter taken from ``param`` or
  the first quoted name in the message. Handled as above.
* anything else: the slot fails (``bad_request``), the server's message is logged once, and
  the slot is left for the next run.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

from bot.settings import GenerationSettings

BUDGET_GROWTH = 4  # a reasoning budget is raised at most to this multiple of the setting
SAMPLING_PARAMS = ("temperature", "top_p")
TOKEN_PARAMS = ("max_tokens", "max_completion_tokens")

BAD_REQUEST_KINDS = ("context_length", "content_policy", "invalid_model", "structured_output",
                     "unsupported_parameter", "other")

_CONTEXT_RE = re.compile(
    r"context[_ ]length|maximum context|context window|too many tokens|reduce the length|prompt is too long"
    r"|input is too long|exceeds the model", re.I)
_POLICY_RE = re.compile(
    r"content[_ ](management )?policy|usage polic|content[_ ]filter|safety system|flagged|invalid prompt", re.I)
_MODEL_RE = re.compile(
    r"model[^.]*\b(does not exist|not found|not exist|is not available|unknown)|invalid model|unknown model"
    r"|model_not_found|no such model", re.I)
_STRUCTURED_RE = re.compile(r"response_format|json_schema|json[_ ]object|structured output|json mode|guided_json", re.I)
_UNSUPPORTED_RE = re.compile(
    r"unsupported (parameter|value)|not supported|unrecognized (request )?argument|extra (inputs|fields) are not"
    r" permitted|unknown (parameter|field|argument)|does not support", re.I)
_QUOTED_RE = re.compile(r"['\"`]([A-Za-z_][\w.]*)['\"`]")


def is_reasoning_model(model: str, patterns: list[str] | tuple[str, ...]) -> bool:
    """True when ``model`` (its last ``/``-separated part) matches one of ``patterns``."""
    name = model.rsplit("/", 1)[-1].lower()
    return any(fnmatch.fnmatchcase(name, pattern.lower()) for pattern in patterns)


@dataclass(frozen=True)
class BadRequest:
    """A 400 (or 422) reply, classified: ``kind`` is one of ``BAD_REQUEST_KINDS``."""

    kind: str
    message: str
    param: str | None = None
    code: str | None = None


def error_fields(exc: Any) -> tuple[str, str | None, str | None]:
    """(message, param, code) of an ``openai.APIStatusError`` (OpenAI's and vLLM's error shapes)."""
    body = getattr(exc, "body", None)
    message = ""
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        message = str(inner.get("message") or "")
        param = inner.get("param")
        code = inner.get("code")
    else:
        param = code = None
        if isinstance(body, str):
            message = body
    message = message or str(getattr(exc, "message", "") or exc)
    param = param if param is not None else getattr(exc, "param", None)
    code = code if code is not None else getattr(exc, "code", None)
    return message, (str(param) if param else None), (str(code) if code is not None else None)


def classify_bad_request(message: str, param: str | None = None, code: str | None = None) -> BadRequest:
    """What a 400 means (see the module docstring for the order of the checks)."""
    code_l = (code or "").lower()
    if code_l == "context_length_exceeded" or _CONTEXT_RE.search(message):
        return BadRequest("context_length", message, param, code)
    if code_l in ("content_policy_violation", "content_filter", "invalid_prompt") or _POLICY_RE.search(message):
        return BadRequest("content_policy", message, param, code)
    if (param or "").startswith("response_format") or _STRUCTURED_RE.search(message):
        return BadRequest("structured_output", message, param or "response_format", code)
    if code_l in ("model_not_found", "invalid_model") or param == "model" or _MODEL_RE.search(message):
        return BadRequest("invalid_model", message, param, code)
    if code_l in ("unsupported_parameter", "unsupported_value") or _UNSUPPORTED_RE.search(message):
        name = param
        if not name:
            quoted = _QUOTED_RE.search(message)
            name = quoted.group(1) if quoted else None
        if name:
            return BadRequest("unsupported_parameter", message, name.split(".")[0], code)
    return BadRequest("other", message, param, code)


def operator_message(bad: BadRequest, settings: GenerationSettings) -> str:
    """One clear sentence for the operator about a 400 that stops the run."""
    where = f"{settings.model} at {settings.base_url}"
    if bad.kind == "context_length":
        return (f"the generation request is longer than {where} accepts ({bad.message}); use a model with a "
                "larger context window or a pack with fewer or shorter facts")
    if bad.kind == "content_policy":
        return (f"{where} refused the generation prompt under its content policy ({bad.message}); "
                "check the pack's facts and seeds, or use another generator")
    return f"{where} does not know the model ({bad.message}); check generation.model and generation.base_url"


@dataclass
class RequestParams:
    """The parameters sent with every generation request of one run, and what the run learned."""

    settings: GenerationSettings
    reasoning: bool = False
    budget: int = 0  # max_completion_tokens for reasoning models
    token_param: str = "max_tokens"
    dropped: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def for_settings(cls, settings: GenerationSettings) -> "RequestParams":
        reasoning = is_reasoning_model(settings.model, settings.reasoning_models)
        return cls(settings, reasoning, settings.max_completion_tokens,
                   "max_completion_tokens" if reasoning else "max_tokens")

    def params(self) -> dict[str, Any]:
        s = self.settings
        out: dict[str, Any] = {}
        if self.token_param == "max_completion_tokens":
            out["max_completion_tokens"] = self.budget
        else:
            out["max_tokens"] = s.max_tokens
        if self.reasoning:
            if s.reasoning_effort:
                out["reasoning_effort"] = s.reasoning_effort
        else:
            out["temperature"] = s.temperature
        return {k: v for k, v in out.items() if k not in self.dropped}

    def adapt(self, param: str, sent: dict[str, Any]) -> bool:
        """After "unsupported parameter ``param``": change what is sent from now on. False when
        ``param`` was not sent (or cannot be helped): the caller then treats the 400 as final."""
        if param not in sent:
            return False
        if param == "max_tokens":
            self.token_param = "max_completion_tokens"
            self.budget = max(self.budget, self.settings.max_tokens)
            self.notes.append("the server refused max_tokens: max_completion_tokens sent instead")
        elif param == "max_completion_tokens":
            if self.token_param != "max_completion_tokens":
                return False
            self.token_param = "max_tokens"
            self.dropped.add("max_completion_tokens")
            self.notes.append("the server refused max_completion_tokens: max_tokens sent instead")
        else:
            self.dropped.add(param)
            self.notes.append(f"the server refused {param}: sent without it")
        return True

    @property
    def uses_budget(self) -> bool:
        return self.token_param == "max_completion_tokens"

    def grow_budget(self, used: int) -> bool:
        """After an empty reply cut at the budget: double it (up to ``BUDGET_GROWTH`` times the
        setting). False when it cannot grow any more."""
        limit = self.settings.max_completion_tokens * BUDGET_GROWTH
        if used < self.budget:  # another request already raised it: just retry
            return True
        if self.budget >= limit:
            return False
        self.budget = min(limit, self.budget * 2)
        self.notes.append(f"replies were empty after reasoning: max_completion_tokens raised to {self.budget}")
        return True
