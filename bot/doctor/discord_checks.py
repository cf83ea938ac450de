"""Discord: the token, the application's settings, and in every configured channel the
permissions the bot's code needs (bot/discord_platform/permissions.py), computed by
discord.py itself from the guild's roles, the bot's roles and the channel's overwrites.

Only REST calls (no gateway session), through discord.py's own client, so what is checked is
what the running bot sees.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import discord

from bot.discord_platform import permissions as perms
from bot.doctor.report import Check, fail, ok
from bot.settings import DiscordSettings

TIMEOUT_S = 20.0
INVITE_FIX = ("re-invite the bot with the link in docs/discord.md (scopes bot + applications.commands, "
              f"permissions {perms.invite_permissions().value})")


@dataclass
class _Channel:
    channel_id: int
    purposes: list[str] = field(default_factory=list)  # support, reviewer, alert


async def check_discord(cfg: DiscordSettings) -> list[Check]:
    if cfg.token is None:
        return []
    client = discord.Client(intents=discord.Intents.none())
    try:
        return await asyncio.wait_for(_checks(client, cfg), TIMEOUT_S)
    except asyncio.TimeoutError:
        return [fail("discord.reachable", f"Discord did not answer within {TIMEOUT_S:.0f} s",
                     "check this machine reaches discord.com (proxy, firewall, DNS)")]
    except (discord.HTTPException, OSError) as exc:
        return [fail("discord.reachable", f"{type(exc).__name__}: {exc}",
                     "check this machine reaches discord.com (proxy, firewall, DNS)")]
    finally:
        with contextlib.suppress(Exception):
            await client.close()


async def _checks(client: discord.Client, cfg: DiscordSettings) -> list[Check]:
    try:
        await client.login(cfg.token.get_secret_value())  # type: ignore[union-attr]
    except discord.LoginFailure:
        return [fail("discord.token", "Discord refused the bot token (401)",
                     "Developer Portal → your app → Bot → Reset Token, then set LLM4SWEAT_DISCORD__TOKEN "
                     "and restart (docs/discord.md, token rotation)")]
    me = client.user
    assert me is not None
    checks = [ok("discord.token", f"valid: bot {me} (id {me.id})"), _configuration(cfg)]
    checks += _application_checks(client.application)
    checks += await _guild_checks(client, cfg, me.id)
    return checks


def _configuration(cfg: DiscordSettings) -> Check:
    """A token with no place to answer makes a bot that answers nobody (the example settings)."""
    if not cfg.support_channel_ids and not cfg.support_category_ids and not cfg.allow_dms:
        return fail("discord.configuration", "no support channels or categories and DMs off: the bot answers nobody",
                    "set discord.support_channel_ids (or support_category_ids, or allow_dms) in the settings file "
                    "the service reads (compose: deploy/llm4sweat.toml)")
    where = [f"{len(cfg.support_channel_ids)} support channel(s)", f"{len(cfg.support_category_ids)} categories",
             "DMs" if cfg.allow_dms else "no DMs"]
    review = "review cards in the reviewer channel" if cfg.reviewer_channel_id else "no reviewer channel (no cards on Discord)"
    return ok("discord.configuration", f"answers in {', '.join(where)}; {review}")


def _application_checks(app: discord.AppInfo | None) -> list[Check]:
    if app is None:
        return []
    checks = []
    flags = app.flags
    if flags.gateway_message_content or flags.gateway_message_content_limited:
        checks.append(ok("discord.intents", "Message Content intent enabled"))
    else:
        checks.append(fail("discord.intents", "the Message Content intent is off: the bot cannot read what patients write",
                           "Developer Portal → your app → Bot → Privileged Gateway Intents → turn on Message Content Intent"))
    if app.interactions_endpoint_url:
        checks.append(fail("discord.interactions_url",
                           "an Interactions Endpoint URL is set: buttons and slash commands go there, not to the bot",
                           "Developer Portal → your app → General Information → clear Interactions Endpoint URL"))
    else:
        checks.append(ok("discord.interactions_url", "not set (interactions reach the bot)"))
    return checks


def _configured_channels(cfg: DiscordSettings) -> dict[int, _Channel]:
    channels: dict[int, _Channel] = {}

    def add(channel_id: int | None, purpose: str) -> None:
        if channel_id is not None:
            channels.setdefault(channel_id, _Channel(channel_id)).purposes.append(purpose)

    for channel_id in cfg.support_channel_ids:
        add(channel_id, "support")
    add(cfg.reviewer_channel_id, "reviewer")
    add(cfg.alert_channel_id or cfg.reviewer_channel_id, "alert")
    return channels


async def _guild_checks(client: discord.Client, cfg: DiscordSettings, bot_id: int) -> list[Check]:
    checks: list[Check] = []
    wanted = _configured_channels(cfg)
    # Which guild holds each configured channel and category: ask Discord for the ones the
    # settings name, then load each such guild once with its roles, channels and the bot member.
    guild_of: dict[int, int] = {}
    for channel_id in [*wanted, *cfg.support_category_ids]:
        try:
            channel = await client.fetch_channel(channel_id)
        except discord.Forbidden:
            checks.append(fail("discord.channel", f"{_what(channel_id, wanted)} {channel_id}: the bot may not view it",
                               "give the bot's role View Channel there (Edit Channel → Permissions)",
                               subject=str(channel_id)))
            continue
        except (discord.NotFound, discord.InvalidData):
            checks.append(fail("discord.channel", f"{_what(channel_id, wanted)} {channel_id} not found",
                               f"check the id in the settings and that the bot is in that server; {INVITE_FIX}",
                               subject=str(channel_id)))
            continue
        guild = getattr(channel, "guild", None)
        if guild is None:
            checks.append(fail("discord.channel", f"{channel_id} is not a server channel (a DM?)",
                               "use the id of a text channel in your server", subject=str(channel_id)))
            continue
        guild_of[channel_id] = guild.id
    guild_ids = list(dict.fromkeys([*cfg.guild_ids, *guild_of.values()]))
    for guild_id in guild_ids:
        try:
            guild = await client.fetch_guild(guild_id)
            member = await guild.fetch_member(bot_id)
            channels = {c.id: c for c in await guild.fetch_channels()}
        except (discord.NotFound, discord.Forbidden):
            checks.append(fail("discord.guild", f"the bot is not in server {guild_id}", INVITE_FIX, subject=str(guild_id)))
            continue
        checks.append(ok("discord.guild", f"the bot is in {guild.name}", subject=str(guild_id)))
        checks += _role_checks(guild, cfg)
        for channel_id, purpose in _channels_in(guild_id, guild_of, wanted, cfg, channels):
            channel = channels.get(channel_id)
            if channel is None:
                continue
            checks.append(_permission_check(channel, member, purpose, cfg))
            if "alert" in purpose:
                checks.append(_mention_check(channel, member, guild, cfg))
    return checks


def _channels_in(guild_id: int, guild_of: dict[int, int], wanted: dict[int, _Channel], cfg: DiscordSettings,
                 channels: dict[int, Any]) -> list[tuple[int, list[str]]]:
    out = [(cid, wanted[cid].purposes) for cid, gid in guild_of.items() if gid == guild_id and cid in wanted]
    for category_id in cfg.support_category_ids:
        if guild_of.get(category_id) != guild_id:
            continue
        for channel in channels.values():
            if getattr(channel, "category_id", None) == category_id and isinstance(channel, discord.TextChannel) \
                    and channel.id not in wanted:
                out.append((channel.id, ["support"]))
    return out


def _what(channel_id: int, wanted: dict[int, _Channel]) -> str:
    return _purposes(wanted[channel_id]) if channel_id in wanted else "support category"


def _purposes(channel: _Channel) -> str:
    names = {"support": "support channel", "reviewer": "reviewer channel", "alert": "alert channel"}
    return " and ".join(names[p] for p in channel.purposes)


def _permission_check(channel: Any, member: discord.Member, purposes: list[str], cfg: DiscordSettings) -> Check:
    needed = discord.Permissions.none()
    for purpose in purposes:
        needed |= perms.NEEDS[purpose]
    have = channel.permissions_for(member)
    lacking = perms.missing(have, needed)
    subject = f"#{channel.name} ({_purposes(_Channel(channel.id, purposes))})"
    if lacking.value:
        return fail("discord.channel_permissions", f"missing {', '.join(perms.names(lacking))}",
                    f"give the bot's role these permissions in #{channel.name} (Edit Channel → Permissions), "
                    f"or {INVITE_FIX}", subject=subject)
    return ok("discord.channel_permissions", f"all {len(perms.names(needed))} needed permissions", subject=subject)


def _find_role(guild: discord.Guild, wanted: str) -> discord.Role | None:
    for role in guild.roles:
        if str(role.id) == wanted.strip() or role.name.casefold() == wanted.strip().casefold():
            return role
    return None


def _role_checks(guild: discord.Guild, cfg: DiscordSettings) -> list[Check]:
    checks = []
    for setting, wanted in (("reviewer_role", cfg.reviewer_role), ("moderator_role", cfg.moderator_role)):
        if _find_role(guild, wanted) is None:
            checks.append(fail("discord.roles", f"no role {wanted!r} ({setting}) in {guild.name}",
                               f"create the role in Server Settings → Roles, or set discord.{setting} to an existing "
                               "role's name or id", subject=setting))
        else:
            checks.append(ok("discord.roles", f"{wanted!r} found in {guild.name}", subject=setting))
    return checks


def _mention_check(channel: Any, member: discord.Member, guild: discord.Guild, cfg: DiscordSettings) -> Check:
    """Urgent alerts mention the moderator role; Discord pings its members only if the role is
    mentionable or the bot may mention everyone."""
    role = _find_role(guild, cfg.moderator_role)
    subject = f"#{channel.name}"
    if role is None:
        return fail("discord.moderator_mention", f"no moderator role {cfg.moderator_role!r} to mention",
                    "create it, or set discord.moderator_role", subject=subject)
    if role.mentionable:
        return ok("discord.moderator_mention", f"@{role.name} is mentionable: urgent alerts ping moderators",
                  subject=subject)
    if channel.permissions_for(member).mention_everyone:
        return ok("discord.moderator_mention", f"the bot may mention @{role.name} (Mention Everyone)", subject=subject)
    return fail("discord.moderator_mention",
                f"@{role.name} is not mentionable and the bot lacks Mention Everyone: urgent alerts would ping nobody",
                f"Server Settings → Roles → {role.name} → turn on 'Allow anyone to @mention this role', or give the "
                f"bot's role Mention Everyone in #{channel.name}", subject=subject)
