"""Checks on every model reply before anyone sees it.

A reply fails when it

* **claims to be a doctor** (or any clinician), or speaks as one ("as your physician, I…",
  "I will prescribe…", "my diagnosis…");
* **cites a source that is not the pack's** (author-year references, DOIs, PMIDs, journal
  names, numbered references, "a 2021 study…", links to sites the pack does not cite) — a
  small model invents these readily, and they sound authoritative;
* **states a medicine amount outside the pack's ranges** (``safety/policy.toml``), or an
  amount for a medicine the pack gives no range for;
* **lacks doctor advice where the message carried a red flag**;
* **leaks the system prompt** (a large part of the pack's system prompt or guidance repeated).

A failing reply is not posted: the conversation core stores it, sends it to review marked
``blocked:<check>`` with high priority, and the patient gets a safe holding message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence
from urllib.parse import urlparse

from bot.safety.scope import DoseRange, SafetyPolicy, policy_for

# Same idea as pipeline.packs.DOCTOR_ADVICE_RE (kept here so the check does not depend on the
# pack loader), widened to the phrasings replies actually use.
DOCTOR_ADVICE_RE = re.compile(
    r"\b(doctor|gp|physician|clinician|dermatologist|nurse practitioner|pharmacist|health ?care (professional|provider)"
    r"|medical (review|attention|advice|check|assessment|appointment|help)|urgent care|emergency|a&e|get (it|this) checked"
    r"|checked by|see (a|your) (doctor|gp))",
    re.IGNORECASE,
)


def advises_doctor(reply: str) -> bool:
    """Does the reply send the patient to a clinician?"""
    return bool(DOCTOR_ADVICE_RE.search(reply or ""))


# ------------------------------------------------------------------------------ the checks

_NEGATED = re.compile(r"\b(?:not|n't|never|cannot|can't|no)\b", re.IGNORECASE)
_CLINICIAN = (
    r"(?:doctor|physician|dermatologist|gp|nurse|surgeon|clinician|pharmacist|psychiatrist|psychologist|therapist|"
    r"medical\s+(?:professional|doctor|practitioner|expert)|md|specialist)"
)
DOCTOR_CLAIMS = [
    re.compile(rf"\b(?:i\s*am|i'm|im)\s+(?:a|an|your)\s+(?:[\w-]+\s+){{0,2}}{_CLINICIAN}\b", re.IGNORECASE),
    re.compile(rf"\b(?:as|speaking\s+as)\s+(?:a|an|your)\s+(?:[\w-]+\s+){{0,2}}{_CLINICIAN},?\s+(?:i|my|we)\b", re.IGNORECASE),
    re.compile(r"\b(?:i|i'll|i\s+will|i\s+can|i'm\s+going\s+to|let\s+me)\s+(?:[\w-]+\s+)?(?:prescribe|diagnose\s+you|examine\s+you)\b", re.IGNORECASE),
    re.compile(r"\bmy\s+(?:diagnosis|prescription|patients)\b", re.IGNORECASE),
    re.compile(r"\b(?:in\s+)?my\s+(?:clinical|medical)\s+(?:practice|experience|opinion)\b", re.IGNORECASE),
    re.compile(r"\bi(?:'ve|\s+have)\s+treated\b", re.IGNORECASE),
    re.compile(r"\bdr\.?\s+[\w-]+\s+here\b|\bboard[-\s]certified\b", re.IGNORECASE),
]
CITATIONS = [
    re.compile(r"\bet\s+al\b\.?", re.IGNORECASE),
    re.compile(r"\bdoi\s*:?\s*10\.\d+|\b10\.\d{4,}/\S+", re.IGNORECASE),
    re.compile(r"\bpmid\b|\bpubmed\b|\barxiv\b|\bisbn\b", re.IGNORECASE),
    re.compile(r"\[\d{1,3}\]"),
    re.compile(r"\(\s*[A-Z][a-z]+(?:\s+(?:and|&)\s+[A-Z][a-z]+)?,?\s+(?:19|20)\d\d[a-z]?\s*\)"),
    re.compile(r"\b[A-Z][a-z]+\s+(?:and|&)\s+[A-Z][a-z]+\s+\(\s*(?:19|20)\d\d\s*\)"),
    re.compile(r"\b(?:journal\s+of|the\s+lancet|lancet|nejm|new\s+england\s+journal|bmj|jama|jaad|annals\s+of|archives\s+of)\b", re.IGNORECASE),
    re.compile(r"\b(?:19|20)\d\d\s+(?:study|trial|paper|survey|meta-analysis|review)\b", re.IGNORECASE),
    re.compile(r"\b(?:study|trial|paper|meta-analysis)\s+(?:published\s+)?(?:in|by|from|at)\s+(?:the\s+)?(?:university\s+of\s+)?[A-Z]\w+"),
    re.compile(r"\bresearchers\s+(?:at|from)\s+[A-Z]\w+"),
    re.compile(r"\b(?:published|reported)\s+in\s+(?:the\s+)?[A-Z]\w+"),
]
URL_RE = re.compile(r"\bhttps?://[^\s)\]>]+|\bwww\.[^\s)\]>]+", re.IGNORECASE)
DOMAIN_IN_TEXT = re.compile(r"\b((?:[a-z0-9-]+\.)+(?:org|com|net|gov|uk|edu|int|eu|de|fr|ca|au))\b", re.IGNORECASE)

_NUMBER = r"(\d+(?:[.,]\d+)?)(?:\s*(?:-|–|to)\s*(\d+(?:[.,]\d+)?))?"
AMOUNT_RE = re.compile(
    _NUMBER + r"\s*(mg|milligrams?|mcg|micrograms?|µg|g\b|grams?|%|percent|per\s*cent|units?|iu\b|u\b|ma\b|milliamps?)",
    re.IGNORECASE,
)
DOSING_CONTEXT = re.compile(
    r"\b(?:take|taking|took|dose|doses|dosage|tablets?|pills?|capsules?|daily|a\s+day|per\s+day|twice|three\s+times|"
    r"every\s+(?:morning|evening|night|\d+\s+hours)|inject\w*|apply|applied|solution|cream|gel|spray)\b",
    re.IGNORECASE,
)
# Medicines a reply might dose that have no range in any pack: dosing them is always out of range.
KNOWN_MEDICINES = re.compile(
    r"\b(?:propranolol|clonidine|sertraline|fluoxetine|citalopram|escitalopram|venlafaxine|paroxetine|amitriptyline|"
    r"diazepam|lorazepam|alprazolam|gabapentin|pregabalin|benzatropine|methantheline|diltiazem|ibuprofen|paracetamol|"
    r"acetaminophen|aspirin|prednisolone|prednisone|metformin|insulin|levothyroxine|beta[-\s]?blockers?|"
    r"benzodiazepines?|antidepressants?)\b",
    re.IGNORECASE,
)
UNIT_ALIASES = {
    "mg": "mg", "milligram": "mg", "milligrams": "mg", "g": "g", "gram": "g", "grams": "g",
    "mcg": "mcg", "microgram": "mcg", "micrograms": "mcg", "µg": "mcg",
    "%": "percent", "percent": "percent", "per cent": "percent", "percent ": "percent",
    "unit": "units", "units": "units", "iu": "units", "u": "units",
    "ma": "mA", "milliamp": "mA", "milliamps": "mA",
}


@dataclass(frozen=True)
class Failure:
    check: str  # doctor_claim | citation | dosing | red_flag_advice | prompt_leak
    detail: str


@dataclass(frozen=True)
class ReplyCheck:
    failures: tuple[Failure, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def checks_failed(self) -> list[str]:
        return list(dict.fromkeys(f.check for f in self.failures))

    @property
    def flags(self) -> list[str]:
        """Risk flags for the review item: ``blocked:<check>``."""
        return [f"blocked:{c}" for c in self.checks_failed]


def doctor_claims(reply: str) -> list[str]:
    out = []
    for rule in DOCTOR_CLAIMS:
        for match in rule.finditer(reply):
            if _NEGATED.search(match.group(0)):
                continue
            # "I am not a doctor" / "I'm an AI, not a doctor": a negation just before the match.
            before = reply[max(0, match.start() - 12) : match.start()]
            if re.search(r"\b(?:not|n't|never)\s*$", before, re.IGNORECASE):
                continue
            out.append(match.group(0))
    return out


_PACK_CACHE: dict[int, tuple[Any, Any]] = {}


def _cached(pack: Any, name: str, build: Any) -> Any:
    """Per-pack derived data (sources, prompt shingles), computed once per pack object."""
    key = id(pack)
    entry = _PACK_CACHE.get(key)
    if entry is None or entry[0] is not pack:
        entry = (pack, {})
        _PACK_CACHE[key] = entry
    store = entry[1]
    if name not in store:
        store[name] = build(pack)
    return store[name]


def _pack_sources(pack: Any) -> tuple[str, set[str]]:
    return _cached(pack, "sources", _build_pack_sources)


def _build_pack_sources(pack: Any) -> tuple[str, set[str]]:
    """All source strings of the pack (lower-cased, joined) and the web domains they name."""
    texts = []
    for fact in getattr(pack, "facts", ()) or ():
        if getattr(fact, "source", ""):
            texts.append(fact.source)
    for flag in getattr(pack, "red_flags", ()) or ():
        if getattr(flag, "source", ""):
            texts.append(flag.source)
    joined = "\n".join(texts).lower()
    domains = {d.lower().removeprefix("www.") for d in DOMAIN_IN_TEXT.findall(joined)}
    return joined, domains


def invented_citations(reply: str, pack: Any = None) -> list[str]:
    sources, domains = _pack_sources(pack)
    out = []
    for rule in CITATIONS:
        for match in rule.finditer(reply):
            cited = match.group(0).strip().lower()
            # A citation that the pack itself carries (e.g. "Hornberger et al.") is allowed.
            if cited and sources and _in_sources(reply, match, sources):
                continue
            out.append(match.group(0))
    for match in URL_RE.finditer(reply):
        url = match.group(0)
        host = urlparse(url if "://" in url else "http://" + url).hostname or ""
        host = host.lower().removeprefix("www.")
        if not any(host == d or host.endswith("." + d) for d in domains):
            out.append(url)
    return out


def _in_sources(reply: str, match: re.Match[str], sources: str) -> bool:
    """Is the cited reference (its author name or journal words around the match) in the pack's sources?"""
    window = reply[max(0, match.start() - 30) : match.end() + 10]
    names = re.findall(r"[A-Z][a-z]{2,}", window)
    names = [n for n in names if n.lower() not in {"the", "study", "journal", "published", "researchers", "see", "according"}]
    return bool(names) and all(n.lower() in sources for n in names)


