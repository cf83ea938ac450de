"""Synthetic vignette generation (``llm4sweat generate``).

A frontier model behind any OpenAI-compatible endpoint writes patient vignettes from the
condition pack: one vignette per request, each a patient's message in their own voice and a
reference reply, tied to the pack's facts. Nothing it returns is trusted.

**The plan.** :func:`build_plan` spreads the vignettes over task × site × severity (HDSS
1-4) × age band × primary/secondary, so the set is not dominated by the most common case
(the "mode collapse" the LLM4Sweat paper warns about), and over the pack's facts: the k-th
slot of a task must use fact k (mod the task's number of facts, in a fixed shuffled order,
:func:`plan_facts`), so every fact gets its share of vignettes in every prefix of the plan. Sites come from the pack's seeds
(``[generation] sites`` in ``pack.toml`` overrides), and only (site, kind) pairs the seeds use
are planned (no "primary generalized"). Slots are picked greedily so that every prefix of
the plan is balanced on each dimension (counts of its values differ by at most two), then
covers combinations before repeating them, then spreads pairs of dimensions; a plan of N
slots is a prefix of any longer plan. Each slot has a deterministic key
(``pack/task/site/hdssN/band/kind/#k``, k counting earlier slots of the same combination)
stored with the example (``dataset_examples.plan_key``), so a re-run after a crash or
Ctrl-C skips every slot already stored and continues where it stopped, and ``--count`` can
grow a dataset without regenerating it.

**A request** sends a constant system message (instructions, every pack fact with its id, the
red flags: a long prefix that servers can cache) and a short user message with the slot as a
JSON block and a seed as a style example. Structured output (``response_format`` with a JSON
schema) is used where the server supports it: with ``structured_output = "auto"`` a server
that refuses it is asked again in JSON mode, then with the prompt alone. The reply is
validated with pydantic either way.

**Rejected and counted, never stored** (reason in brackets): a model refusal or a reply
stopped by the server's content filter (``refused``); a reply cut off at the token limit
(``truncated``); an empty reply of a reasoning model that spent its whole budget on reasoning,
even after the budget was raised (``reasoning_budget``); a reply that is not JSON
(``invalid_json``) or not the schema (``invalid_schema``); a vignette for another slot than
asked (``off_plan``); one citing no fact (``no_facts``), an id the pack does not have
(``unknown_fact``) or not the plan's fact (``fact_missing``); an answer that cites a fact it
does not put into words (``fact_not_used``) or states a number the fact contradicts
(``fact_contradicted``; both rules in ``pipeline.fact_check``); one contradicting the red-flag rules: a secondary profile, or a patient
message showing a red flag, whose reply does not send the patient to a doctor
(``red_flag_no_doctor``), a "primary" patient whose message shows a red flag or whose onset
was at 25 or later, or a "secondary" one whose message shows none (``kind_mismatch``); a patient message
with personal identifiers (``personal_details``); one whose question or answer contains an
evaluation question or one of its long options, light edits included (``eval_leak``, the
dataset's guard: ``pipeline.packs.find_eval_leaks``). A vignette whose question is nearly a
stored or seed question, or whose answer is nearly a stored or seed answer (datasketch
MinHash LSH over character shingles, confirmed by the exact Jaccard against
``near_duplicate_threshold``), and exact duplicates are counted as ``duplicates``. A rejected slot is asked again up to
``attempts_per_slot`` times per run.

**Usage.** Settings live in ``[generation]`` (``base_url``, ``model``, ``concurrency``,
``timeout_s``, ``max_retries``, ``temperature``, ``max_tokens``, ``reasoning_models``,
``max_completion_tokens``, ``reasoning_effort``, ``structured_output``, ``attempts_per_slot``,
``near_duplicate_threshold``); the key only in the environment::

    export LLM4SWEAT_GENERATION__API_KEY=sk-...              # any OpenAI-compatible endpoint
    export LLM4SWEAT_GENERATION__BASE_URL=https://api.openai.com/v1 LLM4SWEAT_GENERATION__MODEL=gpt-5
    llm4sweat generate --count 600 --dry-run                 # the plan's balance, no API calls
    llm4sweat generate --count 600 --concurrency 8           # Ctrl-C any time; run again to continue
    llm4sweat dataset stats && llm4sweat dataset export train.jsonl

To try it without a model: ``python -m tests.openai_fake --port 8099 --delay 0.2`` serves
valid vignettes (``--reasoning`` makes it answer like GPT-5), and
``LLM4SWEAT_GENERATION__BASE_URL=http://127.0.0.1:8099/v1`` points at it.

**Transport.** ``concurrency`` requests at once (workers sharing a queue); the openai client
retries 408/409/429/5xx, connection errors and timeouts with exponential backoff, honouring
``Retry-After`` (``max_retries``), each attempt limited to ``timeout_s``. A request that still
fails is counted under ``failed`` and its slot is left for the next run. A wrong key, an
unknown model or a missing endpoint stops the run at once (:class:`GenerationError`).

**Parameters and 400s** (``pipeline.generation_requests``): reasoning models (GPT-5, the
o-series, any name matching ``reasoning_models``) are sent ``max_completion_tokens`` and no
sampling parameters, other models ``temperature`` and ``max_tokens``; a parameter the server
still calls unsupported is left out (or swapped for its counterpart) for the rest of the run,
and the summary says so. A 400 is told apart by its message: structured output refused → the
next format; context length, content policy or unknown model → the run stops with one clear
message; anything else fails the slot (``bad_request``).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.settings import GenerationSettings
from bot.storage import Database
from pipeline import dataset
from pipeline.dataset import AGE_BANDS, age_band
from pipeline.fact_check import FactChecker
from pipeline.generation_requests import RequestParams, classify_bad_request, error_fields, operator_message
from pipeline.packs import DOCTOR_ADVICE_RE, ConditionPack, Profile, jaccard, shingles
from pipeline.privacy import scrub

log = logging.getLogger(__name__)

# Bump when the prompt templates or the schema change: stored with every synthetic example.
PROMPT_VERSION = "vignette-v2"

PLAN_AGE_BANDS = ("teen", "young_adult", "adult", "older_adult")
SEVERITIES = (1, 2, 3, 4)
KINDS = ("primary", "secondary")
PRIMARY_ONSET_LIMIT = 25  # primary focal hyperhidrosis starts before 25

REJECT_REASONS = (
    "refused",
    "truncated",
    "reasoning_budget",
    "invalid_json",
    "invalid_schema",
    "off_plan",
    "no_facts",
    "unknown_fact",
    "fact_missing",
    "fact_not_used",
    "fact_contradicted",
    "red_flag_no_doctor",
    "kind_mismatch",
    "personal_details",
    "eval_leak",
)

TASK_HINTS = {
    "diagnosis": "the patient wonders whether what they have is hyperhidrosis, how it is recognised, "
    "how bad it is, or whether something else could be behind it",
    "treatment": "the patient asks what can be done, about a specific option, its side effects, "
    "or what to try next after something did not work",
    "psychological_support": "the patient describes how the sweating affects their feelings, "
    "confidence, relationships, school or work, and needs support and coping ideas",
}

# Everyday situations and ways of writing, to keep vignettes varied (chosen per slot).
SITUATIONS = (
    "exams and handwriting at school or university",
    "a new office job with a lot of handshakes",
    "a trade or manual job that needs a firm grip on tools",
    "playing a musical instrument",
    "sport, climbing or the gym",
    "dating and being close to someone",
    "looking after a baby or small children",
    "giving presentations or speaking in meetings",
    "phones, touchscreens and laptops that stop working under wet fingers",
    "driving and holding the steering wheel",
    "choosing clothes and colours that hide marks",
    "an upcoming wedding or big family event",
    "a job in a kitchen, shop or hospital ward",
    "drawing, painting or paperwork that gets smudged",
    "hot weather, travel and holidays",
    "gaming and typing for hours",
)
STYLES = (
    "short and a little worried",
    "a longer message that tells the whole story",
    "asks about one option by name",
    "sceptical, because earlier attempts did not help",
    "embarrassed and apologetic about asking",
    "practical and straight to the point",
    "frustrated and tired of the problem",
    "hopeful, has read a little about it online",
)

Failure = Literal["timeout", "rate_limited", "server_error", "connection", "bad_request", "api_error"]


class GenerationError(RuntimeError):
    """Generation cannot go on (bad key, unknown model, no endpoint); the message says why."""

    def __init__(self, message: str, summary: "GenerationSummary | None" = None) -> None:
        super().__init__(message)
        self.summary = summary


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Slot:
    """One vignette to write: a point of the plan and its deterministic key."""

    key: str
    task: str
    site: str
    hdss: int
    age_band: str
    kind: str
    occurrence: int
    fact: str | None = None  # the pack fact this vignette's reply must use (balanced per task)

    def _pick(self, salt: str, n: int) -> int:
        return int.from_bytes(hashlib.sha256(f"{self.key}|{salt}".encode()).digest()[:8], "big") % n

    @property
    def age(self) -> int:
        low, high = AGE_BANDS[self.age_band]
        return low + self._pick("age", high - low + 1)

    @property
    def sex(self) -> str:
        return ("female", "male")[self._pick("sex", 2)]

    @property
    def situation(self) -> str:
        return SITUATIONS[self._pick("situation", len(SITUATIONS))]

    @property
    def style(self) -> str:
        return STYLES[self._pick("style", len(STYLES))]

    def spec(self, pack: ConditionPack, variant: int = 0) -> dict[str, Any]:
        """What the user message asks for, as JSON-ready data."""
        low, high = AGE_BANDS[self.age_band]
        spec: dict[str, Any] = {
            "task": self.task,
            "kind": self.kind,
            "site": self.site,
            "hdss": self.hdss,
            "age": self.age,
            "age_range": [low, high],
            "sex": self.sex,
            "situation": self.situation,
            "style": self.style,
        }
        if self.kind == "secondary" and pack.red_flags:
            flag = pack.red_flags[self._pick("flag", len(pack.red_flags))]
            spec["warning_sign"] = flag.name
        if self.fact is not None:
            spec["fact"] = self.fact
        if variant:
            spec["variant"] = variant
        return spec


def plan_sites(pack: ConditionPack) -> tuple[list[str], set[tuple[str, str]]]:
    """The sites to plan over and the allowed (site, kind) pairs, from ``pack.toml``
    ``[generation] sites`` or else the pack's seeds."""
    extra = (pack.meta.model_extra or {}).get("generation", {})
    seen = {(site, seed.profile.kind) for seed in pack.seeds for site in seed.profile.sites}
    sites = list(extra.get("sites") or sorted({site for site, _ in seen}))
    if not sites:
        raise GenerationError(f"pack {pack.name!r} names no sites (no seeds and no [generation] sites)")
    allowed = {(s, k) for s in sites for k in KINDS if (s, k) in seen}
    # A site the seeds never show for one kind is still allowed for it, unless the seeds show
    # it only for the other kind (hyperhidrosis: "generalized" appears only in secondary seeds).
    for site in sites:
        kinds = {k for s, k in seen if s == site}
        if not kinds:
            allowed |= {(site, k) for k in KINDS}
        elif kinds == {"primary"}:
            allowed.add((site, "secondary"))
    return sites, allowed


