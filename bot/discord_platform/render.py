"""How the core's views and review cards look on Discord (pure functions, no I/O).

Patient messages: the reply text as Markdown, then one small grey line (Discord's ``-#``
subtext) with the label and the disclaimer, only on the last part of a split reply. Every part
is at most 2,000 characters and is cut by :func:`bot.text.split_message` (never mid-word,
fenced code closed and reopened).

Review cards: one embed (patient message, reply, task, risk flags, adapter, state, who decided)
and persistent components whose custom ids carry the review item id, so they keep working
after a restart:

    l4s:approve:<item>   l4s:edit:<item>   l4s:reject:<item>   l4s:rate:<criterion>:<item>

The Edit form (modal) is ``l4s:editform:<item>[:<cuts>]`` with one paragraph input
``l4s:edittext`` per part of the reply (``l4s:edittext:2`` … for the second and later parts): a
modal holds five inputs of 4,000 characters, so a longer reply is split into parts at paragraph,
line or word boundaries, and ``<cuts>`` records what was removed at each cut
(bot.text.split_for_editing) so that the parts join back exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import discord

from bot.platform import PatientView, ReviewCard, ViewKind
from bot.text import fit_lines, join_edited, split_for_editing, split_message
from reviewers.models import RUBRIC_CRITERIA

if TYPE_CHECKING:
    from bot.reports import Report

MAX_MESSAGE_CHARS = 2000
EMBED_DESCRIPTION_CHARS = 4096
EMBED_FIELD_CHARS = 1024
EMBED_TOTAL_CHARS = 6000  # all text of a message's embeds together
EMBED_TITLE_CHARS = 256
TURN_CHARS = 400  # one earlier turn on a card, at most
REPLY_IN_CARD_CHARS = 3500  # leaves room in the 6,000-character embed total for the other fields
MAX_EDIT_CHARS = 4000  # one text input
MAX_EDIT_PARTS = 5  # inputs in one modal

ID_PREFIX = "l4s"
APPROVE_TEMPLATE = r"l4s:approve:(?P<item>[0-9]+)"
EDIT_TEMPLATE = r"l4s:edit:(?P<item>[0-9]+)"
REJECT_TEMPLATE = r"l4s:reject:(?P<item>[0-9]+)"
RATE_TEMPLATE = r"l4s:rate:(?P<criterion>accuracy|appropriateness|empathy):(?P<item>[0-9]+)"
EDIT_FORM_PREFIX = "l4s:editform:"
EDIT_TEXT_ID = "l4s:edittext"

APPROVE_EMOJI = "\N{WHITE HEAVY CHECK MARK}"
REJECT_EMOJI = "\N{CROSS MARK}"

_KIND_ICON = {
    ViewKind.PENDING_REVIEW: "\N{MANTELPIECE CLOCK}\ufe0f",
    ViewKind.UNDER_REVIEW: "\N{MANTELPIECE CLOCK}\ufe0f",
    ViewKind.REVIEWED: "\N{STETHOSCOPE}",
}

_STATE_COLOUR = {
    "pending": discord.Colour.blurple(),
    "approved": discord.Colour.green(),
    "edited": discord.Colour.teal(),
    "rejected": discord.Colour.red(),
    "expired": discord.Colour.light_grey(),
}

CRITERION_LABEL = {
    "accuracy": "Accuracy",
    "appropriateness": "Appropriateness",
    "empathy": "Empathy",
}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def footer(view: PatientView) -> str:
    """The small grey line under a reply: label and disclaimer, or nothing."""
    bits = [b for b in (_one_line(view.label), _one_line(view.disclaimer)) if b]
    if not bits:
        return ""
    icon = _KIND_ICON.get(view.kind)
    line = " · ".join(bits)
    return f"-# {icon} {line}" if icon else f"-# {line}"


def patient_parts(view: PatientView, limit: int = MAX_MESSAGE_CHARS) -> list[str]:
    """The messages that show ``view`` to a patient, in order, each at most ``limit`` characters."""
    foot = footer(view)
    if len(foot) > limit // 2:  # an absurdly long disclaimer must not crowd out the answer
        foot = foot[: limit // 2 - 1].rstrip() + "…"
    parts = split_message(view.text, limit) if view.text.strip() else []
    if not foot:
        return parts or ["\u200b"]
    if not parts:
        return [foot]
    room = limit - len(foot) - 2
    if len(parts[-1]) > room:
        parts = parts[:-1] + split_message(parts[-1], room)
    parts[-1] = f"{parts[-1]}\n\n{foot}"
    return parts


def truncate(text: str, limit: int, note: str = "…") -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    cut = text[: limit - len(note)]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip() + note


THREAD_FIELD = "Earlier in the conversation"


def card_embed(card: ReviewCard) -> discord.Embed:
    """The card: the reply (the most room), the patient's message, the earlier turns in the room
    left (older turns shortened first; never the reply), then the facts. Within Discord's embed
    limits, 6,000 characters in all."""
    state = card.state
    title = f"Review #{card.item_id} · {card.task}"
    if card.priority == "high":
        title = "\N{LARGE RED CIRCLE} " + title + " · high priority"
    title = truncate(title, EMBED_TITLE_CHARS)
    reply = truncate(card.reply_text, REPLY_IN_CARD_CHARS, " … (cut here; Edit shows the whole reply)")
    embed = discord.Embed(
        title=title,
        description=f"**Reply**\n{reply}",
        colour=discord.Colour.orange() if card.priority == "high" and state == "pending" else _STATE_COLOUR.get(state),
    )
    embed.add_field(name="Patient asked", value=truncate(card.patient_text, EMBED_FIELD_CHARS) or "(empty)", inline=False)
    embed.add_field(name="Task", value=truncate(card.task or "unknown", EMBED_FIELD_CHARS))
    embed.add_field(name="Risk flags", value=truncate(", ".join(card.risk_flags) or "none", EMBED_FIELD_CHARS))
    embed.add_field(name="Adapter", value=truncate(card.adapter_version or "base model", EMBED_FIELD_CHARS))
    if card.hold_reason:
        embed.add_field(name="Held from the patient because", value=truncate(card.hold_reason, EMBED_FIELD_CHARS),
                        inline=False)
    if card.judge:
        embed.add_field(name="First reading", value=truncate(card.judge, EMBED_FIELD_CHARS), inline=False)
    decided = "\n".join(card.decided_by) if card.decided_by else "nobody yet"
    embed.add_field(name=f"State: {state}", value=truncate(decided, EMBED_FIELD_CHARS), inline=False)
    if state == "pending":
        embed.set_footer(text="Approve, Edit or Reject below (or react ✅ / ❌). Rubric scores chosen first are "
                              "recorded with your decision.")
    else:
        embed.set_footer(text="Closed. The patient sees the outcome.")
    if card.thread:
        room = min(EMBED_FIELD_CHARS, EMBED_TOTAL_CHARS - len(embed) - len(THREAD_FIELD) - 10)
        lines = [f"**{'Patient' if t.role == 'patient' else 'Shown'}:** {truncate(t.text, TURN_CHARS)}" for t in card.thread]
        earlier = fit_lines(lines, room)
        if earlier:
            embed.insert_field_at(0, name=THREAD_FIELD, value=earlier, inline=False)
    return embed


def card_components(item_id: int, open_: bool) -> discord.ui.View | None:
    """Persistent components of a card; a closed card has none."""
    if not open_:
        return None
    from bot.discord_platform.components import ApproveButton, EditButton, RateSelect, RejectButton

    view = discord.ui.View(timeout=None)
    view.add_item(ApproveButton(item_id))
    view.add_item(EditButton(item_id))
    view.add_item(RejectButton(item_id))
    for row, criterion in enumerate(RUBRIC_CRITERIA, start=1):
        view.add_item(RateSelect(item_id, criterion, row=row))
    return view


def consent_components() -> discord.ui.View:
    """The "I agree" / "No" buttons under the consent notice (persistent: they work after a restart)."""
    from bot.discord_platform.components import ConsentButton

    view = discord.ui.View(timeout=None)
    view.add_item(ConsentButton(True))
    view.add_item(ConsentButton(False))
    return view


def edit_form(item_id: int, reply_text: str, scores: str = "") -> discord.ui.Modal | None:
    """The Edit form with the whole reply, in up to five parts; None when it does not fit (the
    caller says so and points to the console: a reply is never cut silently). ``scores``, the
    rubric chosen on the card (digits in rubric order), travels in the form's custom id, so a
    form submitted after a restart still carries them."""
    split = split_for_editing(reply_text, MAX_EDIT_CHARS, MAX_EDIT_PARTS)
    if split is None:
        return None
    parts, cuts = split
    custom_id = f"{EDIT_FORM_PREFIX}{item_id}" + (f":{cuts}" if cuts else "") + (f"/{scores}" if scores else "")
    modal = discord.ui.Modal(title=f"Edit reply #{item_id}", custom_id=custom_id, timeout=900)
    for index, part in enumerate(parts, start=1):
        text = discord.ui.TextInput(
            style=discord.TextStyle.paragraph,
            custom_id=edit_text_id(index),
            default=part,
            min_length=1,
            max_length=MAX_EDIT_CHARS,
            required=True,
        )
        if len(parts) == 1:
            label, description = "Reply the patient will see", "Your edit replaces the AI reply and is recorded for training."
        else:
            label = f"Reply the patient will see, part {index} of {len(parts)}"
            description = ("The parts are joined in order. Your edit replaces the AI reply and is recorded for "
                           "training." if index == 1 else "Continues the part above.")
        modal.add_item(discord.ui.Label(text=label, description=description, component=text))
    return modal


def edit_text_id(index: int) -> str:
    return EDIT_TEXT_ID if index == 1 else f"{EDIT_TEXT_ID}:{index}"


def form_scores(custom_id: str) -> str:
    """The rubric digits an Edit form's custom id carries ("" when none)."""
    return custom_id.partition("/")[2] if custom_id.startswith(EDIT_FORM_PREFIX) else ""


