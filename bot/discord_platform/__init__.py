"""Discord platform for LLM4Sweat (discord.py 2.x). See docs/discord.md for set-up."""

from bot.discord_platform.platform import (
    PLATFORM,
    DiscordPlatform,
    DiscordRunner,
    DiscordStartError,
    L4SClient,
    intents,
    start_discord,
)

__all__ = ["PLATFORM", "DiscordPlatform", "DiscordRunner", "DiscordStartError", "L4SClient", "intents", "start_discord"]
