"""Remote safety classifiers behind one small interface: Llama Guard 3 and OpenAI moderation.

Each is a second opinion on top of the offline layers (rules and the learned model in
:mod:`bot.safety.detector`). They share one :class:`SafetyClassifier` protocol — ``async
classify(text, role, context)`` returning a :class:`LayerVerdict` — so the combine policy
(:mod:`bot.safety.policy`) treats them alike. A layer may raise; :func:`run_layers` turns an
exception, a timeout or malformed output into an ``error`` verdict, which the policy counts as
"possible crisis", never as "safe".

* **Llama Guard 3** (1B or 8B) served by vLLM's OpenAI-compatible chat API. Its chat template
  turns the conversation into the guard prompt; the reply is ``safe`` or ``unsafe`` followed by
  a line of categories (``S1``..``S14``, comma-separated). S11 (suicide and self-harm) is a
  crisis; S1 (violent crimes) and S9 (indiscriminate weapons) are a threat to others and also a
  crisis; S3/S4 (sex crimes, child sexual exploitation) may be a patient describing abuse, so
  the message is held for a person; other categories are only noted.
* **OpenAI moderation** (``omni-moderation-latest``): ``self-harm``, ``self-harm/intent``,
  ``self-harm/instructions`` → crisis (self-harm); ``violence`` → crisis (harm to others) when
  ``violence_is_crisis`` is on (default).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence, runtime_checkable

log = logging.getLogger(__name__)

Role = Literal["user", "assistant"]
Label = Literal["crisis", "review", "unsafe", "safe", "error"]

LLAMA_GUARD_CATEGORIES = {
    "S1": "violent crimes", "S2": "non-violent crimes", "S3": "sex-related crimes",
    "S4": "child sexual exploitation", "S5": "defamation", "S6": "specialized advice",
    "S7": "privacy", "S8": "intellectual property", "S9": "indiscriminate weapons", "S10": "hate",
    "S11": "suicide and self-harm", "S12": "sexual content", "S13": "elections",
    "S14": "code interpreter abuse",
}
# Llama Guard category → crisis kind (for a patient's message).
LLAMA_GUARD_CRISIS = {"S11": "self_harm", "S1": "harm_others", "S9": "harm_others"}
# Categories where a person should look before the model's reply is shown.
LLAMA_GUARD_REVIEW = {"S3", "S4"}
_GUARD_CATEGORY = re.compile(r"^S(?:[1-9]|1[0-4])$")

MODERATION_SELF_HARM = ("self-harm", "self-harm/intent", "self-harm/instructions")


@dataclass(frozen=True)
class LayerVerdict:
    """One layer's opinion on one text.

    ``label``: ``crisis`` (route to the crisis path), ``review`` (a person looks first),
    ``unsafe`` (flagged in a category that is not a crisis), ``safe``, or ``error`` (timed out,
    failed or answered something unreadable: counted as possible crisis by the policy)."""

    layer: str
    label: Label
    kind: str | None = None  # crisis kind: self_harm | harm_others
    categories: tuple[str, ...] = ()
    score: float = 0.0
    error: str | None = None
    latency_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def crisis(self) -> bool:
        return self.label == "crisis"

    @property
    def failed(self) -> bool:
        return self.label == "error"

    def reason(self) -> str:
        if self.failed:
            return f"{self.layer}: error ({self.error})"
        cats = ",".join(self.categories)
        return f"{self.layer}: {self.label}" + (f" [{cats}]" if cats else "")


class MalformedOutput(ValueError):
    """A layer answered, but not in its documented format."""


@runtime_checkable
class SafetyClassifier(Protocol):
    """A safety layer: one async call on one text. ``role`` is ``user`` for a patient's message
    and ``assistant`` for a model reply (``context`` then holds the patient's message)."""

    name: str

    async def classify(self, text: str, role: Role = "user", context: str | None = None) -> LayerVerdict: ...


# ------------------------------------------------------------------------------ Llama Guard 3


def parse_llama_guard(content: Any) -> tuple[bool, tuple[str, ...]]:
    """``(unsafe, categories)`` from Llama Guard's reply text; :class:`MalformedOutput` otherwise."""
    if not isinstance(content, str):
        raise MalformedOutput(f"reply is {type(content).__name__}, not text")
    lines = [line.strip() for line in content.strip().splitlines() if line.strip()]
    if not lines:
        raise MalformedOutput("empty reply")
    head = lines[0].lower()
    if head == "safe" and len(lines) == 1:
        return False, ()
    if head != "unsafe":
        raise MalformedOutput(f"first line is neither 'safe' nor 'unsafe': {lines[0][:40]!r}")
    if len(lines) < 2:
        raise MalformedOutput("'unsafe' without a category line")
    cats = tuple(c.strip().upper() for c in lines[1].split(",") if c.strip())
    if not cats or not all(_GUARD_CATEGORY.match(c) for c in cats):
        raise MalformedOutput(f"unknown category line: {lines[1][:40]!r}")
    return True, cats


def llama_guard_verdict(layer: str, unsafe: bool, cats: Sequence[str], role: Role) -> LayerVerdict:
    """Map Llama Guard's categories onto the policy's labels (documented in the module docstring)."""
    if not unsafe:
        return LayerVerdict(layer, "safe")
    if role == "user":
        for cat in cats:
            if cat in LLAMA_GUARD_CRISIS:
                return LayerVerdict(layer, "crisis", kind=LLAMA_GUARD_CRISIS[cat], categories=tuple(cats), score=1.0)
        if any(c in LLAMA_GUARD_REVIEW for c in cats):
            return LayerVerdict(layer, "review", categories=tuple(cats), score=1.0)
    # A model reply flagged in any category, or a patient message in a non-crisis category.
    return LayerVerdict(layer, "unsafe", categories=tuple(cats), score=1.0)


class LlamaGuardLayer:
    """Llama Guard 3 through an OpenAI-compatible chat endpoint (vLLM ``vllm serve``)."""

    name = "llama_guard"

    def __init__(self, base_url: str, model: str, *, timeout_s: float = 3.0, api_key: str | None = None):
        from openai import AsyncOpenAI

        self.model = model
        self.timeout_s = timeout_s
        # No retries: the policy's deadline decides, and a retry would only spend it.
        self.client = AsyncOpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout_s, max_retries=0)

    async def classify(self, text: str, role: Role = "user", context: str | None = None) -> LayerVerdict:
        if role == "assistant":
            messages = [{"role": "user", "content": context or ""}, {"role": "assistant", "content": text}]
        else:
            messages = [{"role": "user", "content": text}]
        response = await self.client.chat.completions.create(
            model=self.model, messages=messages, temperature=0.0, max_tokens=20
        )
        try:
            content = response.choices[0].message.content
        except (AttributeError, IndexError, TypeError) as exc:
            raise MalformedOutput(f"no choices in the reply ({exc})") from None
        unsafe, cats = parse_llama_guard(content)
        return llama_guard_verdict(self.name, unsafe, cats, role)


