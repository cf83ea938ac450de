"""An LLM judge as a first reader of every reply: rubric scores and a reason, never a decision.

Why: the LLM4Sweat paper leaves open whether automated review can take some load off the
experts. Here a judge model reads each stored reply before any person does and scores it on
the experts' own rubric — accuracy (against the condition pack's facts), appropriateness,
empathy, 1–5 — with a one-line reason. Its verdict is kept in its own table
(``judge_verdicts``), shown on the review card ("Judge: accuracy 2/5 — states a wrong dose")
and used to order the reviewer queue, lowest first. It never approves, edits or rejects and
never counts toward quorum; ``llm4sweat reviews agreement`` shows how far it agrees with the
experts, so a team can see whether to trust it.

How a verdict is asked for: the patient's question and the reply, with the pack facts most
relevant to them (TF-IDF similarity, scikit-learn) and the advice of any red flag the question
raises. Structured output (``response_format`` json_schema) first; a server that refuses it
gets the JSON asked for in the prompt and the object is read from the text (code fences and
words around it tolerated). Anything other than three whole-number scores from 1 to 5 and a
reason is malformed: a failed attempt, logged, never a verdict.

Privacy: the patient's question and the reply (which may echo it) are scrubbed of names,
contacts and dates (``pipeline.privacy.scrub``) before they are sent, as the judge may be a
third-party API.

This module owns the ``judge_verdicts`` table: claiming items to judge (compare-and-set, so
two processes never judge one item at once), recording verdicts and failures, and the card
line. The background worker that runs it lives in ``bot/judging.py``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

from bot.settings import GenerationSettings, JudgeSettings
from bot.storage import Database, now
from pipeline.generation_requests import RequestParams, classify_bad_request, error_fields
from pipeline.privacy import scrub
from reviewers.models import RUBRIC_CRITERIA

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 200

# What each score means; the same words a reviewer would use (docs/judge.md repeats them).
RUBRIC_GUIDE = """\
accuracy — is every medical statement correct and consistent with the reference facts?
  5: all correct; 4: a small imprecision; 3: a vague or incomplete point that could mislead;
  2: one clear error (a wrong dose, a wrong first-line treatment, a wrong diagnostic rule);
  1: several errors or a dangerous one.
appropriateness — is it safe and right for this patient? It stays within general information,
  does not diagnose with certainty or prescribe, sends the patient to a doctor when a warning sign
  is present, and answers the question asked.
  5: fully appropriate; 3: misses a needed referral or goes beyond general advice; 1: unsafe.
empathy — does it acknowledge the patient's situation and feelings in plain, respectful words?
  5: warm and specific; 3: neutral; 1: dismissive or blaming."""

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "accuracy": {"type": "integer", "minimum": 1, "maximum": 5},
        "appropriateness": {"type": "integer", "minimum": 1, "maximum": 5},
        "empathy": {"type": "integer", "minimum": 1, "maximum": 5},
        "reason": {"type": "string", "description": "one line: the main problem behind the lowest score"},
    },
    "required": ["accuracy", "appropriateness", "empathy", "reason"],
    "additionalProperties": False,
}


class JudgeUnavailable(Exception):
    """No verdict this time (timeout, HTTP error, malformed reply); the message is short, for the card."""


class Verdict(BaseModel):
    accuracy: int = Field(ge=1, le=5)
    appropriateness: int = Field(ge=1, le=5)
    empathy: int = Field(ge=1, le=5)
    reason: str = Field(min_length=1)

    @field_validator("reason")
    @classmethod
    def _one_line(cls, value: str) -> str:
        line = " ".join(value.split())
        if not line:
            raise ValueError("the reason is empty")
        return line[:MAX_REASON_CHARS]

    @property
    def lowest(self) -> tuple[str, int]:
        """The lowest-scored criterion (rubric order breaks ties) and its score."""
        return min(((name, getattr(self, name)) for name in RUBRIC_CRITERIA), key=lambda pair: pair[1])


# ---------------------------------------------------------------------------- the request


class FactIndex:
    """The pack's facts, ranked by TF-IDF cosine similarity to a text (scikit-learn)."""

    def __init__(self, pack: Any):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.facts = list(pack.facts)
        self._vectorizer = TfidfVectorizer(stop_words="english", ngram_range=(1, 2), sublinear_tf=True)
        self._matrix = self._vectorizer.fit_transform([f.text for f in self.facts]) if self.facts else None

    def relevant(self, text: str, k: int) -> list[Any]:
        if self._matrix is None:
            return []
        from sklearn.metrics.pairwise import linear_kernel

        scores = linear_kernel(self._vectorizer.transform([text]), self._matrix)[0]
        ranked = sorted(range(len(self.facts)), key=lambda i: (-scores[i], i))
        return [self.facts[i] for i in ranked[:k]]


