"""The local console as a platform: patients, reviewers and moderators in one browser page.

The database is the source of truth for what the console shows, so this platform only
assigns message ids and keeps recent alerts and notices for the page to poll."""

from __future__ import annotations

import time
from collections import deque

from bot.platform import ConversationRef, PatientView, PlatformHealth, ReviewCard

PLATFORM = "local"


class LocalPlatform:
    name = PLATFORM
    max_message_chars = 100_000

    def __init__(self) -> None:
        self.health = PlatformHealth("connected")  # no connection of its own: up while the process is
        self.alerts: deque[dict] = deque(maxlen=100)
        self.notices: dict[int, list[dict]] = {}  # conversation id -> service notices shown to the patient

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
        return None  # the reviewer view lists pending items from the database

    async def update_review_card(self, card: ReviewCard) -> None:
        return None

    async def alert(self, text: str, urgent: bool = False) -> None:
        self.alerts.append({"text": text, "urgent": urgent, "at": time.time()})
