"""The small interface between the platform-neutral core and each chat platform.

A platform module translates its events into ``IncomingMessage`` / ``Actor`` and renders what
the core hands it (``PatientView``, ``ReviewCard``, alerts). It holds no business rules.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, Protocol


class PlatformStartError(RuntimeError):
    """A platform cannot start (bad token, missing intent, port in use); one line for the operator.

    ``retryable``: trying again later can help (the platform is unreachable, not refusing us)."""

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class IncomingMessage:
    platform: str
    user_id: str
    channel_id: str
    thread_id: str  # the platform's thread (or the channel/DM id where threads don't exist)
    text: str
    display_name: str = ""
    attachments: int = 0
    platform_message_id: str | None = None
    region: str | None = None


DM_KEY_PREFIX = "dm:"


def dm_key(channel_id: str, started_by: str | None = None) -> str:
    """The conversation key (``thread_id``) of a direct message: one conversation per patient, the
    DM channel itself, until the patient starts afresh (the key then names the message that did)."""
    return channel_id if started_by is None else f"{DM_KEY_PREFIX}{started_by}"


def is_dm_key(channel_id: str, thread_id: str) -> bool:
    """Whether a conversation is a whole direct-message channel (answers go to the channel, not a thread)."""
    return thread_id == channel_id or thread_id.startswith(DM_KEY_PREFIX)


@dataclass(frozen=True)
class ConversationRef:
    id: int
    platform: str
    channel_id: str
    thread_id: str
    patient_user_id: str


class ViewKind(str, Enum):
    PENDING_REVIEW = "pending_review"  # AI-written, shown at once, awaiting a specialist
    REVIEWED = "reviewed"  # approved or edited by a specialist
    UNDER_REVIEW = "under_review"  # gated: a specialist is reviewing, answer not shown yet
    WITHDRAWN = "withdrawn"  # rejected by a specialist, replaced by a holding message
    NOTICE = "notice"  # a service message: unavailable, paused, empty input
    CONSENT = "consent"  # the first-contact notice with its question: platforms add "I agree" / "No" buttons
    CRISIS = "crisis"  # crisis resources; never from the model
    PERSON = "person"  # written by a person of the care team (a crisis case taken over), never the AI


@dataclass(frozen=True)
class PatientView:
    """What the patient should see for one reply, before platform rendering."""

    kind: ViewKind
    text: str
    label: str = ""  # e.g. "AI-written · pending specialist review"
    disclaimer: str = ""


@dataclass(frozen=True)
class Turn:
    """One earlier turn of a conversation as the patient saw it: ``patient`` wrote ``text``, or
    the service showed it (``assistant``: a reply as shown, crisis resources)."""

    role: str  # "patient" | "assistant"
    text: str


@dataclass
class ReviewCard:
    item_id: int
    reply_id: int
    patient_text: str
    reply_text: str
    task: str
    risk_flags: list[str]
    adapter_version: str | None
    state: str
    priority: str = "normal"
    decided_by: list[str] = field(default_factory=list)
    card_ref: str | None = None  # the platform's id for the posted card
    # The LLM judge's first reading, one line ("Judge: accuracy 2/5 — states a wrong dose …"), or
    # "Judge unavailable (…)"; None without a judge. Shown as information, never a decision.
    judge: str | None = None
    # The turns before the patient's message, oldest first (the last few; the core fills it),
    # so a reviewer judges the reply in its context. Platforms shorten older turns first.
    thread: list[Turn] = field(default_factory=list)
    # Why the reply is held for a person before the patient sees it (an open crisis case, a
    # possible crisis, a red flag …), shown to reviewers; None when it is not held.
    hold_reason: str | None = None


HealthState = Literal["connected", "connecting", "failed"]


class ConnectionState(str, Enum):
    """The values of ``PlatformHealth.state`` (equal to the plain strings)."""

    CONNECTED = "connected"
    CONNECTING = "connecting"  # starting, or reconnecting after a drop
    FAILED = "failed"  # ended for good (bad or revoked token, intents refused): a person must act


@dataclass
class PlatformHealth:
    """A platform's connection as ``/readyz``, ``llm4sweat doctor`` and ``/status`` read it.

    ``connected``: events arrive and posts can be made. ``connecting``: starting, or
    reconnecting after a drop (the SDK retries by itself). ``failed``: the connection ended for
    good (a revoked token, Discord close 4004 / 4013 / 4014, Slack ``invalid_auth`` …) and
    nothing will bring it back without the operator; ``reason`` says what, in one line
    without secrets. ``since`` is when the state began (``time.time()``).

    One object per platform, kept by its supervisor (bot.supervisor) and updated in place as
    the connection changes, so whoever holds it reads the state now. ``problems`` are things
    that do not break the connection but break a promise while they last, keyed by what they
    concern (e.g. ``"reviewer_channel"`` → missing permission Send Messages in #expert-review)."""

    state: HealthState = "connecting"
    reason: str = ""
    since: float = field(default_factory=time.time)
    problems: dict[str, str] = field(default_factory=dict)

    def set(self, state: HealthState | ConnectionState, reason: str = "") -> None:
        state = ConnectionState(state)
        if state != self.state:
            self.since = time.time()
        self.state, self.reason = state, reason

    @property
    def ready(self) -> bool:
        return self.state == "connected"

    def describe(self) -> str:
        """``connected``, ``connecting: why`` or ``failed: why``, then any problems."""
        text = f"{ConnectionState(self.state).value}: {self.reason}" if self.reason else ConnectionState(self.state).value
        if self.problems:
            text += "; " + "; ".join(self.problems.values())
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"state": ConnectionState(self.state).value, "reason": self.reason, "since": self.since,
                "problems": dict(self.problems)}


CONNECTED = PlatformHealth("connected")  # for platforms without a connection of their own; never updated


class Platform(Protocol):
    name: str
    max_message_chars: int
    # The connection's state now (a platform without a connection of its own, like the local
    # console, is always connected). Read by bot.health.
    health: PlatformHealth

    async def send_to_patient(self, conv: ConversationRef, view: PatientView) -> list[str]:
        """Post a view in the patient's thread; returns the platform ids of the posted parts."""

    async def update_patient_message(self, conv: ConversationRef, message_ids: list[str], view: PatientView) -> list[str]:
        """Replace an earlier view in place (edit), returning the ids now showing it."""

    async def post_review_card(self, card: ReviewCard) -> str | None:
        """Post a card in the reviewer channel; returns its platform id."""

    async def update_review_card(self, card: ReviewCard) -> None: ...

    async def alert(self, text: str, urgent: bool = False, report: Any = None) -> None:
        """Tell moderators and on-duty reviewers (urgent: with a mention). ``report``
        (bot.reports.Report): tables to show as fields and a chart to attach, never as ASCII."""

    def where_visible(self, conv: ConversationRef) -> str:
        """Who besides the patient can read this conversation on the platform, in one sentence
        for the consent notice (a thread in a channel, a direct message, this browser)."""
