"""Block Kit rendering for Slack: patient replies, review cards, the edit modal.

Pure functions from the core's neutral objects to Slack payloads; no I/O and no rules about
what is shown when (that is the core's job).

Slack's limits that shape this module: a section block's text is at most 3,000 characters,
a context element's text 3,000, a header 150, a modal title 24, a plain-text input 3,000, and a
message should stay well under 4,000 characters of text.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from bot.platform import PatientView, ReviewCard, ViewKind
from bot.text import fit_lines, join_edited, split_for_editing, split_message
from reviewers.models import RUBRIC_CRITERIA, Rubric

if TYPE_CHECKING:
    from bot.reports import Report

SECTION_LIMIT = 3000
PART_LIMIT = 2800  # raw text per message part, leaving room for escaping (& < > grow)
CARD_PATIENT_LIMIT = 1200
CARD_REPLY_LIMIT = 2600
CARD_THREAD_LIMIT = 1500  # earlier turns on a card (older ones shortened first)
TURN_LIMIT = 400
MODAL_INPUT_LIMIT = 3000  # Slack's maximum for plain_text_input
MAX_EDIT_PARTS = 7  # inputs for one reply in the Edit modal (7 × 3,000 ≥ reviewers.service.MAX_EDIT_CHARS)

ACTION_APPROVE = "review_approve"
ACTION_EDIT = "review_edit"
ACTION_REJECT = "review_reject"
RUBRIC_ACTION_PREFIX = "rubric_"
ACTION_CONSENT_AGREE = "consent_agree"
ACTION_CONSENT_DECLINE = "consent_decline"
ACTION_FORGET_CONFIRM = "forget_me_confirm"
ACTION_FORGET_CANCEL = "forget_me_cancel"
EDIT_CALLBACK = "review_edit_modal"
EDIT_BLOCK = "edit_text"
EDIT_INPUT = "text"
RUBRIC_BLOCK_PREFIX = "rubric:"

_KIND_ICON = {
    ViewKind.PENDING_REVIEW: ":robot_face:",
    ViewKind.REVIEWED: ":white_check_mark:",
    ViewKind.UNDER_REVIEW: ":hourglass_flowing_sand:",
    ViewKind.WITHDRAWN: ":no_entry_sign:",
    ViewKind.NOTICE: ":information_source:",
    ViewKind.CRISIS: ":rotating_light:",
}

_STATE_TEXT = {
    "pending": ":hourglass_flowing_sand: Pending review",
    "approved": ":white_check_mark: Approved",
    "edited": ":pencil2: Edited",
    "rejected": ":x: Rejected",
    "expired": ":zzz: Expired",
}


def escape(text: str) -> str:
    """Slack's control characters: without this a model or a patient could write <!channel>."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - 1].rstrip() + "…"


def fit(text: str, limit: int) -> str:
    """``text`` escaped and, if needed, clipped so that the escaped form is at most ``limit``."""
    escaped = escape(text)
    cut = len(text)
    while len(escaped) > limit:
        cut = max(1, min(cut - 1, cut - (len(escaped) - limit)))
        escaped = escape(clip(text, cut))
    return escaped


def _excerpt(text: str, limit: int, max_lines: int = 30) -> str:
    """A quoted excerpt for a card: escaped, at most ``max_lines`` lines, within ``limit``."""
    lines = [line for line in text.strip().split("\n") if line.strip()]
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [" ".join(lines[max_lines - 1:])]
    return _quote(fit("\n".join(lines), limit - 2 * len(lines)))


def _chunks(text: str) -> list[str]:
    """Escaped parts of ``text`` that each fit one section block."""
    parts: list[str] = []
    for raw in split_message(text, PART_LIMIT) or [""]:
        escaped = escape(raw)
        if len(escaped) <= SECTION_LIMIT:
            parts.append(escaped)
        else:  # a part dense with & < >: split the escaped text again
            parts.extend(split_message(escaped, SECTION_LIMIT))
    return parts


def patient_messages(view: PatientView) -> list[dict[str, Any]]:
    """One dict (``text`` fallback + ``blocks``) per Slack message showing ``view``.

    Long text is split into several messages; the label and disclaimer go, as a context block,
    under the last one so the patient reads them right after the answer."""
    parts = _chunks(view.text)
    messages: list[dict[str, Any]] = []
    for index, part in enumerate(parts):
        blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": part or " "}}]
        if len(parts) > 1:
            blocks.append(_context([f"Part {index + 1} of {len(parts)}"]))
        if index == len(parts) - 1:
            context = []
            if view.label:
                context.append(f"{_KIND_ICON.get(view.kind, '')} *{fit(view.label, 500)}*".strip())
            if view.disclaimer:
                context.append(f"_{fit(view.disclaimer, SECTION_LIMIT - 2)}_")
            if context:
                blocks.append(_context(context))
            if view.kind is ViewKind.CONSENT:
                blocks.append(consent_buttons())
        messages.append({"text": part or " ", "blocks": blocks})
    return messages