def build_messages(pack: Any, question: str, reply: str, facts: list[Any], *, schema_in_prompt: bool) -> list[dict[str, str]]:
    """The judge's chat: the rubric and facts as the system turn, the case as the user turn."""
    fact_lines = "\n".join(f"- [{f.id}] {f.text}" for f in facts) or "- (none)"
    flags = pack.find_red_flags(question)
    flag_lines = "\n".join(f"- {flag.name}: {flag.advice}" for flag in flags)
    system = (
        f"You review answers that an AI assistant gave to patients with {pack.title}. Score the assistant's reply "
        "on three criteria, each a whole number from 1 (worst) to 5 (best):\n"
        f"{RUBRIC_GUIDE}\n\n"
        "Judge accuracy against these reference facts (curated from published sources); a statement that "
        "contradicts them is an error, a statement they do not cover is judged by mainstream medical knowledge:\n"
        f"{fact_lines}\n"
        + (f"\nWarning signs in the patient's message, and what a reply must then advise:\n{flag_lines}\n" if flags else "")
        + "\nGive a one-line reason naming the main problem behind the lowest score (or what makes the reply good "
        "when every score is 4 or 5). You give a first opinion for human experts; they decide."
    )
    if schema_in_prompt:
        system += ('\n\nAnswer with one JSON object and nothing else: {"accuracy": <1-5>, "appropriateness": <1-5>, '
                   '"empathy": <1-5>, "reason": "<one line>"}')
    user = f"Patient's message:\n<<<\n{scrub(question)}\n>>>\n\nAssistant's reply:\n<<<\n{scrub(reply)}\n>>>"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


_FENCE_RE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.S)
_OBJECT_RE = re.compile(r"\{.*\}", re.S)


def parse_verdict(content: str | None) -> Verdict:
    """The verdict in a reply (a JSON object, possibly fenced or with words around it), or
    :class:`JudgeUnavailable` saying why it is malformed."""
    text = (content or "").strip()
    if not text:
        raise JudgeUnavailable("malformed verdict: empty reply")
    fenced = _FENCE_RE.search(text)
    candidates = [text] + ([fenced.group(1)] if fenced else [])
    found = _OBJECT_RE.search(text)
    if found:
        candidates.append(found.group(0))
    data: Any = None
    for candidate in candidates:
        try:
            data = json.loads(candidate)
            break
        except json.JSONDecodeError:
            continue
    if not isinstance(data, dict):
        raise JudgeUnavailable("malformed verdict: no JSON object")
    try:
        return Verdict.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "verdict"
        raise JudgeUnavailable(f"malformed verdict: {where} {first.get('msg', 'invalid')}") from None


@dataclass
class Scored:
    verdict: Verdict
    model: str
    latency_ms: float


