"""What each kind of outbox effect is, and how it is applied (the core decides when).

Every applier derives what to show from the database as it is now, so applying an effect
twice, late, or after a newer one shows the same thing; nothing here decides a rule:

* ``patient_view`` — the patient's view of a reply (``ConversationCore.view_for``): an edit of
  the message ids stored on the reply, or a first send when none are stored yet;
* ``review_card`` — the card of a review item on one platform: an edit when the card is posted,
  a post when it is not and the effect is the first one (``post``);
* ``dataset_example`` — the expert example made from a closed review item (keyed by the item);
* ``alert`` — a message to moderators on one platform;
* ``crisis_alert`` — the urgent alert about a crisis case, written from the case as it is when
  posted (delivered, delivered another way, or could not reach the patient: bot.incidents);
* ``patient_notice`` — a service notice to the patient (crisis resources, expiry, a late answer);
  crisis resources (``incident_id`` in the payload) try the other routes when refused.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from bot.outbox import Effect, NotConnected
from bot.platform import ConversationRef, PatientView, Platform, ViewKind
from bot.reports import Report
from bot.storage import dumps, now

if TYPE_CHECKING:
    from bot.core import ConversationCore

PATIENT_VIEW = "patient_view"
REVIEW_CARD = "review_card"
DATASET_EXAMPLE = "dataset_example"
ALERT = "alert"
PATIENT_NOTICE = "patient_notice"
CRISIS_ALERT = "crisis_alert"


# ---------------------------------------------------------------------- effects (what to record)


def reply_view(reply_id: int, platform: str, stage: str) -> Effect:
    return Effect(PATIENT_VIEW, f"view:{reply_id}:{stage}", {"reply_id": reply_id}, platform, f"reply:{reply_id}")


def review_card(item_id: int, platform: str, stage: str, *, post: bool = False) -> Effect:
    return Effect(REVIEW_CARD, f"card:{item_id}:{platform}:{stage}", {"item_id": item_id, "post": post}, platform,
                  f"card:{item_id}:{platform}")


def dataset_example(item_id: int) -> Effect:
    return Effect(DATASET_EXAMPLE, f"dataset:{item_id}", {"item_id": item_id})


def alert(key: str, platform: str, text: str, urgent: bool, report: dict[str, Any] | None = None) -> Effect:
    """``report``: tables and a chart (``bot.reports.Report.to_dict``) shown with the text."""
    payload: dict[str, Any] = {"text": text, "urgent": urgent}
    if report:
        payload["report"] = report
    return Effect(ALERT, f"alert:{key}:{platform}", payload, platform)


def crisis_alert(incident_id: int, platform: str, stage: str = "new") -> Effect:
    return Effect(CRISIS_ALERT, f"alert:crisis-case:{incident_id}:{stage}:{platform}", {"incident_id": incident_id},
                  platform)


def patient_notice(key: str, conv: ConversationRef, view: PatientView, incident_id: int | None = None) -> Effect:
    payload: dict[str, Any] = {
        "conversation": dataclasses.asdict(conv),
        "view": {"kind": view.kind.value, "text": view.text, "label": view.label, "disclaimer": view.disclaimer}}
    if incident_id is not None:
        payload["incident_id"] = incident_id
    return Effect(PATIENT_NOTICE, f"notice:{key}", payload, conv.platform, f"conversation:{conv.id}")


# ---------------------------------------------------------------------- applying


class EffectApplier:
    def __init__(self, core: "ConversationCore"):
        self.core = core

    async def __call__(self, effect: Effect) -> None:
        handler = {
            PATIENT_VIEW: self._patient_view,
            REVIEW_CARD: self._review_card,
            DATASET_EXAMPLE: self._dataset_example,
            ALERT: self._alert,
            CRISIS_ALERT: self._crisis_alert,
            PATIENT_NOTICE: self._patient_notice,
        }.get(effect.kind)
        if handler is None:
            raise ValueError(f"unknown effect kind {effect.kind!r}")
        await handler(effect)

    def _platform(self, name: str | None) -> Platform:
        platform = self.core.platforms.get(name or "")
        if platform is None:
            raise NotConnected(f"{name} is not connected")
        return platform

    async def _patient_view(self, effect: Effect) -> None:
        db = self.core.db
        row = await db.fetchone(
            "SELECT r.id, r.text, r.delivery, r.platform_message_ids, r.conversation_id, i.state, i.final_text,"
            " c.platform, c.channel_id, c.thread_id, p.platform_user_id FROM replies r"
            " JOIN conversations c ON c.id = r.conversation_id JOIN patients p ON p.id = c.patient_id"
            " LEFT JOIN review_items i ON i.reply_id = r.id WHERE r.id = ?",
            (effect.payload["reply_id"],), here=True,
        )
        if row is None:
            return  # the patient asked to be forgotten: nothing left to show
        platform = self._platform(row["platform"])
        conv = ConversationRef(row["conversation_id"], row["platform"], row["channel_id"], row["thread_id"],
                               row["platform_user_id"])
        view = self.core.view_for(row["text"], row["delivery"], row["state"] or "pending", row["final_text"])
        ids = json.loads(row["platform_message_ids"] or "[]")
        if ids:
            new_ids = await platform.update_patient_message(conv, ids, view)
        else:
            new_ids = await platform.send_to_patient(conv, view)
        if new_ids and new_ids != ids:
            await db.execute("UPDATE replies SET platform_message_ids = ?, updated_at = ? WHERE id = ?",
                             (dumps(new_ids), now(), row["id"]), here=True)

    async def _review_card(self, effect: Effect) -> None:
        item_id = effect.payload["item_id"]
        name = effect.platform or ""
        found = await self.core.review_card_and_refs(item_id)
        if found is None:
            return  # forgotten
        card, refs = found
        platform = self._platform(name)
        if name in refs:
            await platform.update_review_card(dataclasses.replace(card, card_ref=refs[name]))
        elif effect.payload.get("post"):
            ref = await platform.post_review_card(card)
            if ref:
                await self.core.db.execute(
                    "UPDATE review_items SET card_ref = json_set(COALESCE(card_ref, '{}'), ?, ?) WHERE id = ?",
                    (f'$."{name}"', ref, item_id), here=True,
                )

    async def _dataset_example(self, effect: Effect) -> None:
        await self.core.add_to_dataset(effect.payload["item_id"])

    async def _alert(self, effect: Effect) -> None:
        platform = self._platform(effect.platform)
        report = Report.from_dict(effect.payload.get("report"))
        if report is None:
            await platform.alert(effect.payload["text"], bool(effect.payload["urgent"]))
        else:
            await platform.alert(effect.payload["text"], bool(effect.payload["urgent"]), report=report)

    async def _patient_notice(self, effect: Effect) -> None:
        conv = ConversationRef(**effect.payload["conversation"])
        view_data = effect.payload["view"]
        view = PatientView(ViewKind(view_data["kind"]), view_data["text"], view_data["label"], view_data["disclaimer"])
        platform = self._platform(effect.platform)
        if effect.payload.get("incident_id") is not None:  # crisis resources: other routes when refused
            await self.core.cases.deliver(int(effect.payload["incident_id"]), conv, view, platform)
        else:
            await platform.send_to_patient(conv, view)

    async def _crisis_alert(self, effect: Effect) -> None:
        platform = self._platform(effect.platform)
        text = await self.core.cases.alert_text(int(effect.payload["incident_id"]))
        if text is not None:
            await platform.alert(self.core.settings.redact(text), True)