def _stable_rank(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


_ORDER_CACHE: dict[Any, list[tuple[tuple[Any, ...], int]]] = {}


def _ordering(dims: tuple[tuple[str, tuple[Any, ...]], ...], allowed: frozenset[tuple[Any, ...]],
              count: int) -> list[tuple[tuple[Any, ...], int]]:
    """The first ``count`` picks of the balanced sequence: ``(combination, occurrence)``.

    Greedy and online, so a longer sequence extends a shorter one. Each pick minimises, in
    order: how often its values have been used so far (each dimension weighted by its number
    of values, i.e. relative to its fair share), how often the combination itself has been
    used, and how often its pairs of values have been used; ties go to a fixed pseudo-random
    order of the combinations. The result: every prefix is balanced on each dimension, and
    combinations are covered before they repeat wherever the marginals allow."""
    import numpy as np

    key = (dims, allowed)
    cached = _ORDER_CACHE.get(key)
    if cached is not None and len(cached) >= count:
        return cached[:count]
    target = max(count, 2 * len(cached or ()), 64)
    values = [vals for _, vals in dims]
    sizes = [len(v) for v in values]
    combos = [c for c in itertools.product(*values) if c in allowed]
    combos.sort(key=lambda c: _stable_rank("/".join(map(str, c))))
    if not combos:
        return []
    table = np.array([[values[d].index(c[d]) for d in range(len(dims))] for c in combos])
    single = [np.zeros(n, dtype=np.int64) for n in sizes]
    pairs = list(itertools.combinations(range(len(dims)), 2))
    double = {p: np.zeros((sizes[p[0]], sizes[p[1]]), dtype=np.int64) for p in pairs}
    uses = np.zeros(len(combos), dtype=np.int64)
    rank = np.arange(len(combos))
    order: list[tuple[tuple[Any, ...], int]] = []
    for _ in range(target):
        marginal = sum(single[d][table[:, d]] * sizes[d] for d in range(len(dims)))
        joint = sum(double[(a, b)][table[:, a], table[:, b]] * sizes[a] * sizes[b] for a, b in pairs)
        i = int(np.lexsort((rank, joint, uses, marginal))[0])  # last key sorts first
        order.append((combos[i], int(uses[i])))
        uses[i] += 1
        for d in range(len(dims)):
            single[d][table[i, d]] += 1
        for a, b in pairs:
            double[(a, b)][table[i, a], table[i, b]] += 1
    _ORDER_CACHE[key] = order
    return order[:count]


def build_plan(
    pack: ConditionPack,
    count: int,
    *,
    tasks: Sequence[str] | None = None,
    sites: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    age_bands: Sequence[str] = PLAN_AGE_BANDS,
    kinds: Sequence[str] = KINDS,
) -> list[Slot]:
    """The first ``count`` slots of the balanced plan (deterministic: the plan for N is a
    prefix of the plan for any larger N, so keys stay the same when a dataset grows)."""
    if count < 0:
        raise ValueError("count must be >= 0")
    pack_sites, allowed_pairs = plan_sites(pack)
    tasks = tuple(tasks or pack.tasks)
    sites = tuple(sites or pack_sites)
    for band in age_bands:
        if band not in AGE_BANDS:
            raise ValueError(f"unknown age band {band!r}; expected one of {list(AGE_BANDS)}")
    dims = (("task", tasks), ("site", sites), ("hdss", tuple(severities)), ("age_band", tuple(age_bands)),
            ("kind", tuple(kinds)))
    allowed = frozenset(
        c for c in itertools.product(*(v for _, v in dims)) if (c[1], c[4]) in allowed_pairs or c[1] not in pack_sites
    )
    if not allowed:
        raise GenerationError("the plan has no allowed combination")
    slots = []
    facts = plan_facts(pack, tasks)
    seen: Counter[str] = Counter()
    for (task, site, hdss, band, kind), occurrence in _ordering(dims, allowed, count):
        key = f"{pack.name}/{task}/{site}/hdss{hdss}/{band}/{kind}/#{occurrence}"
        fact = facts[task][seen[task] % len(facts[task])] if facts.get(task) else None
        seen[task] += 1
        slots.append(Slot(key, task, site, hdss, band, kind, occurrence, fact))
    return slots


def plan_facts(pack: ConditionPack, tasks: Sequence[str]) -> dict[str, list[str]]:
    """Per task, the order in which its facts are handed to the task's slots: a fixed
    pseudo-random order (so neighbouring facts such as HDSS 1 … 4 are spread out), repeated.
    The k-th slot of a task in the plan gets fact ``k mod n``; every prefix of the plan
    therefore gives each fact of a task its share (counts differ by at most one), and the fact
    of a slot never changes when the plan grows."""
    return {task: sorted((f.id for f in pack.facts_for(task)), key=lambda fid: _stable_rank(f"{pack.name}|{fid}"))
            for task in tasks}


def plan_balance(slots: Sequence[Slot]) -> dict[str, dict[str, int]]:
    """Counts per value of each plan dimension (``fact``: slots per fact id)."""
    out: dict[str, Counter[str]] = {d: Counter() for d in ("task", "site", "hdss", "age_band", "kind", "fact")}
    for s in slots:
        out["task"][s.task] += 1
        out["site"][s.site] += 1
        out["hdss"][f"HDSS {s.hdss}"] += 1
        out["age_band"][s.age_band] += 1
        out["kind"][s.kind] += 1
        if s.fact is not None:
            out["fact"][s.fact] += 1
    return {d: dict(sorted(c.items())) for d, c in out.items()}


# ---------------------------------------------------------------------------------------------
# The vignette: schema and checks


class Vignette(BaseModel):
    """One generated vignette as the model must return it."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    task: str
    profile: Profile
    question: str = Field(min_length=15, max_length=3000)
    answer: str = Field(min_length=30, max_length=5000)
    fact_ids: list[str]


def vignette_json_schema(pack: ConditionPack) -> dict[str, Any]:
    """The JSON schema sent as structured output (strict: every key required, no extras)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "task": {"type": "string", "enum": pack.tasks},
            "profile": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "age": {"type": "integer", "description": "age in years"},
                    "sex": {"type": "string", "enum": ["female", "male", "other", "unknown"]},
                    "sites": {"type": "array", "items": {"type": "string"}, "description": "affected body sites"},
                    "hdss": {"type": "integer", "enum": [1, 2, 3, 4], "description": "severity, 1 to 4"},
                    "onset_age": {"type": ["integer", "null"], "description": "age when it started"},
                    "family_history": {"type": ["boolean", "null"]},
                    "kind": {"type": "string", "enum": list(KINDS)},
                },
                "required": ["age", "sex", "sites", "hdss", "onset_age", "family_history", "kind"],
            },
            "question": {"type": "string", "description": "the patient's message, in their own words"},
            "answer": {"type": "string", "description": "the reference reply"},
            "fact_ids": {
                "type": "array",
                "items": {"type": "string", "enum": [f.id for f in pack.facts]},
                "description": "ids of the knowledge facts the reply relies on",
            },
        },
        "required": ["task", "profile", "question", "answer", "fact_ids"],
    }


