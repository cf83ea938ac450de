"""Condition packs: everything specific to one condition, as data in one folder.

A pack is data, not code: supporting another rare disease means writing a new folder next to
``pipeline/packs/hyperhidrosis`` (the format is documented field by field in
``pipeline/packs/README.md``). This module reads a pack into pydantic models
(:func:`load_pack`), and checks one before it is used or shipped (:func:`check_pack`,
:func:`pack_check_report`, the engine of ``llm4sweat pack check PATH``).

Two kinds of trouble are kept apart:

* **Malformed data** (a line that is not JSON, a missing or mistyped field, a regex that does
  not compile, an id with spaces) makes :func:`load_pack` raise :class:`PackError`, whose
  message names the file and the line.
* **Content problems** (a fact without a source, a question without exactly one correct
  option, a duplicate id, an unknown fact id, an evaluation question or held-out safety case
  that leaks into the training data, too few questions per split, an option form that gives
  the answer away) are listed by :func:`check_pack`, which also reports every malformed line
  instead of stopping at the first.

Leak detection (an evaluation question that appears, or nearly appears, in training text) uses
character shingles. Both texts are normalized (Unicode NFKC, case-folded, every run of
punctuation and spacing collapsed to one space) and cut into overlapping ``SHINGLE_SIZE``
(5)-character substrings. A question *nearly appears* in a text when some stretch of the text
as long as the question has a shingle-set Jaccard similarity of at least
``NEAR_DUPLICATE_THRESHOLD`` (0.6) with the question's stem. Comparing against a window of the
question's length, rather than the whole text, catches a question pasted inside a long
conversation while ignoring a long text that merely shares the topic's vocabulary (plain
containment would flag most on-topic texts against short questions). Case, punctuation and
a changed word or two keep a copied question well above 0.6; distinct questions on the same
topic stay below about 0.5 against the shipped seeds.

Character shingles alone miss about half of two-word edits (a changed word breaks every
shingle that overlaps it: measured on the shipped questions, 42-47% of two-word edits reached
0.6). A second rule therefore works on words: a held-out text of at least
``EDIT_MIN_WORDS`` (6) words also *nearly appears* when its normalized words can be turned
into some stretch of the text's words with at most ``max(2, words // 5)`` word edits
(substitutions, insertions, deletions; an approximate substring match, Sellers' algorithm). A
text is flagged when either rule fires. Measured on the shipped pack: every two-word edit of
every evaluation question is caught; reordered clauses are caught by the shingle rule (every
question with its first clause moved to the end scored at least 0.75); no seed text is within
the edit budget of any question. What neither rule catches: a paraphrase that changes more
than a fifth of the words (synonyms throughout), a translation, or a question split across
distant sentences.

**What is held out**: every evaluation question's stem and every option of at least
``OPTION_MIN_WORDS`` (8) words that does not itself nearly appear in one of the pack's facts
(:func:`eval_heldout_items`). Shorter options are common short phrases ("the face and
scalp", "sweating on one side of the body") that a good answer must be free to use: the
shipped seed answers contain several of them word for word, while no option of 8 words or more
comes within two edits of any seed text. An option that repeats a fact ("a doctor, often a GP
then a dermatologist") is the knowledge training is meant to teach, so an answer that quotes
the fact is not a leak.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
import tomllib
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from pipeline.eval_bias import bias_problems, bias_table, option_bias

__all__ = [
    "PACKS_DIR",
    "MIN_EVAL_PER_TASK",
    "MIN_DEV_PER_TASK",
    "MIN_DEV_TOTAL",
    "MIN_SAFETY_CASES",
    "MIN_SAFETY_CASES_PER_RED_FLAG",
    "MIN_CRISIS_ADJACENT_CASES",
    "NEAR_DUPLICATE_THRESHOLD",
    "SHINGLE_SIZE",
    "PackError",
    "DOCTOR_ADVICE_RE",
    "PackMeta",
    "Fact",
    "RedFlag",
    "Profile",
    "SeedVignette",
    "EvalQuestion",
    "EVAL_SPLITS",
    "SafetyCase",
    "SAFETY_EXPECTATIONS",
    "SAFETY_HELDOUT_JSONL",
    "CrisisResource",
    "CrisisRegion",
    "CrisisResources",
    "ConditionPack",
    "Leak",
    "load_pack",
    "check_pack",
    "pack_check_report",
    "find_eval_leaks",
    "find_text_leaks",
    "eval_heldout_items",
    "word_edits",
    "shingles",
    "jaccard",
    "resolve_pack_path",
]

PACKS_DIR = Path(__file__).resolve().parent / "packs"

# File names inside a pack folder.
PACK_TOML = "pack.toml"
SYSTEM_PROMPT_MD = "system_prompt.md"
GUIDANCE_MD = "guidance.md"
FACTS_JSONL = "facts.jsonl"
RED_FLAGS_JSONL = "red_flags.jsonl"
SEEDS_JSONL = "seed_vignettes.jsonl"
EVAL_JSONL = "eval.jsonl"
CRISIS_TOML = "crisis_resources.toml"
# Held-out safety cases: patient messages that must never be trained on; optional (an old pack
# without the file loads with no cases).
SAFETY_HELDOUT_JSONL = "safety/heldout.jsonl"

# Evaluation splits: `dev` is for model selection (the promotion gate), `test` is only reported.
# A question without a split is a `test` question, so packs written before splits still load.
EVAL_SPLITS = ("test", "dev")
EvalSplit = Literal["test", "dev"]
# What a good reply to a held-out safety case must do (scored by the safety suite):
#   doctor               advise seeing a doctor (soon) about a sign of another cause;
#   urgent_care          tell the person to get urgent or emergency medical help now;
#   support_professional suggest a mental-health professional or GP for low mood or anxiety;
#   crisis_resources     answer with care and crisis resources (crisis line, emergency services).
SAFETY_EXPECTATIONS = ("doctor", "urgent_care", "support_professional", "crisis_resources")
SafetyExpectation = Literal["doctor", "urgent_care", "support_professional", "crisis_resources"]

# Evaluation set sizes, per split (the limits on option form are in pipeline/eval_bias.py).
MIN_EVAL_PER_TASK = 40  # test questions per task (the paper's size)
MIN_DEV_PER_TASK = 20  # dev questions per task
MIN_DEV_TOTAL = 60  # dev questions in all
# Held-out safety cases (safety/heldout.jsonl): enough that a model scoring 0 on them cannot hide.
MIN_SAFETY_CASES = 30  # in all
MIN_SAFETY_CASES_PER_RED_FLAG = 3  # each of the pack's red flags, phrased as patients would
MIN_CRISIS_ADJACENT_CASES = 10  # distress, dark humour, overdose questions, calm emergencies
OPTIONS_PER_QUESTION = 4
NEAR_DUPLICATE_THRESHOLD = 0.6
SHINGLE_SIZE = 5
EDIT_MIN_WORDS = 6  # held-out texts this long are also matched word by word, with a few edits allowed
OPTION_MIN_WORDS = 8  # options this long are held out like questions (shorter ones are common phrases)
# guidance.md goes into every prompt: keep it short (the prompt budget is small).
GUIDANCE_MAX_WORDS = 350

ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,79}$")
# A seed answer to a question that trips a red flag must send the patient to a clinician.
DOCTOR_ADVICE_RE = re.compile(
    r"\b(doctor|gp|physician|clinician|dermatologist|nurse practitioner|health ?care (professional|provider)"
    r"|medical (review|attention|advice|check|assessment|appointment)|urgent care|emergency)",
    re.IGNORECASE,
)


class PackError(ValueError):
    """A pack folder that cannot be read: the message names the file (and line) at fault."""

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None, pack: Path | None = None
    ) -> None:
        self.file = file  # the file's name inside the pack folder
        self.line = line
        self.pack = pack  # the pack folder, when known
        self.detail = message
        where = str(pack / file) if pack and file else (file or "")
        if where and line:
            where = f"{where} line {line}"
        super().__init__(f"{where}: {message}" if where else message)


# ---------------------------------------------------------------------------------------------
# Models


def _check_id(value: str) -> str:
    if not ID_RE.match(value):
        raise ValueError(
            f"id {value!r} must be lower-case letters, digits, '-', '_' or '.', starting with a letter or digit"
        )
    return value


class _Record(BaseModel):
    """A record read from one line of a JSONL file; remembers where it came from."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    _file: str = PrivateAttr(default="")
    _line: int = PrivateAttr(default=0)

    @property
    def location(self) -> str:
        """``file line N`` for messages."""
        return f"{self._file} line {self._line}" if self._file else "(in memory)"


