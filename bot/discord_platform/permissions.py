"""The Discord permissions the bot's code needs, per kind of channel: one place for the invite
link (docs/discord.md), ``llm4sweat doctor`` and the tests.

Derived from what the platform module does (bot/discord_platform/platform.py):

- **support channels** (and every text channel of a support category): read patients'
  messages, make a thread from each question (*Create Public Threads*), answer in it (*Send
  Messages in Threads*), or in place with a reply reference when no thread can be made (*Send
  Messages*, *Read Message History*, which also lets it read a thread's first message after a
  restart), and show *typing…* (*Send Messages*);
- **the reviewer channel**: post review cards as embeds (*Embed Links*), edit them (own
  messages need nothing more), find them again after a restart (*Read Message History*), and
  take back a ✅ / ❌ put on a card by someone who is not a reviewer (*Manage Messages*);
- **the alert channel** (the reviewer channel unless set): post alerts that mention the
  moderator role. A role mention pings only if the role is *mentionable* or the bot has
  *Mention Everyone* (which the bot never uses to ping @everyone: its allowed mentions name
  the moderator role only).

The bot adds no reactions and attaches no files, so it does not ask for those permissions.
"""

from __future__ import annotations

import discord

SUPPORT = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    create_public_threads=True,
    read_message_history=True,
)
REVIEWER = discord.Permissions(
    view_channel=True,
    send_messages=True,
    embed_links=True,
    read_message_history=True,
    manage_messages=True,
)
ALERT = discord.Permissions(view_channel=True, send_messages=True)
# Needed in the alert channel unless the moderator role is mentionable.
MENTION = discord.Permissions(mention_everyone=True)

NEEDS: dict[str, discord.Permissions] = {"support": SUPPORT, "reviewer": REVIEWER, "alert": ALERT}


def invite_permissions(mention_everyone: bool = True) -> discord.Permissions:
    """The permissions integer for the invite link: everything any configured channel needs."""
    value = discord.Permissions.none()
    for needed in NEEDS.values():
        value |= needed
    if mention_everyone:
        value |= MENTION
    return value


def names(permissions: discord.Permissions) -> list[str]:
    """Permission names as Discord's settings show them (``view_channel`` → *View Channel*)."""
    shown = {"read_messages": "View Channel", "view_channel": "View Channel",
             "send_messages_in_threads": "Send Messages in Threads"}
    return [shown.get(name, name.replace("_", " ").title()) for name, on in permissions if on]


def missing(have: discord.Permissions, needed: discord.Permissions) -> discord.Permissions:
    """What ``needed`` asks for that ``have`` lacks."""
    return discord.Permissions(needed.value & ~have.value)