_FENCE_RE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def parse_vignette(content: str | None) -> tuple[Vignette | None, str | None]:
    """``(vignette, None)`` or ``(None, reason)`` for a model reply (code fences tolerated)."""
    text = (content or "").strip()
    fenced = _FENCE_RE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None, "invalid_json"
    if not isinstance(data, dict):
        return None, "invalid_schema"
    try:
        return Vignette.model_validate(data), None
    except ValidationError:
        return None, "invalid_schema"


def check_vignette(vignette: Vignette, slot: Slot, pack: ConditionPack, flags: list[Any] | None = None,
                   facts: FactChecker | None = None) -> str | None:
    """Why the vignette cannot be used for ``slot`` (a ``REJECT_REASONS`` entry), or None.
    ``flags``: the red flags of the question, when already computed; ``facts``: the pack's
    :class:`~pipeline.fact_check.FactChecker`, when already built."""
    p = vignette.profile
    if (vignette.task != slot.task or p.kind != slot.kind or p.hdss != slot.hdss
            or slot.site not in p.sites or age_band(p.age) != slot.age_band):
        return "off_plan"
    if not vignette.fact_ids:
        return "no_facts"
    known = {f.id for f in pack.facts}
    if any(fid not in known for fid in vignette.fact_ids):
        return "unknown_fact"
    if slot.fact is not None and slot.fact not in vignette.fact_ids:
        return "fact_missing"
    if flags is None:
        flags = pack.find_red_flags(vignette.question)
    if (flags or p.kind == "secondary") and not DOCTOR_ADVICE_RE.search(vignette.answer):
        return "red_flag_no_doctor"
    if p.kind == "primary" and (flags or (p.onset_age is not None and p.onset_age >= PRIMARY_ONSET_LIMIT)):
        return "kind_mismatch"
    if p.kind == "secondary" and not flags:
        return "kind_mismatch"
    if scrub(vignette.question) != vignette.question:
        return "personal_details"
    problem = (facts or fact_checker(pack)).check(vignette.answer, vignette.fact_ids,
                                                    patient_ages=[p.age, p.onset_age])
    if problem is not None:
        log.debug("vignette for %s: %s %s: %s", slot.key, problem.reason, problem.fact_id, problem.detail)
        return problem.reason
    # eval_leak is decided by the dataset's own guard when the vignette is stored.
    return None