class PackMeta(BaseModel):
    """``pack.toml``. Unknown top-level keys and tables are kept (other components may add
    their own sections) and available as ``model_extra``."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)

    name: str
    title: str
    version: str
    language: str = "en"
    tasks: list[str] = Field(min_length=1)
    disclaimer: str = Field(min_length=1)
    demo_disclaimer: str = Field(min_length=1)
    description: str = ""

    @field_validator("name")
    @classmethod
    def valid_name(cls, value: str) -> str:
        return _check_id(value)

    @field_validator("tasks")
    @classmethod
    def _tasks_are_ids(cls, value: list[str]) -> list[str]:
        for task in value:
            _check_id(task)
        if len(set(value)) != len(value):
            raise ValueError("tasks are listed twice")
        return value


class Fact(_Record):
    """One short piece of curated knowledge, in our own words, with its public source."""

    id: str
    task: str
    text: str = Field(min_length=1)
    # Required for a shippable pack; an empty source is reported by check_pack, not load_pack.
    source: str = ""

    @field_validator("id")
    @classmethod
    def valid_id(cls, value: str) -> str:
        return _check_id(value)


class RedFlag(_Record):
    """A sign that points away from the benign primary condition and to a doctor.

    ``patterns`` are regular expressions matched case-insensitively against the patient's own
    text; the flag fires when one of them matches. ``negations`` are optional regular
    expressions for negated phrasing ("no fever"): a pattern match that overlaps a negation
    match is ignored, but another match elsewhere in the text still fires the flag.
    """

    id: str
    name: str = Field(min_length=1)
    description: str = Field(min_length=1)
    patterns: list[str] = Field(min_length=1)
    negations: list[str] = Field(default_factory=list)
    advice: str = Field(min_length=1)
    source: str = ""

    _compiled: list[re.Pattern[str]] = PrivateAttr(default_factory=list)
    _compiled_negations: list[re.Pattern[str]] = PrivateAttr(default_factory=list)
    _any: re.Pattern[str] | None = PrivateAttr(default=None)
    _any_lower: re.Pattern[str] | None = PrivateAttr(default=None)

    @field_validator("id")
    @classmethod
    def valid_id(cls, value: str) -> str:
        return _check_id(value)

    @field_validator("patterns", "negations")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern, re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} does not compile: {exc}") from None
        return value

    def model_post_init(self, __context: Any) -> None:
        self._compiled = [re.compile(p, re.IGNORECASE) for p in self.patterns]
        self._compiled_negations = [re.compile(p, re.IGNORECASE) for p in self.negations]
        self._any = _alternation(self.patterns)
        self._any_lower = _lower_alternation(self.patterns) if self._any is not None else None

    def find(self, text: str) -> list[re.Match[str]]:
        """Every pattern match in ``text`` that is not inside a negated phrase."""
        if self._any_lower is not None and text.isascii():
            if self._any_lower.search(text.lower()) is None:  # the same answer as _any, ~3x faster
                return []
        elif self._any is not None and self._any.search(text) is None:
            return []  # no pattern matches anywhere (one scan instead of one per pattern and negation)
        negated = [m.span() for n in self._compiled_negations for m in n.finditer(text)]
        found = []
        for pattern in self._compiled:
            for match in pattern.finditer(text):
                start, end = match.span()
                if any(start < n_end and n_start < end for n_start, n_end in negated):
                    continue
                found.append(match)
        return found

    def matches(self, text: str) -> bool:
        return bool(self.find(text))


def _alternation(patterns: list[str]) -> re.Pattern[str] | None:
    """One regular expression that matches somewhere exactly when one of ``patterns`` does (a
    search tries every alternative at every position), or None when patterns cannot be joined
    without changing their meaning (back-references, inline flags, repeated group names)."""
    if any(re.search(r"\\[1-9]|\(\?P=|\(\?[aiLmsux-]+\)", p) for p in patterns):
        return None
    try:
        return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)
    except re.error:
        return None


@lru_cache(maxsize=None)
def _folds_to_ascii(code: int) -> bool:
    """Whether the non-ASCII character ``code`` matches an ASCII letter case-insensitively (İ ı ſ K)."""
    pattern = re.compile(re.escape(chr(code)), re.IGNORECASE)
    return any(pattern.fullmatch(letter) for letter in string.ascii_letters)


def _lower_alternation(patterns: list[str]) -> re.Pattern[str] | None:
    """``_alternation`` without IGNORECASE, for ASCII text lower-cased first, or None when that could
    answer differently: on ASCII text, case-insensitive matching and matching the lower-cased text
    agree for a pattern whose every literal and set is closed under ASCII lower-casing — no
    upper-case letter, no range holding an upper-case letter but not its lower case (``[0-_]``), no
    non-ASCII character (some match ASCII letters case-insensitively: K, ſ) — and which has no
    conditional group. Checked on the parsed pattern, so escapes (``\\x41``) count too."""
    from re import _constants as c, _parser as parser  # type: ignore[attr-defined]

    def safe_char(code: int) -> bool:
        return not chr(code).isupper() if code < 128 else not _folds_to_ascii(code)

    def safe(items: Any) -> bool:
        for op, av in items:
            if op in (c.LITERAL, c.NOT_LITERAL):
                if not safe_char(av):
                    return False
            elif op in (c.IN,):
                for set_op, set_av in av:
                    if set_op == c.LITERAL and not safe_char(set_av):
                        return False
                    if set_op == c.RANGE:
                        low, high = set_av
                        if any(not low <= u + 32 <= high for u in range(max(low, 65), min(high, 90) + 1)):
                            return False  # holds an upper-case letter, not its lower case
                        if high >= 128 and (high - low > 4096 or any(map(_folds_to_ascii, range(max(low, 128), high + 1)))):
                            return False
                    if set_op not in (c.LITERAL, c.RANGE, c.CATEGORY, c.NEGATE):
                        return False
            elif op in (c.SUBPATTERN,):
                if not safe(av[-1]):
                    return False
            elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
                if not safe(av[2]):
                    return False
            elif op == c.BRANCH:
                if not all(safe(branch) for branch in av[1]):
                    return False
            elif op in (c.ASSERT, c.ASSERT_NOT):
                if not safe(av[1]):
                    return False
            elif op == c.ATOMIC_GROUP:
                if not safe(av):
                    return False
            elif op not in (c.AT, c.ANY, c.CATEGORY):
                return False
        return True

    try:
        if not all(safe(parser.parse(p).data) for p in patterns):
            return None
        return re.compile("|".join(f"(?:{p})" for p in patterns))
    except (re.error, AttributeError, TypeError, ValueError):
        return None


class Profile(BaseModel):
    """The patient behind a seed vignette."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    age: int = Field(ge=0, le=120)
    sex: Literal["female", "male", "other", "unknown"]
    sites: list[str] = Field(min_length=1)
    hdss: int = Field(ge=1, le=4)
    onset_age: int | None = Field(default=None, ge=0, le=120)
    family_history: bool | None = None
    kind: Literal["primary", "secondary"]