def consent_buttons() -> dict[str, Any]:
    """"I agree" / "No" under the consent notice; the answer is recorded for whoever presses."""
    from bot.consent import AGREE_LABEL, DECLINE_LABEL

    return {"type": "actions", "block_id": "consent", "elements": [
        {"type": "button", "action_id": ACTION_CONSENT_AGREE, "style": "primary", "value": "agree",
         "text": {"type": "plain_text", "text": AGREE_LABEL}},
        {"type": "button", "action_id": ACTION_CONSENT_DECLINE, "value": "decline",
         "text": {"type": "plain_text", "text": DECLINE_LABEL}},
    ]}


def _context(texts: list[str]) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": t} for t in texts]}


def _quote(text: str) -> str:
    # A literal ">" starts a quote; the text itself is already escaped, so it cannot add its own.
    return "\n".join("> " + line if line else ">" for line in text.split("\n"))


def _rubric_select(criterion: str, initial: int | None = None) -> dict[str, Any]:
    select: dict[str, Any] = {
        "type": "static_select",
        "action_id": f"{RUBRIC_ACTION_PREFIX}{criterion}",
        "placeholder": {"type": "plain_text", "text": f"{criterion.capitalize()} 1–5"},
        "options": [_option(criterion, score) for score in range(1, 6)],
    }
    if initial is not None:
        select["initial_option"] = _option(criterion, initial)
    return select


def _option(criterion: str, score: int) -> dict[str, Any]:
    return {"text": {"type": "plain_text", "text": f"{criterion.capitalize()}: {score}"}, "value": str(score)}


def review_card(card: ReviewCard) -> dict[str, Any]:
    """The reviewer channel's card for one reply: question, answer, facts, and the controls."""
    title = f"Review #{card.item_id}"
    if card.priority == "high":
        title += " · HIGH PRIORITY"
    facts = [
        f"Task: *{fit(card.task, 200)}*" if card.task else "Task: —",
        f"Adapter: {fit(card.adapter_version or 'base model', 200)}",
        f"Risk flags: {fit(', '.join(card.risk_flags), 1000) if card.risk_flags else 'none'}",
        _STATE_TEXT.get(card.state, escape(card.state)),
    ]
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": title}}]
    if card.thread:
        lines = [_quote(f"*{'Patient' if t.role == 'patient' else 'Shown'}:* " + fit(" ".join(t.text.split()), TURN_LIMIT))
                 for t in card.thread]
        earlier = fit_lines(lines, CARD_THREAD_LIMIT)
        if earlier:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "*Earlier in the conversation*\n" + earlier}})
    blocks += [
        {"type": "section", "text": {"type": "mrkdwn",
                                     "text": "*Patient asked*\n" + _excerpt(card.patient_text, CARD_PATIENT_LIMIT)}},
        {"type": "section", "text": {"type": "mrkdwn",
                                     "text": "*Reply*\n" + (fit(card.reply_text, CARD_REPLY_LIMIT) or " ")}},
        _context(facts),
    ]
    if card.hold_reason:
        blocks.append(_context([f":lock: *Held from the patient because* {fit(escape(card.hold_reason), 1900)}"]))
    if card.judge:
        blocks.append(_context([fit(card.judge, 2000)]))
    if card.decided_by:
        blocks.append(_context(["Decided by " + fit("; ".join(card.decided_by), 2000)]))
    if card.state == "pending":
        blocks.append({
            "type": "actions",
            "block_id": f"review_rubric:{card.item_id}",
            "elements": [_rubric_select(criterion) for criterion in RUBRIC_CRITERIA],
        })
        value = str(card.item_id)
        blocks.append({
            "type": "actions",
            "block_id": f"review_actions:{card.item_id}",
            "elements": [
                {"type": "button", "action_id": ACTION_APPROVE, "style": "primary", "value": value,
                 "text": {"type": "plain_text", "text": "Approve"}},
                {"type": "button", "action_id": ACTION_EDIT, "value": value,
                 "text": {"type": "plain_text", "text": "Edit"}},
                {"type": "button", "action_id": ACTION_REJECT, "style": "danger", "value": value,
                 "text": {"type": "plain_text", "text": "Reject"},
                 "confirm": {
                     "title": {"type": "plain_text", "text": "Reject this reply?"},
                     "text": {"type": "mrkdwn", "text": "The patient will see that a specialist withdrew it."},
                     "confirm": {"type": "plain_text", "text": "Reject"},
                     "deny": {"type": "plain_text", "text": "Cancel"},
                 }},
            ],
        })
        blocks.append(_context(["Approving or editing needs the three scores above. Or react with :x: to reject."]))
    text = f"{title}: {_STATE_TEXT.get(card.state, card.state)} — {fit(card.reply_text, 200)}"
    return {"text": text, "blocks": blocks}


def rubric_from_values(values: dict[str, Any]) -> Rubric:
    """Scores chosen in the card's or the modal's selects (``state.values``); invalid ones are dropped."""
    scores: dict[str, int] = {}
    for block in (values or {}).values():
        for action_id, element in (block or {}).items():
            if not action_id.startswith(RUBRIC_ACTION_PREFIX):
                continue
            criterion = action_id[len(RUBRIC_ACTION_PREFIX):]
            selected = (element or {}).get("selected_option") or {}
            try:
                score = int(selected.get("value", ""))
            except (TypeError, ValueError):
                continue
            if criterion in RUBRIC_CRITERIA and 1 <= score <= 5:
                scores[criterion] = score
    return Rubric(**scores)


