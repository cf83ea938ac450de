"""Slack: the bot token, the scopes Slack granted it against those the code needs
(bot/slack_platform/scopes.py), the bot's membership of every configured channel, and what
the connection mode needs (an app-level token for Socket Mode, the signing secret for HTTP).

Through slack_sdk's own client, as the running bot calls Slack. Membership is read with
``conversations.history`` (limit 1; nothing is kept), which the bot's scopes already allow:
Slack answers ``not_in_channel`` or ``channel_not_found`` when the bot is not in it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from slack_sdk.errors import SlackApiError

from bot.doctor.report import Check, fail, ok
from bot.settings import SlackSettings
from bot.slack_platform.scopes import BOT_SCOPES

TIMEOUT_S = 20.0
TOKEN_FIX = ("api.slack.com/apps → your app → OAuth & Permissions → copy the Bot User OAuth Token (reinstall the app "
             "if it was revoked) into LLM4SWEAT_SLACK__BOT_TOKEN and restart (docs/slack.md, token rotation)")


async def check_slack(cfg: SlackSettings) -> list[Check]:
    if cfg.bot_token is None:
        return []
    from bot.slack_platform.runner import make_client

    client = make_client(cfg)
    try:
        return await asyncio.wait_for(_checks(client, cfg), TIMEOUT_S)
    except asyncio.TimeoutError:
        return [fail("slack.reachable", f"Slack did not answer within {TIMEOUT_S:.0f} s",
                     "check this machine reaches slack.com (proxy, firewall, DNS)")]
    except OSError as exc:
        return [fail("slack.reachable", f"{type(exc).__name__}: {exc}",
                     "check this machine reaches slack.com (proxy, firewall, DNS)")]
    finally:
        session = getattr(client, "session", None)
        if session is not None and not session.closed:
            await session.close()


async def _checks(client: Any, cfg: SlackSettings) -> list[Check]:
    try:
        identity = await client.auth_test()
    except SlackApiError as exc:
        return [fail("slack.token", f"Slack refused the bot token: {_error(exc)}", TOKEN_FIX)]
    checks = [ok("slack.token", f"valid: {identity.get('user')} in {identity.get('team')}")]
    checks.append(_scopes(_header(identity.headers, "x-oauth-scopes")))
    checks.append(await _connection(client, cfg))
    for channel, purpose in _channels(cfg):
        checks.append(await _membership(client, channel, purpose, str(identity.get("user") or "the bot")))
    if cfg.reviewer_usergroup_id:
        checks.append(await _usergroup(client, cfg.reviewer_usergroup_id))
    return checks


def _header(headers: Any, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return value if isinstance(value, str) else ",".join(value)
    return None


def _scopes(granted_header: str | None) -> Check:
    if granted_header is None:
        return fail("slack.scopes", "Slack did not report the token's scopes (no x-oauth-scopes header)",
                    "check the token is a bot token (xoxb-…) of the app made from deploy/slack-manifest.yaml")
    granted = {s.strip() for s in granted_header.split(",") if s.strip()}
    lacking = [s for s in BOT_SCOPES if s not in granted]
    if lacking:
        needs = "; ".join(f"{s} ({BOT_SCOPES[s]})" for s in lacking)
        return fail("slack.scopes", f"missing {needs}",
                    "add them under OAuth & Permissions → Bot Token Scopes (or re-create the app from "
                    "deploy/slack-manifest.yaml), then reinstall the app to the workspace")
    return ok("slack.scopes", f"all {len(BOT_SCOPES)} needed scopes granted")


async def _connection(client: Any, cfg: SlackSettings) -> Check:
    if cfg.mode == "http":
        if cfg.signing_secret is None or not cfg.signing_secret.get_secret_value():
            return fail("slack.connection", "HTTP mode without the signing secret: every request would be refused",
                        "Basic Information → App Credentials → Signing Secret into LLM4SWEAT_SLACK__SIGNING_SECRET")
        return ok("slack.connection", f"HTTP mode, Request URL path {cfg.http_path} on port {cfg.http_port}")
    if cfg.app_token is None or not cfg.app_token.get_secret_value():
        return fail("slack.connection", "Socket Mode without an app-level token",
                    "Basic Information → App-Level Tokens → generate one with connections:write into "
                    "LLM4SWEAT_SLACK__APP_TOKEN (or set LLM4SWEAT_SLACK__MODE=http)")
    try:
        await client.apps_connections_open(app_token=cfg.app_token.get_secret_value())
    except SlackApiError as exc:
        return fail("slack.connection", f"Slack refused the app-level token: {_error(exc)}",
                    "generate a new app-level token with connections:write (Basic Information → App-Level Tokens), "
                    "check Socket Mode is on, and set LLM4SWEAT_SLACK__APP_TOKEN")
    return ok("slack.connection", "Socket Mode: the app-level token opens a connection")


def _channels(cfg: SlackSettings) -> list[tuple[str, str]]:
    found: dict[str, str] = {}
    for channel in cfg.support_channel_ids:
        found.setdefault(channel, "support channel")
    if cfg.reviewer_channel_id:
        found[cfg.reviewer_channel_id] = (found[cfg.reviewer_channel_id] + " and reviewer channel"
                                          if cfg.reviewer_channel_id in found else "reviewer channel")
    return list(found.items())


async def _membership(client: Any, channel: str, purpose: str, bot_name: str) -> Check:
    subject = f"{channel} ({purpose})"
    try:
        await client.conversations_history(channel=channel, limit=1)
    except SlackApiError as exc:
        error = _error(exc)
        if error in ("not_in_channel", "channel_not_found"):
            return fail("slack.channels", f"the bot is not in it ({error})",
                        f"in Slack, open the channel and type /invite @{bot_name} (check the id {channel} too)",
                        subject=subject)
        return fail("slack.channels", f"Slack answered {error}", "see docs/slack.md, Troubleshooting", subject=subject)
    return ok("slack.channels", "the bot is a member", subject=subject)


async def _usergroup(client: Any, group: str) -> Check:
    try:
        answer = await client.usergroups_users_list(usergroup=group)
    except SlackApiError as exc:
        return fail("slack.reviewer_group", f"user group {group}: {_error(exc)}",
                    "set slack.reviewer_usergroup_id to the group's S… id (not its handle)", subject=group)
    return ok("slack.reviewer_group", f"{len(answer.get('users') or [])} member(s)", subject=group)


def _error(exc: SlackApiError) -> str:
    response = getattr(exc, "response", None)
    try:
        return str(response.get("error")) if response is not None else str(exc)
    except Exception:
        return str(exc)