def _num(text: str) -> float:
    return float(text.replace(",", "."))


def dosing_problems(reply: str, policy: SafetyPolicy) -> list[str]:
    """Medicine amounts outside the pack's ranges, or for medicines without a range."""
    problems = []
    for sentence in re.split(r"(?<=[.!?;\n])\s+", reply):
        amounts = list(AMOUNT_RE.finditer(sentence))
        if not amounts:
            continue
        for amount in amounts:
            unit = UNIT_ALIASES.get(re.sub(r"\s+", " ", amount.group(3).lower()).strip(), amount.group(3).lower())
            low = _num(amount.group(1))
            high = _num(amount.group(2)) if amount.group(2) else low
            medicine = _nearest_medicine(sentence, amount.start(), policy.dosing)
            if medicine is not None:
                if unit != medicine.unit:
                    if medicine.unit in ("mg", "units") and unit in ("mg", "mcg", "g", "units"):
                        problems.append(f"{amount.group(0)} of {medicine.id}: the pack's range is in {medicine.unit}")
                    continue  # e.g. "20 minutes", "2.4%" next to a tablet: not this medicine's dose
                if low < medicine.min or high > medicine.max:
                    problems.append(
                        f"{amount.group(0).strip()} of {medicine.id} is outside the pack's range "
                        f"{medicine.min:g}-{medicine.max:g} {medicine.unit}"
                    )
                continue
            other = KNOWN_MEDICINES.search(sentence)
            if other and unit in ("mg", "mcg", "g", "units", "percent"):
                problems.append(f"{amount.group(0).strip()} of {other.group(0)}: the pack gives no dose for it")
            elif unit in ("mg", "mcg", "g") and DOSING_CONTEXT.search(sentence) and not _is_measurement(sentence):
                problems.append(f"{amount.group(0).strip()}: a dose for a medicine the pack gives no range for")
    return problems


