"""Consent to training use, asked and recorded truthfully (issue 12 item 5).

A patient is asked once, on first contact, with a notice that says where the conversation is
visible (the platform says: a thread in a channel, a direct message, this browser), who reviews
it and on which platforms (``review.platforms``), and how long it is kept
(``privacy.retention_days``). Nothing from a patient enters training until they agree:
``patients.consent`` is 1 only after an explicit "I agree" (a button, or the words, on every
platform and the console); "I do not agree" records a clear no (``consent`` 0 with
``consent_at`` set) and the patient keeps using the service exactly as before. Either answer
can be changed at any time; ``/forget-me`` deletes everything.

The dataset's guards read ``patients.consent`` (pipeline/dataset.py): an expert example of a
patient who declined is not stored, and only examples of patients who agreed are exported.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Iterable

from bot.storage import now

AGREE_LABEL = "I agree"
DECLINE_LABEL = "No, not for training"

_AGREE = re.compile(r"^\s*[\"“']?\s*[/!]?\s*(?:yes,?\s+)?i\s+agree\s*[\"”']?\s*[.!]*\s*$|^\s*[/!]agree\s*$", re.I)
_DECLINE = re.compile(
    r"^\s*[\"“']?\s*[/!]?\s*(?:no,?\s+)?i\s+(?:do\s+not|don[’']?t)\s+agree\s*[\"”']?\s*[.!]*\s*$"
    r"|^\s*[/!]decline\s*$", re.I)

CONFIRM_AGREE = (
    "Thank you. Your messages and the answers specialists approve may now be used, with details that identify "
    "you removed, to train this assistant. You can change your mind at any time: reply “I do not agree”, or "
    "type /forget-me to delete everything."
)
CONFIRM_DECLINE = (
    "Understood: nothing you write here will be used to train the assistant. You can keep asking questions "
    "as before; specialists still check my answers. Reply “I agree” if you change your mind, or type "
    "/forget-me to delete everything."
)
NOT_THE_PATIENT = "This choice is for the person who asked here; nothing was changed for you."

REVIEW_PLACES = {
    "discord": "in the reviewers' channel on Discord",
    "slack": "in the reviewers' channel in Slack",
}


def choice_of(text: str) -> bool | None:
    """True for "I agree", False for "I do not agree" (or /agree, /decline), None otherwise."""
    if _AGREE.match(text or ""):
        return True
    if _DECLINE.match(text or ""):
        return False
    return None


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def review_text(card_platforms: Iterable[str], console: bool) -> str:
    """Who reads the conversation to check answers, and where."""
    places = [REVIEW_PLACES[name] for name in card_platforms if name in REVIEW_PLACES]
    if console:
        places.append("in the service's web console, to signed-in reviewers")
    where = _join(places) if places else "by the service's operators"
    return f"Medical and psychological specialists check my answers and read your messages to do so: {where}."


def _own_host(host: str | None) -> bool:
    """A host run by the service itself: this machine, a name inside the deployment (compose
    service names have no dot), or a private address."""
    import ipaddress

    if not host or "." not in host:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost"
    return address.is_private or address.is_loopback


def outside_text(services: Iterable[tuple[str, str]]) -> str | None:
    """Who outside the service also receives the patient's messages: (URL, what for) pairs of
    the services configured (the model server, an LLM judge, remote safety checks); None when
    every one of them runs inside the deployment."""
    from urllib.parse import urlparse

    seen: dict[str, str] = {}
    for url, purpose in services:
        host = urlparse(url).hostname
        if not _own_host(host) and host not in seen:
            seen[host] = purpose
    if not seen:
        return None
    return "Your messages are also sent to " + _join([f"{host} ({purpose})" for host, purpose in seen.items()]) + "."


CHAT_NAMES = {"discord": "Discord", "slack": "Slack"}


def retention_text(days: int | None, platform: str = "") -> str:
    """How long the conversation is kept, as the service actually does it, and the copy a chat
    platform keeps of what was posted there."""
    if not days:
        text = "Your messages and my replies are stored until you delete them with /forget-me."
    else:
        text = (f"Your messages and my replies are stored, and deleted automatically {days} days after the "
                "conversation's last message; /forget-me deletes everything sooner.")
    if platform in CHAT_NAMES:
        text += (f" What is posted in this chat also stays on {CHAT_NAMES[platform]} under its own rules: you can "
                 "delete your messages there, and /forget-me deletes mine.")
    return text


def notice(title: str, visible: str, review: str, retention: str, dm_hint: bool, outside: str | None = None) -> str:
    """The first-contact notice: what is stored, where it is seen, for how long, and the question."""
    text = (
        f"Welcome. I'm an AI assistant for people living with {title}.\n"
        f"• Who can see this conversation: {visible}\n"
        f"• {review}\n"
        + (f"• {outside}\n" if outside else "")
        + f"• {retention}\n"
        "• Training: only if you agree, your messages and the answers specialists approve are used, with details "
        "that identify you removed, to train this assistant. Press “I agree” or reply “I agree”; press "
        "“No, not for training” or reply “I do not agree” to use the service without that. You can change "
        "your mind at any time."
    )
    if dm_hint:
        text += "\nIn a direct message, type “new conversation” to start afresh."
    return text


def ask(conn: sqlite3.Connection, patient_id: int, t: float) -> bool:
    """Mark the patient as asked; True if they had not been asked before (show the notice now)."""
    return conn.execute(
        "UPDATE patients SET consent_asked_at = ? WHERE id = ? AND consent_asked_at IS NULL", (t, patient_id)
    ).rowcount == 1


def record(conn: sqlite3.Connection, platform: str, user_id: str, agree: bool, *, display_name: str = "",
           create: bool = True) -> bool:
    """Record the patient's answer (made if new and ``create``); False when there is no such patient."""
    t = now()
    if create:
        conn.execute(
            "INSERT INTO patients (platform, platform_user_id, display_name, consent, consent_at, consent_asked_at,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (platform, platform_user_id)"
            " DO UPDATE SET consent = excluded.consent, consent_at = excluded.consent_at,"
            " consent_asked_at = COALESCE(consent_asked_at, excluded.consent_asked_at)",
            (platform, user_id, display_name or None, int(agree), t, t, t),
        )
        return True
    return conn.execute(
        "UPDATE patients SET consent = ?, consent_at = ?, consent_asked_at = COALESCE(consent_asked_at, ?)"
        " WHERE platform = ? AND platform_user_id = ?", (int(agree), t, t, platform, user_id)
    ).rowcount == 1


def state(row: sqlite3.Row | None) -> str:
    """``agreed``, ``declined`` or ``not_asked`` / ``asked`` for a patients row (or None)."""
    if row is None:
        return "not_asked"
    if row["consent"]:
        return "agreed"
    if row["consent_at"] is not None:
        return "declined"
    return "asked" if row["consent_asked_at"] is not None else "not_asked"