class SeedVignette(_Record):
    """A hand-written example: a patient's question in their own voice and a good answer."""

    id: str
    task: str
    profile: Profile
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    fact_ids: list[str] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def valid_id(cls, value: str) -> str:
        return _check_id(value)


class EvalQuestion(_Record):
    """A multiple-choice evaluation question; ``answer`` is the index of the correct option.

    Option count, answer range and duplicate options are checked by :func:`check_pack` so that
    the validator can name every problem at once.
    """

    id: str
    task: str
    question: str = Field(min_length=1)
    options: list[str]
    answer: int
    fact_ids: list[str] = Field(default_factory=list)
    # `dev` questions select models, `test` questions only report them (see EVAL_SPLITS).
    split: EvalSplit = "test"

    @field_validator("id")
    @classmethod
    def valid_id(cls, value: str) -> str:
        return _check_id(value)

    # The texts of the pack's facts (set by the pack): options that repeat a fact are knowledge,
    # not evaluation secrets (see eval_heldout_items).
    _pack_fact_texts: tuple[str, ...] = PrivateAttr(default=())

    @property
    def correct_option(self) -> str:
        return self.options[self.answer]


class SafetyCase(_Record):
    """A held-out safety case (``safety/heldout.jsonl``): a patient message and what a good
    reply to it must do. The cases measure whether a model sends red flags to a doctor and
    handles distress well; they are never training data, so they must not be (nearly) a seed
    or any training text (:func:`check_pack` refuses that).

    ``kind`` is ``red_flag`` (a sign of another cause, phrased as a patient would; ``red_flag``
    names the pack's red flag) or ``crisis_adjacent`` (distress, dark humour, a question about
    taking too much of a medicine, an urgent symptom described calmly; ``red_flag`` optional).
    ``expect`` is one of :data:`SAFETY_EXPECTATIONS`; ``note`` says why, for reviewers.
    """

    id: str
    kind: Literal["red_flag", "crisis_adjacent"]
    text: str = Field(min_length=1)
    expect: SafetyExpectation
    red_flag: str | None = None
    note: str = ""

    @field_validator("id")
    @classmethod
    def valid_id(cls, value: str) -> str:
        return _check_id(value)

    @model_validator(mode="after")
    def _red_flag_named(self) -> SafetyCase:
        if self.kind == "red_flag" and not self.red_flag:
            raise ValueError("a red_flag case must name its red flag (field red_flag)")
        return self


class CrisisResource(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1)
    contact: str = Field(min_length=1)
    url: str = ""
    hours: str = ""
    source: str = ""


class CrisisRegion(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    label: str = Field(min_length=1)
    aliases: list[str] = Field(default_factory=list)
    resources: list[CrisisResource] = Field(min_length=1)


class CrisisResources(BaseModel):
    """``crisis_resources.toml``: a warm message template and resources per region.

    Regions are looked up case-insensitively by key or alias (``"gb"`` → ``UK``, ``"de"`` →
    ``EU``); anything unknown gets ``default``. Unknown top-level tables (for example a
    ``[safety]`` section owned by the triage component) are kept in ``model_extra``.
    """

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)

    template: str = Field(min_length=1)
    resource_line: str = "- {name}: {contact}"
    regions: dict[str, CrisisRegion]

    def region(self, code: str | None) -> tuple[str, CrisisRegion]:
        """The region entry for ``code`` (key or alias, any case), else ``default``."""
        if code:
            wanted = code.strip().casefold()
            for key, region in self.regions.items():
                if key.casefold() == wanted or wanted in (a.casefold() for a in region.aliases):
                    return key, region
        if "default" not in self.regions:
            raise PackError(f"no [regions.default] entry for region {code!r}", file=CRISIS_TOML)
        return "default", self.regions["default"]

    def resources(self, code: str | None) -> str:
        """The region's resources alone, one line each (for a check-in that is not a crisis message)."""
        _, region = self.region(code)
        return "\n".join(
            self.resource_line.format(name=res.name, contact=res.contact, url=res.url, hours=res.hours).rstrip()
            for res in region.resources)

    def render(self, code: str | None) -> str:
        _, region = self.region(code)
        return self.template.format(resources=self.resources(code), region=region.label).strip()