_CHECKERS: dict[str, FactChecker] = {}


def fact_checker(pack: ConditionPack) -> FactChecker:
    """The pack's fact checker, built once per pack version."""
    key = pack.fingerprint()
    if key not in _CHECKERS:
        _CHECKERS[key] = FactChecker(pack.facts)
    return _CHECKERS[key]


# ---------------------------------------------------------------------------------------------
# Near-duplicates


class NearDuplicates:
    """Patient questions and reference answers seen so far, for near-duplicate checks.

    A vignette is a near-duplicate when its question is nearly a stored (or seed) question, or
    its answer nearly a stored answer: the two texts' sets of character shingles (the same
    shingles as the pack's leak check) have a Jaccard similarity of at least ``threshold``.
    Candidates come from MinHash LSH (``datasketch``: 128 permutations, an LSH threshold 0.15
    below ``threshold`` and weighted towards recall, so a pair at ``threshold`` is almost never
    missed); each candidate is confirmed with the exact Jaccard of the shingle sets.
    Deterministic (fixed seed), and no pairwise comparison with every stored text."""

    NUM_PERM = 128
    KINDS = ("question", "answer")

    def __init__(self, threshold: float) -> None:
        from datasketch import MinHashLSH

        self.threshold = threshold
        lsh_threshold = max(0.1, threshold - 0.15)
        self.lsh = {kind: MinHashLSH(threshold=lsh_threshold, num_perm=self.NUM_PERM, weights=(0.2, 0.8))
                    for kind in self.KINDS}
        self.grams: dict[str, dict[str, set[str]]] = {kind: {} for kind in self.KINDS}

    def signature(self, grams: set[str]) -> Any:
        from datasketch import MinHash

        sig = MinHash(num_perm=self.NUM_PERM, seed=1)
        sig.update_batch([g.encode("utf-8") for g in grams or {""}])
        return sig

    def similarity(self, a: str, b: str) -> float:
        """Estimated (MinHash) Jaccard similarity of two texts' shingle sets."""
        return float(self.signature(shingles(a)).jaccard(self.signature(shingles(b))))

    def match(self, text: str, kind: str = "question") -> tuple[str | None, Any]:
        """The key of a stored near-duplicate of ``text`` among ``kind`` texts (or None), and
        what :meth:`add` needs to store ``text`` without hashing it again."""
        grams = shingles(text)
        sig = self.signature(grams)
        stored = self.grams[kind]
        for key in sorted(self.lsh[kind].query(sig)):
            if jaccard(grams, stored[key]) >= self.threshold:
                return key, (grams, sig)
        return None, (grams, sig)

    def add(self, key: str, text: str, kind: str = "question", prepared: Any = None) -> None:
        if not text or key in self.grams[kind]:
            return
        grams, sig = prepared if prepared is not None else (shingles(text), None)
        self.grams[kind][key] = grams
        self.lsh[kind].insert(key, sig if sig is not None else self.signature(grams))

    def check_and_add(self, key: str, question: str, answer: str = "") -> tuple[str, str] | None:
        """Atomically (no await inside): ``(kind, key of the near-duplicate)``, or None after
        adding both texts under ``key``."""
        found_q, prep_q = self.match(question, "question")
        if found_q is not None:
            return "question", found_q
        prep_a = None
        if answer:
            found_a, prep_a = self.match(answer, "answer")
            if found_a is not None:
                return "answer", found_a
        self.add(key, question, "question", prep_q)
        if answer:
            self.add(key, answer, "answer", prep_a)
        return None

    def remove(self, key: str) -> None:
        for kind in self.KINDS:
            if self.grams[kind].pop(key, None) is not None:
                self.lsh[kind].remove(key)

    def __len__(self) -> int:
        return len(self.grams["question"])

    @classmethod
    async def from_dataset(cls, db: Database, pack: ConditionPack, threshold: float) -> "NearDuplicates":
        index = cls(threshold)
        for seed in pack.seeds:
            index.add(f"seed:{seed.id}", seed.question, "question")
            index.add(f"seed:{seed.id}", seed.answer, "answer")
        for item in await dataset.examples(db):
            user = next((m["content"] for m in item["messages"] if m["role"] == "user"), "")
            reply = next((m["content"] for m in reversed(item["messages"]) if m["role"] == "assistant"), "")
            index.add(f"example:{item['id']}", user, "question")
            index.add(f"example:{item['id']}", reply, "answer")
        return index


