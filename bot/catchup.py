"""What patients wrote while the bot was away is answered when it comes back (issue 15).

Discord replays missed events only to a session that resumes, and Slack retries an event for a
few minutes; a restart or a longer outage loses the rest. So on (re)connect each platform asks
for the messages posted after the last one it stored — in the conversations it knows (updated in
the last ``CATCH_UP_DAYS``) and in the support channels it serves — and hands them to its
normal message path, oldest first.

At most once each: the core stores every patient message with its ``platform_message_id``; a
message already stored is skipped (:func:`is_stored`), and each platform also remembers the ids
it is handling, so a live event and the catch-up racing for the same message answer it once.

This module only reads the database; fetching and translating is the platforms' business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from bot.storage import Database, now

CATCH_UP_DAYS = 7.0
MAX_MESSAGES_PER_PLACE = 100  # per conversation or channel and catch-up; more is logged and left


@dataclass(frozen=True)
class Known:
    """A place to look for missed messages, and the newest message stored from it."""

    channel_id: str
    thread_id: str
    last_message_id: str


async def is_stored(db: Database, platform: str, platform_message_id: str, channel_id: str | None = None) -> bool:
    """Whether a patient message with this platform id is stored (``channel_id`` where ids are per channel)."""
    sql = ("SELECT 1 FROM messages m JOIN conversations c ON c.id = m.conversation_id"
           " WHERE c.platform = ? AND m.platform_message_id = ?")
    params: list[Any] = [platform, platform_message_id]
    if channel_id is not None:
        sql += " AND c.channel_id = ?"
        params.append(channel_id)
    return await db.fetchone(sql + " LIMIT 1", params) is not None


async def known_conversations(db: Database, platform: str, order: Callable[[str], Any],
                              days: float = CATCH_UP_DAYS) -> list[Known]:
    """Conversations on ``platform`` active in the last ``days``, each with its newest stored
    message (by ``order``: platform ids are not ordered as text on every platform)."""
    rows = await db.fetchall(
        "SELECT c.channel_id, c.thread_id, m.platform_message_id FROM conversations c"
        " JOIN messages m ON m.conversation_id = c.id"
        " WHERE c.platform = ? AND c.updated_at >= ? AND m.platform_message_id IS NOT NULL",
        (platform, now() - days * 86400),
    )
    newest: dict[tuple[str, str], str] = {}
    for channel_id, thread_id, message_id in rows:
        key = (channel_id, thread_id)
        if key not in newest or order(message_id) > order(newest[key]):
            newest[key] = message_id
    return [Known(channel, thread, last) for (channel, thread), last in sorted(newest.items())]


def newest_in_channel(known: list[Known], channel_id: str, order: Callable[[str], Any]) -> str | None:
    """The newest stored message among conversations started in ``channel_id`` (a support
    channel): new top-level questions are those posted after it."""
    ids = [k.last_message_id for k in known if k.channel_id == channel_id]
    return max(ids, key=order) if ids else None