class ConditionPack(BaseModel):
    """Everything specific to one condition, read from a pack folder."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    path: Path
    meta: PackMeta
    system_prompt: str
    guidance: str
    facts: list[Fact]
    red_flags: list[RedFlag]
    seeds: list[SeedVignette]
    eval_questions: list[EvalQuestion]
    crisis: CrisisResources
    # Held-out safety cases (safety/heldout.jsonl); empty when the pack has none.
    safety_cases: list[SafetyCase] = Field(default_factory=list)

    _facts_by_id: dict[str, Fact] = PrivateAttr(default_factory=dict)

    def model_post_init(self, __context: Any) -> None:
        self._facts_by_id = {f.id: f for f in self.facts}
        fact_texts = tuple(f.text for f in self.facts)
        for q in self.eval_questions:  # the leak guard exempts options that only repeat a fact
            q._pack_fact_texts = fact_texts

    # -- identity and standing texts -------------------------------------------------------
    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def title(self) -> str:
        return self.meta.title

    @property
    def version(self) -> str:
        return self.meta.version

    @property
    def language(self) -> str:
        return self.meta.language

    @property
    def tasks(self) -> list[str]:
        return list(self.meta.tasks)

    @property
    def disclaimer(self) -> str:
        return self.meta.disclaimer

    @property
    def demo_disclaimer(self) -> str:
        return self.meta.demo_disclaimer

    def system_message(self) -> str:
        """The system prompt followed by the core guidance: what every conversation starts
        with, at inference and in training examples alike."""
        return f"{self.system_prompt.strip()}\n\n{self.guidance.strip()}"

    # -- knowledge -------------------------------------------------------------------------
    def fact(self, fact_id: str) -> Fact:
        """The fact with this id; ``KeyError`` naming the id when there is none."""
        try:
            return self._facts_by_id[fact_id]
        except KeyError:
            raise KeyError(f"pack {self.name!r} has no fact {fact_id!r}") from None

    def facts_for(self, task: str) -> list[Fact]:
        return [f for f in self.facts if f.task == task]

    def find_red_flags(self, text: str) -> list[RedFlag]:
        """The red flags whose patterns match the patient's text (pack order)."""
        return [flag for flag in self.red_flags if flag.matches(text)]

    def crisis_message(self, region: str | None = None) -> str:
        """The warm crisis message with the resources for ``region`` (default if unknown)."""
        return self.crisis.render(region)

    # -- data for training and evaluation -------------------------------------------------
    def seed_conversations(self, labelled: bool = False) -> list[list[dict[str, str]]]:
        """One chat (system, user, assistant) per seed vignette, in the ``messages`` format;
        ``labelled``: the system turn ends with the seed's task line, as a model is trained
        (``bot.chat_format.with_task``; the dataset export adds it to stored examples)."""
        from bot.chat_format import with_task

        system = self.system_message()
        conversations = [
            [
                {"role": "system", "content": system},
                {"role": "user", "content": seed.question},
                {"role": "assistant", "content": seed.answer},
            ]
            for seed in self.seeds
        ]
        if labelled:
            conversations = [with_task(c, seed.task) for c, seed in zip(conversations, self.seeds)]
        return conversations

    def eval_by_task(self, split: str | None = None) -> dict[str, list[EvalQuestion]]:
        """Questions grouped by task (every declared task present), from one split if given."""
        questions = self.eval_questions if split is None else self.eval_split(split)
        grouped: dict[str, list[EvalQuestion]] = {t: [] for t in self.tasks}
        for q in questions:
            grouped.setdefault(q.task, []).append(q)
        return grouped

    def eval_split(self, name: str) -> list[EvalQuestion]:
        """The questions of one split, ``"test"`` (reported) or ``"dev"`` (selected on), in file
        order. An unknown name is a ``ValueError`` rather than an empty list, so a typo cannot
        make a gate decide on nothing."""
        if name not in EVAL_SPLITS:
            raise ValueError(f"unknown evaluation split {name!r}; splits are {', '.join(EVAL_SPLITS)}")
        return [q for q in self.eval_questions if q.split == name]

    def fingerprint(self) -> str:
        """SHA-256 over the pack's files, so a dataset or adapter can name the pack it used."""
        digest = hashlib.sha256()
        for name in sorted(_ALL_FILES):
            file = self.path / name
            if file.is_file():
                digest.update(name.encode())
                digest.update(b"\0")
                digest.update(file.read_bytes())
                digest.update(b"\0")
        return digest.hexdigest()


_ALL_FILES = (
    PACK_TOML,
    SYSTEM_PROMPT_MD,
    GUIDANCE_MD,
    FACTS_JSONL,
    RED_FLAGS_JSONL,
    SEEDS_JSONL,
    EVAL_JSONL,
    CRISIS_TOML,
    SAFETY_HELDOUT_JSONL,
)


# ---------------------------------------------------------------------------------------------
# Loading


def resolve_pack_path(path_or_name: Path | str) -> Path:
    """A pack folder: an existing directory as given, else a pack name under ``PACKS_DIR``."""
    candidate = Path(path_or_name)
    if candidate.is_dir():
        return candidate
    if len(candidate.parts) == 1 and (PACKS_DIR / candidate).is_dir():
        return PACKS_DIR / candidate
    raise PackError(f"no pack folder at {str(path_or_name)!r}")


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(record)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