# ---------------------------------------------------------------------------------------------
# Prompts (written for this project)


def system_prompt(pack: ConditionPack, with_schema: bool) -> str:
    """The constant part of every request: instructions, the pack's facts and red flags."""
    facts = []
    for task in pack.tasks:
        facts.append(f"### {task}")
        facts.extend(f"[{f.id}] {f.text}" for f in pack.facts_for(task))
    flags = [f"- {flag.name}: {flag.description} What to tell the patient: {flag.advice}" for flag in pack.red_flags]
    tasks = "\n".join(f"- {t}: {TASK_HINTS.get(t, 'questions about ' + t.replace('_', ' '))}" for t in pack.tasks)
    schema = ""
    if with_schema:
        schema = (
            "\n\nReply with one JSON object and nothing else, with exactly these keys:\n"
            '{"task": "<the task>", "profile": {"age": <int>, "sex": "female|male|other|unknown", '
            '"sites": ["<site>", ...], "hdss": <1-4>, "onset_age": <int or null>, "family_history": <true, false or null>, '
            '"kind": "primary|secondary"}, "question": "<the patient\'s message>", "answer": "<the reply>", '
            '"fact_ids": ["<fact id>", ...]}'
        )
    return f"""You write training examples for an AI assistant that supports people living with {pack.title}.
Each request describes one patient (the plan). Write ONE realistic vignette for it: the message
that patient might send, and the reply a careful, kind assistant should give.

The patient's message:
- first person, everyday words, one to six sentences, in the style the plan asks for;
- consistent with every field of the plan: task, age, sex, the body site, the severity (HDSS
  1 = never noticeable and never interferes, 2 = tolerable and sometimes interferes,
  3 = barely tolerable and often interferes, 4 = intolerable and always interferes), and
  primary or secondary;
- "primary": a story that fits primary focal sweating (usually started before 25, both sides,
  not at night) and mentions none of the warning signs below;
- "secondary": the message must clearly show the warning sign named in the plan (or another
  from the list if that one cannot fit), described the way a patient would put it;
- no names, contact details, addresses, exact dates or other identifying details.

The reply:
- warm and plain; acknowledge the feeling first; at most about 150 words; end with a concrete
  next step;
- rely only on the knowledge below; it must use the fact whose id the plan names ("fact"),
  saying what that fact says in plain words (keep its numbers exactly as they are);
- list in fact_ids the ids of the facts the reply actually uses, the plan's fact first (only
  ids that appear below; never cite a fact the reply does not put into words);
- never claims to be a doctor, gives no doses or schedules, and does not diagnose;
- when the profile is secondary or the message shows a warning sign, it says clearly that a
  doctor should check this and how soon.

Tasks:
{tasks}

Warning signs (red flags):
{chr(10).join(flags)}

Knowledge (cite by id):
{chr(10).join(facts)}

The profile you return must repeat the plan: the same task, kind and severity, an age in the
plan's range, and the plan's site among the sites.{schema}"""


