"""Slack: patients in channels, threads and DMs; expert review cards; moderator slash commands.

``start_slack(service)`` connects in Socket Mode (default, no public URL) or HTTP mode; see
``docs/slack.md`` and ``deploy/slack-manifest.yaml``.
"""

from bot.slack_platform.platform import PLATFORM, SlackPlatform, command_names
from bot.slack_platform.runner import SlackRunner, SlackStartError, build_app, make_client, start_slack

__all__ = [
    "PLATFORM",
    "SlackPlatform",
    "SlackRunner",
    "SlackStartError",
    "build_app",
    "command_names",
    "make_client",
    "start_slack",
]