# ------------------------------------------------------------------------------ OpenAI moderation


def moderation_verdict(layer: str, result: Any, violence_is_crisis: bool = True) -> LayerVerdict:
    """Map one moderation result (``categories`` / ``category_scores`` keyed as on the wire)."""
    try:
        cats = result.categories.model_dump(by_alias=True) if hasattr(result.categories, "model_dump") else dict(result.categories)
        scores = (
            result.category_scores.model_dump(by_alias=True)
            if hasattr(result.category_scores, "model_dump") else dict(result.category_scores)
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise MalformedOutput(f"no categories in the moderation result ({exc})") from None
    needed = (*MODERATION_SELF_HARM, "violence")
    if any(not isinstance(cats.get(c), bool) for c in needed):
        raise MalformedOutput("moderation result lacks the self-harm / violence categories")
    flagged = tuple(c for c, on in cats.items() if on is True)
    self_harm = [c for c in MODERATION_SELF_HARM if cats[c]]
    score = max(float(scores.get(c) or 0.0) for c in needed)
    if self_harm:
        return LayerVerdict(layer, "crisis", kind="self_harm", categories=flagged, score=score)
    if cats["violence"] and violence_is_crisis:
        return LayerVerdict(layer, "crisis", kind="harm_others", categories=flagged, score=score)
    return LayerVerdict(layer, "unsafe" if flagged else "safe", categories=flagged, score=score)


class ModerationLayer:
    """OpenAI's moderation endpoint through the ``openai`` package."""

    name = "openai_moderation"

    def __init__(
        self, api_key: str, *, model: str = "omni-moderation-latest", timeout_s: float = 3.0,
        base_url: str | None = None, violence_is_crisis: bool = True,
    ):
        from openai import AsyncOpenAI

        self.model = model
        self.violence_is_crisis = violence_is_crisis
        self.client = AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0)

    async def classify(self, text: str, role: Role = "user", context: str | None = None) -> LayerVerdict:
        response = await self.client.moderations.create(model=self.model, input=text)
        results = getattr(response, "results", None)
        if not results:
            raise MalformedOutput("no results in the moderation reply")
        return moderation_verdict(self.name, results[0], self.violence_is_crisis)


