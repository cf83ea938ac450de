"""The vocabulary of the review workflow, shared by every platform."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class ReviewState(str, Enum):
    PENDING = "pending"
    APPROVED = "approved"
    EDITED = "edited"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def closed(self) -> bool:
        return self is not ReviewState.PENDING


class Action(str, Enum):
    APPROVE = "approve"
    EDIT = "edit"
    REJECT = "reject"


REVIEWER_ROLE = "reviewer"
MODERATOR_ROLE = "moderator"
RUBRIC_CRITERIA = ("accuracy", "appropriateness", "empathy")


@dataclass(frozen=True)
class Actor:
    """Someone acting on the service, with the roles the platform found for them just now.

    Platforms resolve roles at the moment of each action (never cached from start-up); the
    core only checks membership, so the rule "who may decide" lives in one place."""

    platform: str
    user_id: str
    display_name: str = ""
    roles: frozenset[str] = field(default_factory=frozenset)

    @property
    def label(self) -> str:
        return f"{self.platform}:{self.display_name or self.user_id}"

    def has(self, role: str) -> bool:
        return role in self.roles


@dataclass(frozen=True)
class Rubric:
    accuracy: int | None = None
    appropriateness: int | None = None
    empathy: int | None = None

    def __post_init__(self) -> None:
        for name in RUBRIC_CRITERIA:
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and 1 <= value <= 5):
                raise ValueError(f"rubric {name} must be an integer from 1 to 5, got {value!r}")

    def missing(self) -> list[str]:
        """The criteria not scored yet, in rubric order."""
        return [name for name in RUBRIC_CRITERIA if getattr(self, name) is None]


# Approving or editing a reply accepts it for the patient and for training: the experts' scores
# must come with it (they decide whether an approval trains, and they rank adapter versions).
SCORED_ACTIONS = frozenset({Action.APPROVE, Action.EDIT})


def scores_needed(action: "Action | str", rubric: "Rubric | None") -> str | None:
    """Why ``action`` cannot be taken with ``rubric`` (a sentence for the reviewer), or None.

    The one place the rule lives; platforms call it early (before opening an edit form) only to
    spare the reviewer typing, the review service enforces it."""
    action = Action(action)
    missing = (rubric or Rubric()).missing()
    if action not in SCORED_ACTIONS or not missing:
        return None
    verb, again = ("Approving", "approve") if action is Action.APPROVE else ("An edit", "edit")
    return (f"{verb} needs all three rubric scores (accuracy, appropriateness, empathy, 1–5); "
            f"missing: {', '.join(missing)}. Choose the scores, then {again} again.")


class PermissionDenied(Exception):
    """The actor lacks the role for this action; the message is safe to show them."""


class ReviewError(Exception):
    """A decision that cannot be applied (unknown item, empty edit); the message is for the reviewer."""


@dataclass(frozen=True)
class DecisionOutcome:
    item_id: int
    state: ReviewState
    recorded: bool  # False when this was a repeat or the item was already closed
    closed_now: bool  # True only for the decision that closed the item
    final_text: str | None
    message: str  # a short confirmation for the reviewer
    tie: bool = False  # quorum reached but no strict majority: one more reviewer is needed


@dataclass(frozen=True)
class Resolution:
    """Where an item stands after its decisions so far (see ``reviewers.service.resolve``)."""

    state: ReviewState  # PENDING while more reviews are needed
    final_text: str | None = None  # the latest edit when the outcome is EDITED
    tie: bool = False
    accept: int = 0  # approve + edit
    reject: int = 0