def _is_measurement(sentence: str) -> bool:
    """'more than 100 mg of sweat in 5 minutes' is a gravimetric measurement, not a dose."""
    return bool(re.search(r"\bmg\s+(?:of\s+)?sweat\b|\bsweat\s+(?:rate|production)\b|\bgravimetr", sentence, re.IGNORECASE))


def _nearest_medicine(sentence: str, position: int, ranges: Sequence[DoseRange]) -> DoseRange | None:
    best: tuple[int, DoseRange] | None = None
    for medicine in ranges:
        for pattern in medicine.names:
            for match in pattern.finditer(sentence):
                distance = min(abs(match.start() - position), abs(match.end() - position))
                if distance <= 80 and (best is None or distance < best[0]):
                    best = (distance, medicine)
    return best[1] if best else None


def _shingles(text: str, size: int = 8) -> set[str]:
    norm = re.sub(r"\s+", " ", re.sub(r"[^\w]+", " ", text.casefold())).strip()
    if len(norm) <= size:
        return {norm} if norm else set()
    return {norm[i : i + size] for i in range(len(norm) - size + 1)}


def prompt_leaks(reply: str, pack: Any) -> list[str]:
    """Paragraphs of the system prompt or guidance that the reply repeats (containment >= 0.5)."""
    if len(reply) < 60:
        return []
    reply_sh = _shingles(reply)
    out = []
    for paragraph, sh in _cached(pack, "prompt_shingles", _prompt_paragraphs):
        if len(sh & reply_sh) / len(sh) >= 0.5:
            out.append(paragraph[:60] + "…")
    return out