def user_prompt(pack: ConditionPack, slot: Slot, variant: int = 0) -> str:
    """The slot-specific part: the plan as JSON and one seed of the same task as a style example."""
    spec = json.dumps(slot.spec(pack, variant), ensure_ascii=False)
    same = [s for s in pack.seeds if s.task == slot.task and s.profile.kind == slot.kind] or \
        [s for s in pack.seeds if s.task == slot.task]
    example = ""
    if same:
        seed = same[slot._pick(f"seed{variant}", len(same))]
        example = (
            "\n\nAn example of the tone only (write something new; do not reuse its wording or situation):\n"
            f"Patient: {seed.question}\nReply: {seed.answer}"
        )
    return f"Plan:\n```json\n{spec}\n```{example}"


# ---------------------------------------------------------------------------------------------
# Running


@dataclass
class GenerationSummary:
    planned: int = 0
    already_stored: int = 0
    generated: int = 0
    duplicates: int = 0
    duplicate_kinds: Counter = field(default_factory=Counter)  # "question" / "answer"
    rejected: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0  # part of completion_tokens (reasoning models)
    elapsed_s: float = 0.0
    structured_output: str = ""
    notes: list[str] = field(default_factory=list)  # parameters changed after the server refused them
    slots_done: int = 0  # slots finished this run (stored or given up)
    interrupted: bool = False

    @property
    def pending(self) -> int:
        return self.planned - self.already_stored

    @property
    def remaining(self) -> int:
        """Slots still without a stored vignette (a re-run asks for these)."""
        return self.planned - self.already_stored - self.generated

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        return {
            "planned": self.planned,
            "already_stored": self.already_stored,
            "generated": self.generated,
            "rejected": dict(self.rejected),
            "duplicates": self.duplicates,
            "duplicate_kinds": dict(self.duplicate_kinds),
            "failed": dict(self.failed),
            "remaining": self.remaining,
            "requests": self.requests,
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens,
                       "reasoning": self.reasoning_tokens, "total": self.total_tokens},
            "elapsed_s": round(self.elapsed_s, 3),
            "structured_output": self.structured_output,
            "interrupted": self.interrupted,
            "notes": list(self.notes),
        }

    def lines(self) -> list[str]:
        def reasons(counter: Counter) -> str:
            return ", ".join(f"{k} {v}" for k, v in counter.most_common()) or "none"

        rate = self.generated / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return [
            f"planned {self.planned}: {self.already_stored} already stored, {self.generated} generated now, "
            f"{self.remaining} still missing",
            f"rejected {sum(self.rejected.values())} ({reasons(self.rejected)})",
            f"duplicates {self.duplicates}" + (f" ({reasons(self.duplicate_kinds)})" if self.duplicates else ""),
            f"failed requests {sum(self.failed.values())} ({reasons(self.failed)})",
            f"tokens {self.total_tokens} ({self.prompt_tokens} prompt + {self.completion_tokens} completion"
            + (f", of which {self.reasoning_tokens} reasoning" if self.reasoning_tokens else "")
            + f") in {self.requests} requests",
            f"{self.elapsed_s:.1f} s, {rate:.2f} vignettes/s, structured output: {self.structured_output or '-'}",
            *(f"note: {note}" for note in self.notes),
        ]


def make_client(settings: GenerationSettings) -> Any:
    """An ``openai.AsyncOpenAI`` for the settings (its own retries and timeout)."""
    import openai

    key = settings.api_key.get_secret_value() if settings.api_key else os.environ.get("OPENAI_API_KEY")
    if not key:
        if "api.openai.com" in settings.base_url:
            raise GenerationError("no API key: set LLM4SWEAT_GENERATION__API_KEY (or OPENAI_API_KEY)")
        key = "not-needed"  # local OpenAI-compatible servers (vLLM) accept any key
    return openai.AsyncOpenAI(base_url=settings.base_url, api_key=key, timeout=settings.timeout_s,
                              max_retries=settings.max_retries)


