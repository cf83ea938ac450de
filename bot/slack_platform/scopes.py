"""The Slack bot-token scopes the code needs: one place for the manifests in deploy/,
``llm4sweat doctor`` (which compares them with the scopes Slack reports as granted, in the
``x-oauth-scopes`` header of every Web API answer) and the tests. ``BOT_SCOPES`` maps each scope to what needs it.
"""

from __future__ import annotations

BOT_SCOPES: dict[str, str] = {
    "app_mentions:read": "app_mention events (patients mentioning the bot outside support channels)",
    "channels:history": "message events and history in public support channels and their threads",
    "groups:history": "message events and history in private channels (a private support or reviewer channel)",
    "im:history": "direct messages (slack.allow_dms)",
    "chat:write": "answers, review cards, alerts and private refusals",
    "commands": "the slash commands",
    "files:write": "the evaluation chart attached to a retraining result (files.uploadV2)",
    "reactions:read": "✅ / ❌ reactions on review cards",
    "usergroups:read": "who is in the reviewer user group",
    "users:read": "reviewers' names on cards and in the audit trail, patients' locale",
}