def edit_block_id(index: int) -> str:
    return EDIT_BLOCK if index == 1 else f"{EDIT_BLOCK}_{index}"


def edit_modal(card: ReviewCard, metadata: dict[str, Any], rubric: Rubric) -> dict[str, Any] | None:
    """The Edit modal: the whole reply prefilled (in several inputs of at most 3,000 characters
    when it is longer; ``metadata["cuts"]`` joins them back, bot.text.split_for_editing), the
    rubric (required: Slack asks for it, and the app checks again on submit). None when the reply needs more inputs than the modal
    has (the caller says so: a reply is never cut silently)."""
    split = split_for_editing(card.reply_text, MODAL_INPUT_LIMIT, MAX_EDIT_PARTS)
    if split is None:
        return None
    parts, cuts = split
    metadata = {**metadata, "cuts": cuts}
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn",
                                     "text": "*Patient asked*\n" + _excerpt(card.patient_text, 600)}},
    ]
    for index, part in enumerate(parts, start=1):
        label = "Corrected reply" if len(parts) == 1 else f"Corrected reply, part {index} of {len(parts)}"
        block: dict[str, Any] = {
            "type": "input",
            "block_id": edit_block_id(index),
            "label": {"type": "plain_text", "text": label},
            "element": {
                "type": "plain_text_input",
                "action_id": EDIT_INPUT,
                "multiline": True,
                "initial_value": part,
                "max_length": MODAL_INPUT_LIMIT,
            },
        }
        if index == len(parts):
            block["hint"] = {"type": "plain_text", "text": "The patient's message is updated in place with this text"
                             + (" (the parts joined in order)." if len(parts) > 1 else ".")}
        blocks.append(block)
    for criterion in RUBRIC_CRITERIA:
        blocks.append({
            "type": "input",
            "block_id": f"{RUBRIC_BLOCK_PREFIX}{criterion}",
            "optional": False,  # an edit needs all three scores (reviewers.models.scores_needed)
            "label": {"type": "plain_text", "text": criterion.capitalize()},
            "element": _rubric_select(criterion, getattr(rubric, criterion)),
        })
    return {
        "type": "modal",
        "callback_id": EDIT_CALLBACK,
        "private_metadata": json.dumps(metadata),
        "title": {"type": "plain_text", "text": clip(f"Edit reply #{card.item_id}", 24)},
        "submit": {"type": "plain_text", "text": "Save edit"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": blocks,
    }


def edited_text(values: dict[str, Any], cuts: str) -> tuple[str, dict[str, str]]:
    """The edit a submitted modal carries (its parts joined back), and per-block errors."""
    parts: list[str] = []
    errors: dict[str, str] = {}
    for index in range(1, len(cuts) + 2):
        value = ((values.get(edit_block_id(index)) or {}).get(EDIT_INPUT) or {}).get("value") or ""
        if len(value) > MODAL_INPUT_LIMIT:
            errors[edit_block_id(index)] = f"This part is {len(value)} characters; the limit is {MODAL_INPUT_LIMIT}."
        parts.append(value)
    return join_edited(parts, cuts).strip(), errors


def forget_me_prompt() -> list[dict[str, Any]]:
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": (
            "This deletes everything this service stored about you on Slack: your messages, the replies, "
            "and any examples made from them. It cannot be undone."
        )}},
        {"type": "actions", "elements": [
            {"type": "button", "action_id": ACTION_FORGET_CONFIRM, "style": "danger", "value": "confirm",
             "text": {"type": "plain_text", "text": "Delete everything"}},
            {"type": "button", "action_id": ACTION_FORGET_CANCEL, "value": "cancel",
             "text": {"type": "plain_text", "text": "Cancel"}},
        ]},
    ]


FIELDS_MAX = 10  # section fields
FIELD_LIMIT = 2000


def report_blocks(report: "Report") -> list[dict[str, Any]]:
    """A report as Block Kit: a header, its text, then each table as a section whose fields are
    the rows (``*task*`` over ``model: accuracy [CI]`` lines), ten fields a section. Tables are
    never sent as ASCII text."""
    from bot.reports import table_fields

    out: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": clip(report.title, 150)}}]
    if report.text:
        out.append({"type": "section", "text": {"type": "mrkdwn", "text": clip(escape(report.text), SECTION_LIMIT)}})
    for table in report.tables:
        out.append({"type": "context", "elements": [{"type": "mrkdwn", "text": clip(escape(table.title), 2000)}]})
        fields = [{"type": "mrkdwn", "text": clip(f"*{escape(name)}*\n{escape(value)}", FIELD_LIMIT)}
                  for name, value in table_fields(table, 200, FIELD_LIMIT - 250)]
        for start in range(0, len(fields), FIELDS_MAX):
            out.append({"type": "section", "fields": fields[start:start + FIELDS_MAX]})
    return out[:50]