class _Run:
    """One generation run: shared state of the workers."""

    def __init__(self, db: Database, pack: ConditionPack, settings: GenerationSettings, client: Any,
                 summary: GenerationSummary, dedup: NearDuplicates,
                 on_progress: Callable[[GenerationSummary], None] | None) -> None:
        self.db, self.pack, self.settings, self.client = db, pack, settings, client
        self.summary, self.dedup, self.on_progress = summary, dedup, on_progress
        self.mode = "json_schema" if settings.structured_output == "auto" else settings.structured_output
        self.summary.structured_output = self.mode
        self.params = RequestParams.for_settings(settings)
        self.summary.notes = self.params.notes  # what the run learned about the server, for the summary
        self._logged_errors: set[str] = set()
        self.system = {m: system_prompt(pack, with_schema=(m != "json_schema")) for m in ("json_schema", "json_object", "none")}
        self.schema = vignette_json_schema(pack)
        self.facts = fact_checker(pack)
        self.fingerprint = pack.fingerprint()

    def _response_format(self, mode: str) -> dict[str, Any] | None:
        if mode == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": "vignette", "strict": True, "schema": self.schema}}
        if mode == "json_object":
            return {"type": "json_object"}
        return None

    def _downgrade(self, mode: str) -> bool:
        """After the server refused ``mode``: fall back one step (auto only). False if no step is left."""
        if self.settings.structured_output != "auto" or mode == "none":
            return False
        if self.mode == mode:
            self.mode = "json_object" if mode == "json_schema" else "none"
            self.summary.structured_output = self.mode
            log.warning("the server refused response_format %s; using %s from now on", mode, self.mode)
        return True

    async def _complete(self, slot: Slot, variant: int) -> tuple[str | None, Any] | Failure:
        """One chat completion (the client retries transport errors on its own): the content and
        the response, or why it failed. A 400 is told apart by its message
        (``pipeline.generation_requests``): structured output refused → the next format;
        unsupported parameter → sent without it; context length, content policy, unknown model
        → :class:`GenerationError`. An empty reply of a reasoning model that spent its budget
        on reasoning is asked again once with a larger budget."""
        import openai

        grown = False
        while True:
            mode = self.mode
            kwargs: dict[str, Any] = self.params.params()
            sent = dict(kwargs)
            fmt = self._response_format(mode)
            if fmt is not None:
                kwargs["response_format"] = fmt
            self.summary.requests += 1
            try:
                response = await self.client.chat.completions.create(
                    model=self.settings.model,
                    messages=[
                        {"role": "system", "content": self.system[mode]},
                        {"role": "user", "content": user_prompt(self.pack, slot, variant)},
                    ],
                    **kwargs,
                )
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as exc:
                raise GenerationError(
                    f"the generation endpoint {self.settings.base_url} refused the request "
                    f"(HTTP {exc.status_code}): check the model name ({self.settings.model}), the base URL and the API key"
                ) from None
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                bad = classify_bad_request(*error_fields(exc))
                if bad.kind in ("context_length", "content_policy", "invalid_model"):
                    raise GenerationError(operator_message(bad, self.settings)) from None
                if bad.kind == "structured_output" and fmt is not None and self._downgrade(mode):
                    continue
                if bad.kind == "unsupported_parameter" and bad.param is not None:
                    if bad.param in sent and bad.param not in self.params.params():
                        continue  # another worker already adapted to this refusal
                    if self.params.adapt(bad.param, sent):
                        log.warning("generation: %s (%s)", self.params.notes[-1], bad.message)
                        continue
                if bad.message not in self._logged_errors:
                    self._logged_errors.add(bad.message)
                    log.warning("generation request for %s refused: HTTP %s %s", slot.key, exc.status_code, bad.message)
                return "bad_request"
            except openai.APITimeoutError:
                return "timeout"
            except openai.RateLimitError:
                return "rate_limited"
            except openai.InternalServerError:
                return "server_error"
            except openai.APIConnectionError:
                return "connection"
            except openai.APIError as exc:
                log.warning("generation request for %s failed: %s", slot.key, type(exc).__name__)
                return "api_error"
            usage = getattr(response, "usage", None)
            if usage is not None:
                self.summary.prompt_tokens += usage.prompt_tokens or 0
                self.summary.completion_tokens += usage.completion_tokens or 0
                details = getattr(usage, "completion_tokens_details", None)
                self.summary.reasoning_tokens += getattr(details, "reasoning_tokens", None) or 0
            choice = response.choices[0] if response.choices else None
            content = choice.message.content if choice is not None and choice.message else None
            if (choice is not None and choice.finish_reason == "length" and not (content or "").strip()
                    and self.params.uses_budget and not grown):
                # A reasoning model spent the whole budget thinking and wrote nothing.
                grown = True
                if self.params.grow_budget(sent.get("max_completion_tokens", 0)):
                    log.warning("generation: an empty reply after reasoning for %s; asking again with "
                                "max_completion_tokens %d", slot.key, self.params.budget)
                    continue
            return content, response

    async def fill(self, slot: Slot) -> None:
        """Try to store one vignette for ``slot`` (up to ``attempts_per_slot`` requests)."""
        s = self.summary
        try:
            for variant in range(self.settings.attempts_per_slot):
                result = await self._complete(slot, variant)
                if isinstance(result, str):
                    s.failed[result] += 1
                    return  # the client already retried; the slot waits for the next run
                content, response = result
                choice = response.choices[0] if response.choices else None
                vignette, flags = None, []
                if choice is not None and (getattr(choice.message, "refusal", None)
                                           or choice.finish_reason == "content_filter"):
                    reason = "refused"
                elif choice is not None and choice.finish_reason == "length" and self.params.uses_budget \
                        and not (content or "").strip():
                    reason = "reasoning_budget"  # every token went to reasoning, even with a larger budget
                    if "reasoning_budget" not in self._logged_errors:
                        self._logged_errors.add("reasoning_budget")
                        log.warning("generation: %s spent all %d completion tokens on reasoning and wrote nothing; "
                                    "raise generation.max_completion_tokens or lower generation.reasoning_effort",
                                    self.settings.model, self.params.budget)
                elif choice is not None and choice.finish_reason == "length":
                    reason = "truncated"  # the token limit is too small for a whole vignette
                else:
                    vignette, reason = parse_vignette(content)
                if vignette is not None:
                    flags = self.pack.find_red_flags(vignette.question)
                    reason = check_vignette(vignette, slot, self.pack, flags, self.facts)
                if reason is not None:
                    s.rejected[reason] += 1
                    log.debug("rejected a vignette for %s: %s", slot.key, reason)
                    continue
                assert vignette is not None
                duplicate = self.dedup.check_and_add(slot.key, vignette.question, vignette.answer)
                if duplicate is not None:
                    s.duplicates += 1
                    s.duplicate_kinds[duplicate[0]] += 1
                    continue
                stored = await self._store(slot, vignette, response, flags)
                if stored.stored:
                    s.generated += 1
                    return
                self.dedup.remove(slot.key)
                if stored.reason == "duplicate":
                    s.duplicates += 1
                    if await self.db.fetchval("SELECT 1 FROM dataset_examples WHERE plan_key = ?", (slot.key,)):
                        return  # stored by another run meanwhile
                else:
                    s.rejected[stored.reason] += 1
        finally:
            s.slots_done += 1
            if self.on_progress is not None:
                self.on_progress(s)

    async def _store(self, slot: Slot, vignette: Vignette, response: Any, flags: list[Any]) -> dataset.InsertResult:
        messages = [
            {"role": "system", "content": self.pack.system_message()},
            {"role": "user", "content": vignette.question},
            {"role": "assistant", "content": vignette.answer},
        ]
        usage = getattr(response, "usage", None)
        provenance = {
            "pack": self.pack.name,
            "pack_version": self.pack.version,
            "pack_fingerprint": self.fingerprint,
            "generator": {"model": self.settings.model, "prompt_version": PROMPT_VERSION,
                          "structured_output": self.mode, "response_id": getattr(response, "id", None)},
            "plan": {"task": slot.task, "site": slot.site, "hdss": slot.hdss, "age_band": slot.age_band,
                     "kind": slot.kind, "occurrence": slot.occurrence, "fact": slot.fact},
            "profile": vignette.profile.model_dump(),
            "fact_ids": vignette.fact_ids,
            "red_flags": [flag.id for flag in flags],
            "usage": {"prompt_tokens": getattr(usage, "prompt_tokens", None),
                      "completion_tokens": getattr(usage, "completion_tokens", None)},
        }
        return await dataset.insert_example(self.db, slot.task, "synthetic", messages, provenance,
                                            plan_key=slot.key, eval_questions=self.pack.eval_questions)


