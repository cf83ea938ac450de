"""The local console as a platform: patients, reviewers and moderators in one browser page.

The database is the source of truth for what the console shows, so this platform only
assigns message ids, keeps recent alerts and notices for the page, and rings the live hub
(bot/live.py) when a review item or an alert arrives, so open pages update at once."""

from __future__ import annotations

import time
from collections import deque

from typing import Any

from bot.live import Hub
from bot.platform import ConversationRef, PatientView, PlatformHealth, ReviewCard

PLATFORM = "local"


class LocalPlatform:
    name = PLATFORM
    max_message_chars = 100_000

    def __init__(self) -> None:
        self.health = PlatformHealth("connected")  # no connection of its own: up while the process is
        self.alerts: deque[dict] = deque(maxlen=100)
        self.notices: dict[int, list[dict]] = {}  # conversation id -> service notices shown to the patient
        self.events: Hub | None = None  # set by the console (bot.local.web.make_app)

    def _publish(self, event: str, data: dict[str, Any]) -> None:
        if self.events is not None:
            self.events.publish(event, data)

    async def send_to_patient(self, conv: ConversationRef, view: PatientView) -> list[str]:
        if view.kind.value in ("notice", "consent", "crisis", "person"):
            self.notices.setdefault(conv.id, []).append({"kind": view.kind.value, "text": view.text, "label": view.label,
                                                         "at": time.time()})
        return []  # the console renders replies from the database; there is nothing to address later

    def where_visible(self, conv: ConversationRef) -> str:
        return "only this browser: the conversation is tied to it and nobody else can open it on this page."

    async def update_patient_message(self, conv: ConversationRef, message_ids: list[str], view: PatientView) -> list[str]:
        return message_ids

    async def post_review_card(self, card: ReviewCard) -> str | None:
        self._publish("review", {"item_id": card.item_id, "state": card.state, "priority": card.priority})
        return None  # the reviewer view lists pending items from the database

    async def update_review_card(self, card: ReviewCard) -> None:
        self._publish("review", {"item_id": card.item_id, "state": card.state, "priority": card.priority})

    async def alert(self, text: str, urgent: bool = False, report: Any = None) -> None:
        """Kept for the moderator view; ``report`` (bot.reports.Report) is shown as tables."""
        entry = {"text": text, "urgent": urgent, "at": time.time(),
                 "report": report.to_dict() if report is not None else None}
        self.alerts.append(entry)
        self._publish("alert", {"text": text, "urgent": urgent, "at": entry["at"]})
