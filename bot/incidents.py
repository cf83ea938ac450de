"""Crisis cases: the crisis path after triage, until a person has dealt with it (issue 14).

A crisis message opens a case (a row of ``incidents`` with ``kind = 'crisis'``). This module
holds what happens to a case, whatever the platform:

* **delivery is confirmed**: the crisis resources are posted in the conversation; if that is
  refused (no permission, closed DMs, an archived thread or channel), the other ways to reach
  the patient are tried in the order of :data:`CRISIS_ROUTES`; the case records which way
  worked, or every refusal;
* **the alert tells the truth**: the moderators' alert is written when it is posted, from the
  case as it is then (delivered, delivered another way, or "could NOT reach the patient"),
  with a link to the conversation.

The platforms only translate: each says which other routes exist for a conversation
(``crisis_routes``), posts by one of them (``send_via``) and makes a link (``conversation_link``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from bot.platform import ConversationRef, PatientView, Platform
from bot.storage import now

if TYPE_CHECKING:
    from bot.core import ConversationCore

log = logging.getLogger(__name__)

# How the crisis resources reach a patient, in the order tried: the conversation itself (its
# thread, the DM, or in place), then the conversation's channel (with a mention), then a direct
# message. A platform offers the ones that exist for a conversation (``crisis_routes``).
CRISIS_ROUTES = ("conversation", "channel", "dm")
ROUTE_WORDS = {"conversation": "in their conversation", "channel": "in the channel, mentioning them",
               "dm": "by direct message"}


def describe_error(platform: Platform, exc: BaseException) -> str:
    """One line saying why a post was refused, in the platform's own terms (never a token)."""
    explain = getattr(platform, "describe_error", None)
    text = explain(exc) if explain is not None else f"{exc}" or type(exc).__name__
    return text.replace("\n", " ")[:300]


class CrisisCases:
    def __init__(self, core: "ConversationCore"):
        self.core = core

    @property
    def db(self) -> Any:
        return self.core.db

    # ------------------------------------------------------------------ delivery

    async def deliver(self, incident_id: int, conv: ConversationRef, view: PatientView, platform: Platform) -> list[str]:
        """Post the crisis resources by the first route that works and record the outcome on the
        case. Raises the last refusal when no route worked (the outbox tries again later)."""
        routes = ["conversation", *[r for r in getattr(platform, "crisis_routes", lambda c: [])(conv)
                                    if r in CRISIS_ROUTES[1:]]]
        errors: list[str] = []
        last: BaseException | None = None
        redact = self.core.settings.redact
        for route in routes:
            try:
                if route == "conversation":
                    ids = await platform.send_to_patient(conv, view)
                else:
                    ids = await platform.send_via(conv, view, route)  # type: ignore[attr-defined]
            except Exception as exc:  # every refusal is recorded; the next route is tried
                last = exc
                errors.append(f"{route}: {redact(describe_error(platform, exc))}")
                log.warning("crisis case %s: the resources could not be posted: %s", incident_id, errors[-1])
                continue
            before = await self.db.fetchval("SELECT delivery FROM incidents WHERE id = ?", (incident_id,))
            await self.db.execute(
                "UPDATE incidents SET delivery = 'delivered', delivery_route = ?, delivery_error = ? WHERE id = ?",
                (route, "; ".join(errors) or None, incident_id))
            if route != "conversation":
                log.warning("crisis case %s: the resources reached the patient %s", incident_id, ROUTE_WORDS[route])
            if before == "failed":  # moderators were told we could not reach them: tell them it worked now
                await self.core.alert_moderators(
                    f"Crisis case #{incident_id}: the crisis resources have now reached the patient "
                    f"{ROUTE_WORDS[route]} (conversation {conv.id} on {conv.platform}).", key=f"crisis-reached:{incident_id}")
            return ids
        await self.db.execute("UPDATE incidents SET delivery = 'failed', delivery_error = ? WHERE id = ?",
                              ("; ".join(errors)[:1000], incident_id))
        log.error("crisis case %s: could NOT reach the patient (%s)", incident_id, "; ".join(errors))
        assert last is not None
        raise last

    # ------------------------------------------------------------------ the alert

    async def link(self, incident_id: int) -> str | None:
        """A link to the conversation for moderators (jump URL, permalink, console), kept on the case."""
        row = await self.db.fetchone(
            "SELECT i.link, m.platform_message_id, c.id AS conversation_id, c.platform, c.channel_id, c.thread_id,"
            " p.platform_user_id FROM incidents i JOIN conversations c ON c.id = i.conversation_id"
            " JOIN patients p ON p.id = c.patient_id LEFT JOIN messages m ON m.id = i.message_id WHERE i.id = ?",
            (incident_id,))
        if row is None:
            return None
        if row["link"]:
            return row["link"]
        link = None
        platform = self.core.platforms.get(row["platform"])
        make = getattr(platform, "conversation_link", None)
        if make is not None:
            conv = ConversationRef(row["conversation_id"], row["platform"], row["channel_id"], row["thread_id"],
                                   row["platform_user_id"])
            try:
                link = await make(conv, row["platform_message_id"])
            except Exception as exc:  # a link is a convenience: the alert goes out without it
                log.warning("crisis case %s: no link to the conversation (%s)", incident_id, exc)
        if link is None and self.core.settings.local.public_url:
            link = f"{self.core.settings.local.public_url.rstrip('/')}/#case-{incident_id}"
        if link:
            await self.db.execute("UPDATE incidents SET link = ? WHERE id = ?", (link, incident_id))
        return link

    async def alert_text(self, incident_id: int) -> str | None:
        """The moderators' alert for a case, from what is recorded now (None: the case is gone)."""
        row = await self.db.fetchone(
            "SELECT i.*, c.platform FROM incidents i LEFT JOIN conversations c ON c.id = i.conversation_id"
            " WHERE i.id = ?", (incident_id,))
        if row is None:
            return None
        where = f"conversation {row['conversation_id']} on {row['platform']}" if row["platform"] else row["detail"]
        if row["delivery"] == "delivered" and row["delivery_route"] == "conversation":
            delivery = "The patient was given crisis resources in their conversation."
        elif row["delivery"] == "delivered":
            delivery = (f"The crisis resources could not be posted in the conversation ({row['delivery_error']}); "
                        f"they reached the patient {ROUTE_WORDS.get(row['delivery_route'], row['delivery_route'])} instead.")
        elif row["delivery"] == "failed":
            delivery = (f"We could NOT reach the patient: the crisis resources were not delivered "
                        f"({row['delivery_error']}). Please contact them another way now; delivery is being retried.")
        else:
            delivery = "Delivery of the crisis resources to the patient is not confirmed yet."
        link = await self.link(incident_id)
        return " ".join([
            f"Crisis case #{incident_id} ({where}).", delivery,
            f"Conversation: {link}" if link else "",
            "Please look at it now. Later messages in this conversation are held for a person.",
        ]).replace("  ", " ").strip()
