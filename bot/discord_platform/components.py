"""Persistent review-card components.

Each is a :class:`discord.ui.DynamicItem` whose custom id carries the review item id, so the
library routes a click on any card (also one posted before a restart) to these classes once
they are registered with ``client.add_dynamic_items`` at start-up. The callbacks only hand
the click to the platform (``interaction.client.platform``), which translates it for the core.
"""

from __future__ import annotations

import re
from typing import Any

import discord

from bot.discord_platform import render
from reviewers.models import Action


def _platform(interaction: discord.Interaction) -> Any:
    return interaction.client.platform  # type: ignore[attr-defined]


class _DecisionButton(discord.ui.DynamicItem[discord.ui.Button], template=r"l4s:(?P<action>approve|reject):(?P<item>[0-9]+)"):
    """Approve and Reject share one template; the action is part of the custom id."""

    def __init__(self, item_id: int, action: Action) -> None:
        style = discord.ButtonStyle.success if action is Action.APPROVE else discord.ButtonStyle.danger
        label = "Approve" if action is Action.APPROVE else "Reject"
        super().__init__(discord.ui.Button(label=label, style=style, custom_id=f"l4s:{action.value}:{item_id}", row=0))
        self.item_id = item_id
        self.action = action

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /):
        return cls(int(match["item"]), Action(match["action"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await _platform(interaction).on_decision_click(interaction, self.item_id, self.action)


def ApproveButton(item_id: int) -> _DecisionButton:  # noqa: N802 - reads like a class at the call site
    return _DecisionButton(item_id, Action.APPROVE)


def RejectButton(item_id: int) -> _DecisionButton:  # noqa: N802
    return _DecisionButton(item_id, Action.REJECT)


class EditButton(discord.ui.DynamicItem[discord.ui.Button], template=render.EDIT_TEMPLATE):
    def __init__(self, item_id: int) -> None:
        super().__init__(discord.ui.Button(label="Edit", style=discord.ButtonStyle.primary,
                                           custom_id=f"l4s:edit:{item_id}", row=0))
        self.item_id = item_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /):
        return cls(int(match["item"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await _platform(interaction).on_edit_click(interaction, self.item_id)


class RateSelect(discord.ui.DynamicItem[discord.ui.Select], template=render.RATE_TEMPLATE):
    def __init__(self, item_id: int, criterion: str, row: int | None = None) -> None:
        label = render.CRITERION_LABEL[criterion]
        select = discord.ui.Select(
            custom_id=f"l4s:rate:{criterion}:{item_id}",
            placeholder=f"{label} (1–5)",
            min_values=1,
            max_values=1,
            options=[discord.SelectOption(label=f"{label}: {n}", value=str(n)) for n in range(1, 6)],
            row=row,
        )
        super().__init__(select, row=row)
        self.item_id = item_id
        self.criterion = criterion

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /):
        return cls(int(match["item"]), match["criterion"], row=item.row)

    async def callback(self, interaction: discord.Interaction) -> None:
        values = (interaction.data or {}).get("values") or []
        await _platform(interaction).on_rate(interaction, self.item_id, self.criterion, values[0] if values else None)


class ConsentButton(discord.ui.DynamicItem[discord.ui.Button], template=r"l4s:consent:(?P<choice>agree|decline)"):
    """Under the consent notice: the answer is recorded for whoever presses it (bot.consent)."""

    def __init__(self, agree: bool) -> None:
        from bot.consent import AGREE_LABEL, DECLINE_LABEL

        super().__init__(discord.ui.Button(
            label=AGREE_LABEL if agree else DECLINE_LABEL,
            style=discord.ButtonStyle.success if agree else discord.ButtonStyle.secondary,
            custom_id=f"l4s:consent:{'agree' if agree else 'decline'}"))
        self.agree = agree

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /):
        return cls(match["choice"] == "agree")

    async def callback(self, interaction: discord.Interaction) -> None:
        await _platform(interaction).on_consent_click(interaction, self.agree)


DYNAMIC_ITEMS = (_DecisionButton, EditButton, RateSelect, ConsentButton)