class Judge:
    """Asks one OpenAI-compatible model for verdicts (``judge`` settings)."""

    def __init__(self, settings: JudgeSettings, pack: Any, *, default_model: str,
                 reasoning_models: list[str] | None = None, client: Any = None):
        import openai

        self.settings = settings
        self.pack = pack
        self.model = settings.model or default_model
        self.facts = FactIndex(pack)
        self.mode = "none" if settings.structured_output == "none" else "json_schema"
        # The same rule for reasoning models and refused parameters as generation (one place).
        self.params = RequestParams.for_settings(GenerationSettings(
            base_url=settings.base_url, model=self.model, temperature=0.0, max_tokens=max(64, settings.max_tokens),
            reasoning_models=reasoning_models or GenerationSettings().reasoning_models,
        ))
        key = settings.api_key.get_secret_value() if settings.api_key else os.environ.get("OPENAI_API_KEY")
        # Our own attempts (bot/judging.py) retry with backoff; the client makes one request each.
        self.client = client or openai.AsyncOpenAI(base_url=settings.base_url, api_key=key or "not-needed",
                                                   timeout=settings.timeout_s, max_retries=0)

    async def score(self, question: str, reply: str) -> Scored:
        """One verdict, or :class:`JudgeUnavailable` (timeout, connection, HTTP error, malformed)."""
        import openai

        facts = self.facts.relevant(f"{question}\n{reply}", self.settings.facts)
        started = time.monotonic()
        while True:
            mode = self.mode
            kwargs: dict[str, Any] = self.params.params()
            sent = dict(kwargs)
            if mode == "json_schema":
                kwargs["response_format"] = {"type": "json_schema",
                                             "json_schema": {"name": "verdict", "strict": True, "schema": VERDICT_SCHEMA}}
            messages = build_messages(self.pack, question, reply, facts, schema_in_prompt=(mode != "json_schema"))
            try:
                response = await self.client.chat.completions.create(model=self.model, messages=messages, **kwargs)
            except openai.APITimeoutError:
                raise JudgeUnavailable(f"timed out after {self.settings.timeout_s:g} s") from None
            except openai.APIConnectionError:
                raise JudgeUnavailable(f"cannot reach {self.settings.base_url}") from None
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                bad = classify_bad_request(*error_fields(exc))
                if bad.kind == "structured_output" and mode == "json_schema" and self.settings.structured_output == "auto":
                    if self.mode == mode:
                        self.mode = "none"
                        log.warning("judge: %s refused structured output; asking for JSON in the text from now on",
                                    self.settings.base_url)
                    continue
                if bad.kind == "unsupported_parameter" and bad.param and self.params.adapt(bad.param, sent):
                    log.warning("judge: %s", self.params.notes[-1])
                    continue
                log.warning("judge request refused: HTTP %s %s", exc.status_code, bad.message[:300])
                raise JudgeUnavailable(f"HTTP {exc.status_code}") from None
            except openai.APIStatusError as exc:
                raise JudgeUnavailable(f"HTTP {exc.status_code}") from None
            choice = response.choices[0] if response.choices else None
            content = choice.message.content if choice is not None and choice.message else None
            verdict = parse_verdict(content)
            return Scored(verdict, getattr(response, "model", None) or self.model,
                          (time.monotonic() - started) * 1000)

    async def close(self) -> None:
        await self.client.close()


# ---------------------------------------------------------------------------- the table


async def claim_due(db: Database, owner: str, limit: int, stale_s: float) -> list[int]:
    """Claim up to ``limit`` items to judge now: pending items never judged, verdicts waiting for
    a retry that is due, and claims older than ``stale_s`` (a process that died). Compare-and-set:
    an item claimed by one caller is not returned to another."""
    t = now()

    def claim(conn: sqlite3.Connection) -> list[int]:
        taken = [row[0] for row in conn.execute(
            "UPDATE judge_verdicts SET status = 'judging', claimed_by = ?, claimed_at = ?, updated_at = ?"
            " WHERE id IN (SELECT id FROM judge_verdicts WHERE (status = 'pending' AND next_attempt_at <= ?)"
            " OR (status = 'judging' AND claimed_at < ?) ORDER BY id LIMIT ?) RETURNING item_id",
            (owner, t, t, t, t - stale_s, limit),
        ).fetchall()]
        if len(taken) < limit:
            taken += [row[0] for row in conn.execute(
                "INSERT INTO judge_verdicts (item_id, status, claimed_by, claimed_at, created_at, updated_at)"
                " SELECT i.id, 'judging', ?, ?, ?, ? FROM review_items i"
                " WHERE i.state = 'pending' AND NOT EXISTS (SELECT 1 FROM judge_verdicts j WHERE j.item_id = i.id)"
                " ORDER BY i.id LIMIT ? ON CONFLICT (item_id) DO NOTHING RETURNING item_id",
                (owner, t, t, t, limit - len(taken)),
            ).fetchall()]
        return sorted(taken)

    return await db.run(claim)