async def generate(
    db: Database,
    pack: ConditionPack,
    settings: GenerationSettings,
    count: int,
    *,
    concurrency: int | None = None,
    client: Any = None,
    on_progress: Callable[[GenerationSummary], None] | None = None,
    on_start: Callable[[GenerationSummary], None] | None = None,
) -> GenerationSummary:
    """Fill the first ``count`` slots of the plan, skipping those already stored.

    ``client`` defaults to :func:`make_client` (closed at the end). Cancelling the task (Ctrl-C)
    stops the workers; every vignette stored so far stays, and a re-run continues from there."""
    started = time.monotonic()
    plan = build_plan(pack, count)
    stored = await dataset.stored_plan_keys(db)
    pending = [slot for slot in plan if slot.key not in stored]
    summary = GenerationSummary(planned=len(plan), already_stored=len(plan) - len(pending))
    if on_start is not None:
        on_start(summary)
    if not pending:
        summary.structured_output = "-"
        return summary
    own_client = client is None
    client = client or make_client(settings)
    dedup = await NearDuplicates.from_dataset(db, pack, settings.near_duplicate_threshold)
    run = _Run(db, pack, settings, client, summary, dedup, on_progress)
    queue = list(reversed(pending))

    async def worker() -> None:
        while queue:
            await run.fill(queue.pop())

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency or settings.concurrency, len(pending)))]
    try:
        await asyncio.gather(*workers)
    except BaseException as exc:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        summary.interrupted = True
        summary.elapsed_s = time.monotonic() - started
        if isinstance(exc, GenerationError):
            exc.summary = summary
        raise
    finally:
        summary.elapsed_s = time.monotonic() - started
        if own_client:
            await client.close()
    return summary


# ---------------------------------------------------------------------------------------------
# The CLI command's body (bot/cli.py holds the typer wrapper)


async def run_cli(cfg: Any, count: int, concurrency: int | None, dry_run: bool, console: Any) -> int:
    """``llm4sweat generate``: import the seeds, fill the plan with a progress bar, print the
    summary. Returns the exit code (0 done, 1 slots still missing, 2 stopped by an error)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from pipeline.packs import load_pack

    pack = load_pack(cfg.pack_path)
    gen = cfg.generation
    if dry_run:
        plan = build_plan(pack, count)
        table = Table("dimension", "counts")
        for dim, counts in plan_balance(plan).items():
            table.add_row(dim, ", ".join(f"{k}: {v}" for k, v in counts.items()))
        console.print(f"Plan for {count} vignettes ({pack.name} {pack.version}):")
        console.print(table)
        return 0
    for name in ("httpx", "httpx2", "openai"):  # one log line per request would bury the progress bar
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).getEffectiveLevel()))
    started = time.monotonic()
    db = await Database(cfg.db_path).open()
    try:
        seeds = await dataset.import_seeds(db, pack)
        if seeds:
            console.print(f"imported {seeds} seed vignettes from pack {pack.name}")
        stored = await dataset.stored_plan_keys(db)
        missing = sum(1 for slot in build_plan(pack, count) if slot.key not in stored)
        if not missing:
            console.print(f"nothing to do: all {count} planned vignettes are already stored.")
            return 0
        console.print(f"generating {missing} of {count} planned vignettes with {gen.model} at {gen.base_url}, "
                      f"concurrency {concurrency or gen.concurrency}")
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[status]}"), console=console) as progress:
            bar = progress.add_task("vignettes", total=None, status="")
            current: list[GenerationSummary] = []

            def start(summary: GenerationSummary) -> None:
                current.append(summary)
                progress.update(bar, total=summary.pending, completed=0)

            def update(summary: GenerationSummary) -> None:
                progress.update(
                    bar, completed=summary.slots_done,
                    status=f"stored {summary.generated} · rejected {sum(summary.rejected.values())} · "
                           f"duplicates {summary.duplicates} · failed {sum(summary.failed.values())} · "
                           f"tokens {summary.total_tokens}",
                )

            try:
                summary = await generate(db, pack, gen, count, concurrency=concurrency, on_progress=update, on_start=start)
            except GenerationError as exc:
                console.print(f"[red]generation stopped:[/red] {exc}", highlight=False)
                if exc.summary is not None:
                    for line in exc.summary.lines():
                        console.print("  " + line, highlight=False)
                return 2
            except asyncio.CancelledError:  # Ctrl-C: say what was done, then let the CLI exit
                if current:
                    current[0].elapsed_s = time.monotonic() - started
                    for line in current[0].lines():
                        console.print(line, highlight=False)
                raise
        for line in summary.lines():
            console.print(line, highlight=False)
        if summary.remaining:
            console.print(f"{summary.remaining} slot(s) still missing: run the same command again to continue.")
            return 1
        return 0
    finally:
        await db.close()
