"""A local platform that records what the core hands it, and can be told to fail.

The console platform keeps nothing about replies (it reads them from the database), so core
tests that count deliveries, edits, cards and alerts use this subclass at the same boundary."""

from __future__ import annotations

import itertools

from bot.local.platform import LocalPlatform
from bot.platform import ConversationRef, PatientView, ReviewCard


class PlatformDown(RuntimeError):
    """What a failing platform raises (like a 5xx or a dropped connection)."""


class RecordingPlatform(LocalPlatform):
    def __init__(self, name: str = "local") -> None:
        super().__init__()
        self.name = name
        self._ids = itertools.count(1)
        self.sent: list[tuple[int, PatientView, list[str]]] = []  # (conversation id, view, ids)
        self.edited: list[tuple[int, list[str], PatientView]] = []
        self.cards_posted: list[ReviewCard] = []
        self.cards_updated: list[ReviewCard] = []
        self.fail_sends = False
        self.fail_edits = False
        self.fail_cards = False
        self.fail_alerts = False

    async def send_to_patient(self, conv: ConversationRef, view: PatientView) -> list[str]:
        if self.fail_sends:
            raise PlatformDown("send failed")
        await super().send_to_patient(conv, view)
        ids = [f"m{next(self._ids)}"]
        self.sent.append((conv.id, view, ids))
        return ids

    async def update_patient_message(self, conv: ConversationRef, message_ids: list[str], view: PatientView) -> list[str]:
        if self.fail_edits:
            raise PlatformDown("edit failed")
        self.edited.append((conv.id, list(message_ids), view))
        return message_ids

    async def post_review_card(self, card: ReviewCard) -> str | None:
        if self.fail_cards:
            raise PlatformDown("card post failed")
        self.cards_posted.append(card)
        return f"card{card.item_id}"

    async def update_review_card(self, card: ReviewCard) -> None:
        if self.fail_cards:
            raise PlatformDown("card update failed")
        self.cards_updated.append(card)

    async def alert(self, text: str, urgent: bool = False, report=None) -> None:
        if self.fail_alerts:
            raise PlatformDown("alert failed")
        await super().alert(text, urgent, report)

    def replies_sent(self, conversation_id: int | None = None) -> list[PatientView]:
        """Views of replies (not notices) sent, optionally in one conversation."""
        return [view for conv, view, _ in self.sent
                if view.kind.value not in ("notice", "consent", "crisis") and conversation_id in (None, conv)]