class _Collector:
    """Raise at the first error (load_pack) or collect them all (check_pack)."""

    def __init__(self, collect: bool) -> None:
        self.collect = collect
        self.root: Path | None = None
        self.errors: list[PackError] = []

    def add(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        if not self.collect:  # load_pack: one error, naming the pack folder too
            raise PackError(message, file=file, line=line, pack=self.root)
        self.errors.append(PackError(message, file=file, line=line))


def _read_text(root: Path, name: str, errors: _Collector, required: bool = True) -> str:
    file = root / name
    if not file.is_file():
        if required:
            errors.add("file is missing", file=name)
        return ""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        errors.add(f"not UTF-8 text ({exc})", file=name)
        return ""
    if not text.strip():
        errors.add("file is empty", file=name)
    return text


def _read_toml(root: Path, name: str, errors: _Collector) -> dict[str, Any] | None:
    text = _read_text(root, name, errors)
    if not text:
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib messages end with "(at line N, column M)".
        match = re.search(r"at line (\d+)", str(exc))
        errors.add(f"invalid TOML: {exc}", file=name, line=int(match.group(1)) if match else None)
        return None


def _read_jsonl(
    root: Path, name: str, model: type[_Record], tasks: Sequence[str], errors: _Collector, required: bool = True
) -> list:
    text = _read_text(root, name, errors, required)
    records = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("//"):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.add(f"not valid JSON: {exc.msg} (column {exc.colno})", file=name, line=number)
            continue
        if not isinstance(data, dict):
            errors.add("each line must be a JSON object", file=name, line=number)
            continue
        try:
            record = model.model_validate(data)
        except ValidationError as exc:
            errors.add(_format_validation(exc), file=name, line=number)
            continue
        record._file = name
        record._line = number
        task = getattr(record, "task", None)
        if task is not None and tasks and task not in tasks:
            errors.add(f"task {task!r} is not one of the pack's tasks {list(tasks)}", file=name, line=number)
            continue
        records.append(record)
    return records


def _load(path: Path | str, errors: _Collector) -> ConditionPack | None:
    root = resolve_pack_path(path)
    errors.root = root
    meta_data = _read_toml(root, PACK_TOML, errors)
    meta: PackMeta | None = None
    if meta_data is not None:
        try:
            meta = PackMeta.model_validate(meta_data)
        except ValidationError as exc:
            errors.add(_format_validation(exc), file=PACK_TOML)
    tasks = meta.tasks if meta else []
    system_prompt = _read_text(root, SYSTEM_PROMPT_MD, errors)
    guidance = _read_text(root, GUIDANCE_MD, errors)
    facts = _read_jsonl(root, FACTS_JSONL, Fact, tasks, errors)
    red_flags = _read_jsonl(root, RED_FLAGS_JSONL, RedFlag, tasks, errors)
    seeds = _read_jsonl(root, SEEDS_JSONL, SeedVignette, tasks, errors)
    eval_questions = _read_jsonl(root, EVAL_JSONL, EvalQuestion, tasks, errors)
    safety_cases = _read_jsonl(root, SAFETY_HELDOUT_JSONL, SafetyCase, tasks, errors, required=False)
    crisis_data = _read_toml(root, CRISIS_TOML, errors)
    crisis: CrisisResources | None = None
    if crisis_data is not None:
        try:
            crisis = CrisisResources.model_validate(crisis_data)
        except ValidationError as exc:
            errors.add(_format_validation(exc), file=CRISIS_TOML)
    if meta is None or crisis is None or errors.errors:
        return None
    return ConditionPack(
        path=root,
        meta=meta,
        system_prompt=system_prompt,
        guidance=guidance,
        facts=facts,
        red_flags=red_flags,
        seeds=seeds,
        eval_questions=eval_questions,
        crisis=crisis,
        safety_cases=safety_cases,
    )


def load_pack(path: Path | str) -> ConditionPack:
    """Read a pack folder (or a pack name under ``PACKS_DIR``).

    Raises :class:`PackError` naming the file and line of the first malformed record. A pack
    that loads may still have content problems: run :func:`check_pack` before shipping it.
    """
    pack = _load(path, _Collector(collect=False))
    assert pack is not None  # a non-collecting loader raises instead
    return pack


# ---------------------------------------------------------------------------------------------
# Near-duplicate detection


def _normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def shingles(text: str, size: int = SHINGLE_SIZE) -> set[str]:
    """The set of overlapping ``size``-character substrings of the normalized text."""
    norm = _normalize(text)
    if len(norm) <= size:
        return {norm} if norm else set()
    return {norm[i : i + size] for i in range(len(norm) - size + 1)}


def jaccard(a: str | set[str], b: str | set[str]) -> float:
    """Jaccard similarity of two texts' shingle sets (0 when both are empty)."""
    sa = a if isinstance(a, set) else shingles(a)
    sb = b if isinstance(b, set) else shingles(b)
    union = len(sa | sb)
    return len(sa & sb) / union if union else 0.0


def words_of(text: str) -> list[str]:
    """The normalized words of ``text`` (the same normalization as :func:`shingles`)."""
    return _normalize(text).split()


def allowed_edits(n_words: int) -> int:
    """How many word edits still count as "nearly appears" for a held-out text of ``n_words``
    (-1: too short for the word rule)."""
    return max(2, n_words // 5) if n_words >= EDIT_MIN_WORDS else -1


def word_edits(needle: Sequence[str], haystack: Sequence[str]) -> int:
    """The fewest word edits (substitute, insert, delete) that turn ``needle`` into some
    contiguous stretch of ``haystack`` (approximate substring matching, Sellers 1980), computed
    row by row with numpy: O(len(needle) * len(haystack))."""
    import numpy as np

    if not needle:
        return 0
    if not haystack:
        return len(needle)
    vocab: dict[str, int] = {}
    h = [vocab.setdefault(w, len(vocab)) for w in needle]
    t = np.fromiter((vocab.setdefault(w, len(vocab)) for w in haystack), dtype=np.int64, count=len(haystack))
    n = len(haystack)
    steps = np.arange(n + 1)
    row = np.zeros(n + 1, dtype=np.int64)  # a match may start anywhere in the haystack
    for i, word in enumerate(h, start=1):
        diagonal = np.empty(n + 1, dtype=np.int64)
        diagonal[0] = i
        diagonal[1:] = np.minimum(row[:-1] + (t != word), row[1:] + 1)
        row = np.minimum.accumulate(diagonal - steps) + steps  # insertions along the row
    return int(row.min())


@dataclass(frozen=True)
class Leak:
    """An evaluation question found (or nearly found) in a training text."""

    question_id: str
    text_index: int
    score: float


@dataclass(frozen=True)
class _HeldOut:
    """Any held-out text (a safety case) in the shape of a question: ``id`` and ``question``."""

    id: str
    question: str


def eval_heldout_items(questions: Iterable[Any]) -> list[_HeldOut]:
    """What must never appear in training text, for evaluation questions (or anything with
    ``id`` and ``question``): each question's stem, and each of its options of at least
    ``OPTION_MIN_WORDS`` words that does not itself nearly appear in one of the pack's facts
    (such an option is the knowledge a good answer teaches, not the evaluation's wording), all
    under the question's id."""
    questions = list(questions)
    items = []
    long_options: dict[tuple[str, ...], set[str]] = {}
    for q in questions:
        for option in getattr(q, "options", ()) or ():
            if len(words_of(option)) >= OPTION_MIN_WORDS:
                long_options.setdefault(getattr(q, "_pack_fact_texts", ()), set()).add(option)
    knowledge: set[str] = set()
    for facts, options in long_options.items():
        if facts:
            knowledge |= _options_in_facts(facts, tuple(sorted(options)))
    for q in questions:
        items.append(_HeldOut(q.id, q.question))
        for option in getattr(q, "options", ()) or ():
            if len(words_of(option)) >= OPTION_MIN_WORDS and option not in knowledge:
                items.append(_HeldOut(q.id, option))
    return items


@lru_cache(maxsize=8)
def _options_in_facts(facts: tuple[str, ...], options: tuple[str, ...]) -> frozenset[str]:
    """The options that nearly appear in one of the facts (computed once per pack)."""
    index = _QuestionIndex([_HeldOut(str(i), option) for i, option in enumerate(options)], SHINGLE_SIZE)
    found: set[str] = set()
    for text in facts:
        for oi, score in index.scores(text, NEAR_DUPLICATE_THRESHOLD).items():
            if score >= NEAR_DUPLICATE_THRESHOLD:
                found.add(options[oi])
    return frozenset(found)


class _QuestionIndex:
    """Shingles and words of held-out texts (anything with ``id`` and ``question``: evaluation
    questions and long options, :class:`_HeldOut` safety cases), indexed for one pass over each
    training text. ``pipeline.dataset`` keeps one per question set for its insertion guard."""

    def __init__(self, questions: Sequence[Any], size: int) -> None:
        self.size = size
        self.questions = list(questions)
        self.index: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.distinct: list[int] = []  # distinct shingles per question
        self.width: list[int] = []  # shingle positions per question (its length in shingles)
        self.words = [words_of(q.question) for q in self.questions]
        self.word_sets = [set(w) for w in self.words]
        self.edits = [allowed_edits(len(w)) for w in self.words]
        for qi, question in enumerate(self.questions):
            norm = _normalize(question.question)
            grams = [norm[i : i + size] for i in range(max(1, len(norm) - size + 1))] if norm else []
            ids: dict[str, int] = {}
            for gram in grams:
                ids.setdefault(gram, len(ids))
            for gram, sid in ids.items():
                self.index[gram].append((qi, sid))
            self.distinct.append(len(ids))
            self.width.append(len(grams))

    def scores(self, text: str, threshold: float) -> dict[int, float]:
        """Per held-out text that could reach ``threshold`` in ``text``: its best windowed
        Jaccard, or its word-rule score when that is higher."""
        norm = _normalize(text)
        size = self.size
        hits: dict[int, list[tuple[int, int]]] = defaultdict(list)
        index = self.index
        for i in range(len(norm) - size + 1):
            found = index.get(norm[i : i + size])
            if found:
                for qi, sid in found:
                    hits[qi].append((i, sid))
        result = {}
        for qi, positions in hits.items():
            q_size, width = self.distinct[qi], self.width[qi]
            if not q_size:
                continue
            # J = inter / (q_size + width - inter) >= t  needs  inter >= t (q_size + width) / (1 + t).
            needed = threshold * (q_size + width) / (1 + threshold)
            if len({sid for _, sid in positions}) < needed:
                continue
            best = 0
            window: Counter[int] = Counter()
            left = 0
            for pos, sid in positions:
                window[sid] += 1
                while positions[left][0] <= pos - width:
                    old = positions[left][1]
                    window[old] -= 1
                    if not window[old]:
                        del window[old]
                    left += 1
                best = max(best, len(window))
            result[qi] = best / (q_size + width - best)
        self._add_word_matches(norm.split(), result)
        return result

    def _add_word_matches(self, text_words: list[str], result: dict[int, float]) -> None:
        """The word rule: a held-out text within its edit budget of some stretch of the text
        scores ``1 - edits / words`` (at least 0.66, so at least the shingle threshold)."""
        present = set(text_words)
        for qi, budget in enumerate(self.edits):
            if budget < 0 or len(self.word_sets[qi] - present) > budget:
                continue  # every missing distinct word costs at least one edit
            edits = word_edits(self.words[qi], text_words)
            if edits <= budget:
                result[qi] = max(result.get(qi, 0.0), 1 - edits / len(self.words[qi]))


def find_eval_leaks(
    questions: Iterable[EvalQuestion],
    texts: Iterable[str],
    threshold: float = NEAR_DUPLICATE_THRESHOLD,
) -> list[Leak]:
    """Every (question, text) pair where the question's stem nearly appears in the text.

    The score of a pair is the best Jaccard similarity between the question's shingles and
    the shingles of any stretch of the text as long as the question (see the module
    docstring); pairs scoring at least ``threshold`` are returned, best first. The texts are
    streamed once each against an index of the questions' shingles, so large datasets are
    fine.
    """
    return find_text_leaks([(item.id, item.question) for item in eval_heldout_items(questions)], texts, threshold)


def find_text_leaks(
    items: Iterable[tuple[str, str]],
    texts: Iterable[str],
    threshold: float = NEAR_DUPLICATE_THRESHOLD,
) -> list[Leak]:
    """:func:`find_eval_leaks` for any held-out texts given as ``(id, text)`` pairs (a
    :class:`Leak`'s ``question_id`` is then the item's id): the same windowed-shingle rule."""
    index = _QuestionIndex([_HeldOut(item_id, text) for item_id, text in items], SHINGLE_SIZE)
    leaks = []
    for ti, text in enumerate(texts):
        best: dict[str, float] = {}  # one leak per held-out id and text (a question and its options)
        for qi, score in index.scores(text, threshold).items():
            if score >= threshold:
                item_id = index.questions[qi].id
                best[item_id] = max(best.get(item_id, 0.0), score)
        leaks.extend(Leak(item_id, ti, round(score, 3)) for item_id, score in best.items())
    leaks.sort(key=lambda leak: -leak.score)
    return leaks


# ---------------------------------------------------------------------------------------------
# Checking


def check_pack(path: Path | str, training_texts: Iterable[str] = ()) -> list[str]:
    """Every problem that should stop this pack from shipping; an empty list means it passes.

    Reports malformed data (all of it, with file and line), then: facts, red flags or crisis
    resources without a source; evaluation questions that do not have exactly four distinct
    options with one valid answer index; duplicate ids anywhere in the pack; unknown fact ids;
    too few ``test`` or ``dev`` questions (``MIN_EVAL_PER_TASK``, ``MIN_DEV_PER_TASK``,
    ``MIN_DEV_TOTAL``); an option form that gives the answer away (the limits of
    :mod:`pipeline.eval_bias`, per split and per task within a split); a ``dev`` question that
    repeats a ``test`` one; an evaluation question or a held-out safety case that appears or
    nearly appears in the seed vignettes or in ``training_texts`` (see :func:`find_eval_leaks`);
    too few held-out safety cases; a seed whose question trips a red flag but whose answer does
    not send the patient to a clinician.
    """
    training_texts = list(training_texts)  # read twice: evaluation leaks, safety-case leaks
    collector = _Collector(collect=True)
    try:
        pack = _load(path, collector)
    except PackError as exc:  # no folder at all
        return [str(exc)]
    problems = [str(e) for e in collector.errors]
    if pack is None:
        return problems

    # Standing texts.
    if not pack.system_prompt.strip():
        problems.append(f"{SYSTEM_PROMPT_MD}: empty")
    words = len(pack.guidance.split())
    if words > GUIDANCE_MAX_WORDS:
        problems.append(
            f"{GUIDANCE_MD}: {words} words; it goes into every prompt, keep it under {GUIDANCE_MAX_WORDS}"
        )

    # Duplicate ids, across every file.
    seen: dict[str, str] = {}
    for record in [*pack.facts, *pack.red_flags, *pack.seeds, *pack.eval_questions, *pack.safety_cases]:
        if record.id in seen:
            problems.append(f"{record.location}: duplicate id {record.id!r} (first at {seen[record.id]})")
        else:
            seen[record.id] = record.location

    fact_ids = {f.id for f in pack.facts}

    for fact in pack.facts:
        if not fact.source:
            problems.append(f"{fact.location}: fact {fact.id!r} has no source")
    for flag in pack.red_flags:
        if not flag.source:
            problems.append(f"{flag.location}: red flag {flag.id!r} has no source")

    def check_refs(record: SeedVignette | EvalQuestion, what: str) -> None:
        if not record.fact_ids:
            problems.append(f"{record.location}: {what} {record.id!r} is tied to no fact (fact_ids is empty)")
        for fid in record.fact_ids:
            if fid not in fact_ids:
                problems.append(f"{record.location}: {what} {record.id!r} refers to unknown fact id {fid!r}")

    for seed in pack.seeds:
        check_refs(seed, "seed")
        tripped = [flag.id for flag in pack.red_flags if flag.matches(seed.question)]
        if tripped and not DOCTOR_ADVICE_RE.search(seed.answer):
            problems.append(
                f"{seed.location}: seed {seed.id!r} trips red flag(s) {', '.join(tripped)} "
                "but its answer does not advise seeing a doctor"
            )

    seen_questions: dict[str, str] = {}
    for q in pack.eval_questions:
        check_refs(q, "question")
        if len(q.options) != OPTIONS_PER_QUESTION:
            problems.append(
                f"{q.location}: question {q.id!r} has {len(q.options)} options, needs exactly {OPTIONS_PER_QUESTION}"
            )
        if not 0 <= q.answer < len(q.options):
            problems.append(
                f"{q.location}: question {q.id!r} answer index {q.answer} is out of range "
                f"(0..{len(q.options) - 1}): no correct option"
            )
        normalized = [_normalize(o) for o in q.options]
        if any(not o for o in normalized):
            problems.append(f"{q.location}: question {q.id!r} has an empty option")
        dupes = sorted({o for o in normalized if o and normalized.count(o) > 1})
        if dupes:
            correct = _normalize(q.options[q.answer]) if 0 <= q.answer < len(q.options) else None
            extra = " (so more than one option is correct)" if correct in dupes else ""
            problems.append(f"{q.location}: question {q.id!r} repeats option(s) {dupes}{extra}")
        key = _normalize(q.question)
        if key in seen_questions:
            problems.append(f"{q.location}: question {q.id!r} repeats the text of {seen_questions[key]}")
        else:
            seen_questions[key] = q.id

    problems.extend(_check_eval_splits(pack))

    # The evaluation set must never be (nearly) in the training data: seeds, then given texts.
    seed_texts = [f"{s.question}\n{s.answer}" for s in pack.seeds]
    by_id = {q.id: q for q in pack.eval_questions}
    for leak in find_eval_leaks(pack.eval_questions, seed_texts):
        seed = pack.seeds[leak.text_index]
        problems.append(
            f"{by_id[leak.question_id].location}: question {leak.question_id!r} nearly appears in seed "
            f"{seed.id!r} ({seed.location}; shingle similarity {leak.score:.2f} >= {NEAR_DUPLICATE_THRESHOLD})"
        )
    for leak in find_eval_leaks(pack.eval_questions, training_texts):
        problems.append(
            f"{by_id[leak.question_id].location}: question {leak.question_id!r} nearly appears in training text "
            f"#{leak.text_index} (shingle similarity {leak.score:.2f} >= {NEAR_DUPLICATE_THRESHOLD}); "
            "evaluation questions must never be trained on"
        )

    problems.extend(_check_safety_cases(pack, seed_texts, training_texts))

    # Crisis resources.
    if "default" not in pack.crisis.regions:
        problems.append(f"{CRISIS_TOML}: no [regions.default]: patients with an unknown region would get nothing")
    if "{resources}" not in pack.crisis.template:
        problems.append(f"{CRISIS_TOML}: template does not contain {{resources}}")
    aliases: dict[str, str] = {}
    for key, region in pack.crisis.regions.items():
        for name in [key, *region.aliases]:
            folded = name.casefold()
            if folded in aliases and aliases[folded] != key:
                problems.append(f"{CRISIS_TOML}: region name {name!r} is used by both {aliases[folded]} and {key}")
            aliases[folded] = key
        for res in region.resources:
            if not res.source:
                problems.append(f"{CRISIS_TOML}: regions.{key}: resource {res.name!r} has no source")
    for key in pack.crisis.regions:
        try:
            pack.crisis.render(key)
        except (KeyError, IndexError, ValueError) as exc:
            problems.append(f"{CRISIS_TOML}: template or resource_line does not format for {key}: {exc!r}")
            break
    return problems


def _eval_groups(pack: ConditionPack) -> list[tuple[str, str, list[EvalQuestion]]]:
    """``(split, task, questions)`` for each split (task ``"all"``) and each task in it."""
    groups = []
    for split in EVAL_SPLITS:
        questions = pack.eval_split(split)
        groups.append((split, "all", questions))
        for task, grouped in pack.eval_by_task(split).items():
            groups.append((split, task, grouped))
    return groups


def _check_eval_splits(pack: ConditionPack) -> list[str]:
    """Sizes per split and task, the option-form limits (pipeline/eval_bias.py) per split and
    per task within a split, and no dev question that (nearly) repeats a test question."""
    problems = []
    minimum = {"test": MIN_EVAL_PER_TASK, "dev": MIN_DEV_PER_TASK}
    for split in EVAL_SPLITS:
        if not pack.eval_split(split):
            problems.append(
                f"{EVAL_JSONL}: no {split!r} questions; a pack needs a test split (reported, at least "
                f"{MIN_EVAL_PER_TASK} per task) and a dev split (selected on, at least {MIN_DEV_PER_TASK} per "
                f"task and {MIN_DEV_TOTAL} in all): give each row \"split\""
            )
            continue
        for task, questions in pack.eval_by_task(split).items():
            if len(questions) < minimum[split]:
                problems.append(
                    f"{EVAL_JSONL}: task {task!r} has {len(questions)} {split} questions, needs at least {minimum[split]}"
                )
    dev = pack.eval_split("dev")
    if dev and len(dev) < MIN_DEV_TOTAL:
        problems.append(f"{EVAL_JSONL}: {len(dev)} dev questions in all, needs at least {MIN_DEV_TOTAL}")
    for split, task, questions in _eval_groups(pack):
        where = f"{EVAL_JSONL}: split {split!r}" + ("" if task == "all" else f", task {task!r}")
        problems.extend(bias_problems(option_bias(questions), where, check_positions=task == "all"))
    # Dev and test ask about the same facts but never the same question.
    test = pack.eval_split("test")
    for leak in find_eval_leaks(test, [q.question for q in dev]):
        other = dev[leak.text_index]
        first = next(q for q in test if q.id == leak.question_id)
        problems.append(
            f"{other.location}: dev question {other.id!r} repeats test question {first.id!r} ({first.location}; "
            f"shingle similarity {leak.score:.2f} >= {NEAR_DUPLICATE_THRESHOLD}); dev and test must not share questions"
        )
    return problems


def _check_safety_cases(pack: ConditionPack, seed_texts: Sequence[str], training_texts: Sequence[str]) -> list[str]:
    """Held-out safety cases: each names a known red flag, and none is (nearly) a seed or a
    training text: a case the model was trained on measures memory, not safety."""
    problems = []
    flags = {flag.id for flag in pack.red_flags}
    for case in pack.safety_cases:
        if case.red_flag is not None and case.red_flag not in flags:
            problems.append(f"{case.location}: safety case {case.id!r} names unknown red flag {case.red_flag!r}")
    if len(pack.safety_cases) < MIN_SAFETY_CASES:
        problems.append(
            f"{SAFETY_HELDOUT_JSONL}: {len(pack.safety_cases)} held-out safety cases, needs at least "
            f"{MIN_SAFETY_CASES}: a safety check on fewer cannot tell a safe model from one that ignores red flags"
        )
    per_flag = Counter(c.red_flag for c in pack.safety_cases if c.kind == "red_flag")
    for flag in pack.red_flags:
        if per_flag[flag.id] < MIN_SAFETY_CASES_PER_RED_FLAG:
            problems.append(
                f"{SAFETY_HELDOUT_JSONL}: red flag {flag.id!r} has {per_flag[flag.id]} held-out red_flag cases, "
                f"needs at least {MIN_SAFETY_CASES_PER_RED_FLAG}"
            )
    crisis = sum(c.kind == "crisis_adjacent" for c in pack.safety_cases)
    if crisis < MIN_CRISIS_ADJACENT_CASES:
        problems.append(
            f"{SAFETY_HELDOUT_JSONL}: {crisis} crisis_adjacent cases, needs at least {MIN_CRISIS_ADJACENT_CASES}"
        )
    items = [(case.id, case.text) for case in pack.safety_cases]
    by_id = {case.id: case for case in pack.safety_cases}
    for leak in find_text_leaks(items, seed_texts):
        seed = pack.seeds[leak.text_index]
        problems.append(
            f"{by_id[leak.question_id].location}: held-out safety case {leak.question_id!r} nearly appears in seed "
            f"{seed.id!r} ({seed.location}; shingle similarity {leak.score:.2f} >= {NEAR_DUPLICATE_THRESHOLD})"
        )
    for leak in find_text_leaks(items, training_texts):
        problems.append(
            f"{by_id[leak.question_id].location}: held-out safety case {leak.question_id!r} nearly appears in "
            f"training text #{leak.text_index} (shingle similarity {leak.score:.2f} >= {NEAR_DUPLICATE_THRESHOLD}); "
            "held-out safety cases must never be trained on"
        )
    return problems


def _summary(pack: ConditionPack) -> str:
    def per_task(items: Iterable[Any]) -> str:
        counts = Counter(i.task for i in items)
        return ", ".join(f"{t} {counts[t]}" for t in pack.tasks)

    return "\n".join(
        [
            f"Pack {pack.name} {pack.version} ({pack.title}, {pack.language}) at {pack.path}",
            f"  facts:          {len(pack.facts)} ({per_task(pack.facts)})",
            f"  red flags:      {len(pack.red_flags)}",
            f"  seed vignettes: {len(pack.seeds)} ({per_task(pack.seeds)})",
            f"  eval questions: {len(pack.eval_questions)} ({per_task(pack.eval_questions)})",
            *(f"    {split:<5} {len(pack.eval_split(split)):>4} ({per_task(pack.eval_split(split))})" for split in EVAL_SPLITS),
            f"  safety cases:   {len(pack.safety_cases)} held out "
            f"({', '.join(f'{k} {n}' for k, n in sorted(Counter(c.kind for c in pack.safety_cases).items()))})",
            f"  crisis regions: {', '.join(pack.crisis.regions)}",
            *bias_table([(split, task, option_bias(qs)) for split, task, qs in _eval_groups(pack) if qs]),
        ]
    )


def pack_check_report(path: Path | str, training_texts: Iterable[str] = ()) -> tuple[bool, str]:
    """``(ok, text)`` for ``llm4sweat pack check PATH``: a summary and every problem found."""
    problems = check_pack(path, training_texts)
    lines = []
    try:
        lines.append(_summary(load_pack(path)))
    except PackError:
        lines.append(f"Pack at {path}")
    if problems:
        lines.append(f"FAILED: {len(problems)} problem(s)")
        lines.extend(f"  - {p}" for p in problems)
    else:
        lines.append("OK: no problems found")
    return not problems, "\n".join(lines)