def parse_edit_form(custom_id: str, value_of: "Callable[[str], str | None]") -> tuple[int, str] | None:
    """(item id, the edited reply) from a submitted Edit form, its parts joined back; None if it
    is not one of ours. ``value_of`` gives an input's value by custom id."""
    if not custom_id.startswith(EDIT_FORM_PREFIX):
        return None
    item, _, cuts = custom_id[len(EDIT_FORM_PREFIX):].partition("/")[0].partition(":")
    if not item.isdigit():
        return None
    parts = [value_of(edit_text_id(index)) or "" for index in range(1, len(cuts) + 2)]
    return int(item), join_edited(parts, cuts)


EMBED_FIELDS_MAX = 25
CHART_FILENAME = "chart.png"


def report_embeds(report: "Report", with_image: bool) -> list[discord.Embed]:
    """A report as embeds: its text as the description, each table row as one inline field
    (``task`` over ``model: accuracy [CI]`` lines), the chart as the first embed's image
    (``attachment://chart.png``, sent with the message). Within Discord's limits: 25 fields an
    embed, 1,024 characters a field, 6,000 characters in all; a table that does not fit is cut
    with a note, never sent as ASCII text."""
    from bot.reports import table_fields

    embeds: list[discord.Embed] = []
    used = 0
    for n, table in enumerate(report.tables or [None]):  # type: ignore[list-item]
        title = truncate(report.title if n == 0 else table.title, EMBED_TITLE_CHARS)
        description = ""
        if n == 0:
            description = truncate("\n".join(x for x in (report.text, table.title if table else "") if x),
                                   min(EMBED_DESCRIPTION_CHARS, 2000))
        embed = discord.Embed(title=title, description=description or None, colour=discord.Colour.blurple())
        used += len(title) + len(description)
        fields = table_fields(table, EMBED_TITLE_CHARS, EMBED_FIELD_CHARS) if table else []
        for name, value in fields[:EMBED_FIELDS_MAX]:
            if used + len(name) + len(value) > EMBED_TOTAL_CHARS - 100:
                embed.set_footer(text="More rows than a message holds: see the console or `llm4sweat eval`.")
                break
            embed.add_field(name=name, value=value, inline=True)
            used += len(name) + len(value)
        if n == 0 and with_image:
            embed.set_image(url=f"attachment://{CHART_FILENAME}")
        embeds.append(embed)
    return embeds[:10]