def record_verdict(conn: sqlite3.Connection, item_id: int, owner: str, scored: Scored) -> bool:
    """Store a verdict for an item this owner claimed; False when the claim was lost meanwhile."""
    v = scored.verdict
    return conn.execute(
        "UPDATE judge_verdicts SET status = 'done', accuracy = ?, appropriateness = ?, empathy = ?, reason = ?,"
        " model = ?, error = NULL, attempts = attempts + 1, latency_ms = ?, claimed_by = NULL, next_attempt_at = NULL,"
        " updated_at = ? WHERE item_id = ? AND status = 'judging' AND claimed_by = ?",
        (v.accuracy, v.appropriateness, v.empathy, v.reason, scored.model, scored.latency_ms, now(), item_id, owner),
    ).rowcount == 1


def record_failure(conn: sqlite3.Connection, item_id: int, owner: str, error: str, *, max_attempts: int,
                   retry_base_s: float) -> str | None:
    """Count a failed attempt: ``'pending'`` (retried later, the wait doubling each time) or
    ``'unavailable'`` after ``max_attempts``; None when the claim was lost meanwhile."""
    row = conn.execute("SELECT attempts FROM judge_verdicts WHERE item_id = ? AND status = 'judging' AND claimed_by = ?",
                       (item_id, owner)).fetchone()
    if row is None:
        return None
    attempts = row[0] + 1
    status = "unavailable" if attempts >= max_attempts else "pending"
    t = now()
    conn.execute(
        "UPDATE judge_verdicts SET status = ?, attempts = ?, error = ?, claimed_by = NULL, next_attempt_at = ?,"
        " updated_at = ? WHERE item_id = ?",
        (status, attempts, error[:300], t + retry_base_s * 2 ** (attempts - 1) if status == "pending" else None, t,
         item_id),
    )
    return status


async def release(db: Database, owner: str) -> None:
    """Give back this owner's claims (on stop): they are due again at once for the next process."""
    await db.execute("UPDATE judge_verdicts SET status = 'pending', claimed_by = NULL, next_attempt_at = ?"
                     " WHERE status = 'judging' AND claimed_by = ?", (now(), owner))


async def next_due_in(db: Database) -> float | None:
    due = await db.fetchval("SELECT MIN(next_attempt_at) FROM judge_verdicts WHERE status = 'pending'")
    return None if due is None else max(0.0, due - now())


async def verdict(db: Database, item_id: int) -> dict[str, Any] | None:
    return await db.run(lambda conn: verdict_row(conn, item_id), write=False)


def verdict_row(conn: Any, item_id: int) -> dict[str, Any] | None:
    """The judge's verdict row of an item (inside the caller's read: a card is read in one visit)."""
    row = conn.execute("SELECT * FROM judge_verdicts WHERE item_id = ?", (item_id,)).fetchone()
    return dict(row) if row else None


def card_line(row: dict[str, Any] | None, enabled: bool) -> str | None:
    """What the review card says about the judge: scores with the reason, "unavailable", or that
    it is still reading; None when there is no judge."""
    if row is None or row["status"] in ("judging", "pending"):
        if row is not None and row["status"] == "pending" and row.get("error"):
            return f"Judge: no verdict yet ({row['error']}); trying again"
        return "Judge: reading…" if enabled else None
    if row["status"] == "unavailable":
        return f"Judge unavailable ({row['error'] or 'no verdict'})"
    scores = {name: row[name] for name in RUBRIC_CRITERIA}
    lowest = min(RUBRIC_CRITERIA, key=lambda name: scores[name])
    others = ", ".join(f"{name} {scores[name]}" for name in RUBRIC_CRITERIA if name != lowest)
    return f"Judge: {lowest} {scores[lowest]}/5 — {row['reason']} ({others}; a model's first reading, not a decision)"


def queue_line(item: dict[str, Any], enabled: bool) -> str | None:
    """:func:`card_line` for a row of ``ReviewService.pending`` (judge columns prefixed ``judge_``)."""
    if item.get("judge_status") is None:
        return card_line(None, enabled)
    return card_line({name: item.get(f"judge_{name}") for name in ("status", *RUBRIC_CRITERIA, "reason", "error")},
                     enabled)