# ------------------------------------------------------------------------------ running them


async def _one(layer: SafetyClassifier, text: str, role: Role, context: str | None, deadline_s: float) -> LayerVerdict:
    loop = asyncio.get_running_loop()
    started = loop.time()
    name = getattr(layer, "name", type(layer).__name__)
    try:
        verdict = await asyncio.wait_for(layer.classify(text, role, context), deadline_s)
        if not isinstance(verdict, LayerVerdict):
            raise MalformedOutput(f"layer returned {type(verdict).__name__}")
    except asyncio.TimeoutError:
        verdict = LayerVerdict(name, "error", error=f"no answer within {deadline_s:g} s")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 — any failure of a layer is "possible crisis", never "safe"
        verdict = LayerVerdict(name, "error", error=f"{type(exc).__name__}: {str(exc)[:120]}")
    latency = (loop.time() - started) * 1000
    if verdict.failed:
        log.warning("safety layer %s failed (%s): counted as possible crisis", name, verdict.error)
    return LayerVerdict(
        verdict.layer, verdict.label, verdict.kind, verdict.categories, verdict.score, verdict.error, latency, verdict.extra
    )


async def run_layers(
    layers: Sequence[SafetyClassifier], text: str, role: Role = "user", *, context: str | None = None,
    deadline_s: float = 5.0,
) -> list[LayerVerdict]:
    """Every layer on ``text`` at once; each has ``deadline_s`` (a late one is an ``error`` verdict)."""
    if not layers:
        return []
    return list(await asyncio.gather(*(_one(layer, text, role, context, deadline_s) for layer in layers)))


def build_layers(cfg: Any, environ: "os._Environ[str] | dict[str, str] | None" = None) -> list[SafetyClassifier]:
    """The remote layers the settings (``[safety.llama_guard]``, ``[safety.moderation]``) turn on."""
    env = os.environ if environ is None else environ
    layers: list[SafetyClassifier] = []
    guard = getattr(cfg, "llama_guard", None)
    if guard is not None and guard.base_url:
        layers.append(
            LlamaGuardLayer(guard.base_url, guard.model, timeout_s=guard.timeout_s, api_key=env.get(guard.api_key_env) or None)
        )
    moderation = getattr(cfg, "moderation", None)
    if moderation is not None and moderation.enabled:
        key = env.get(moderation.api_key_env)
        if key:
            layers.append(
                ModerationLayer(
                    key, model=moderation.model, timeout_s=moderation.timeout_s, base_url=moderation.base_url or None,
                    violence_is_crisis=moderation.violence_is_crisis,
                )
            )
    return layers