def _prompt_paragraphs(pack: Any) -> list[tuple[str, set[str]]]:
    out = []
    for source in (getattr(pack, "system_prompt", "") or "", getattr(pack, "guidance", "") or ""):
        for paragraph in re.split(r"\n\s*\n|\n-\s", source):
            paragraph = paragraph.strip()
            if len(paragraph) >= 80:
                sh = _shingles(paragraph)
                if sh:
                    out.append((paragraph, sh))
    return out


def check_reply(
    reply: str,
    pack: Any,
    *,
    red_flags: Iterable[str] = (),
    policy: SafetyPolicy | None = None,
) -> ReplyCheck:
    """Every check on one model reply; ``red_flags`` are the ids triage found in the patient's message."""
    reply = reply or ""
    policy = policy if policy is not None else policy_for(pack)
    failures: list[Failure] = []
    failures += [Failure("doctor_claim", d) for d in doctor_claims(reply)]
    failures += [Failure("citation", c) for c in invented_citations(reply, pack)]
    failures += [Failure("dosing", d) for d in dosing_problems(reply, policy)]
    flags = list(red_flags)
    if flags and not advises_doctor(reply):
        failures.append(Failure("red_flag_advice", f"no doctor advice for {', '.join(flags)}"))
    failures += [Failure("prompt_leak", p) for p in prompt_leaks(reply, pack)]
    return ReplyCheck(tuple(failures))
