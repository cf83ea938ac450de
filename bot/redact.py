"""One function that removes secrets from text that came from somewhere else.

Upstream servers echo what they were sent: an OpenAI-compatible server answering 401 may
quote the API key, an HTTP library may print the Authorization header, Discord and Slack
errors may carry a token. Such text is stored (messages.last_error, incidents, job errors),
shown (alerts, /status, the console) and posted (reviewer channels), so every place where
error text from outside enters storage or a message passes it through :func:`redact` first.
The log filter (bot/logs.py) uses the same function.

Two kinds of match: the exact secret values configured in the settings
(``Settings.secret_values()``), and common token shapes, so a key that is not ours (a
vLLM ``--api-key``, an ``HF_TOKEN``) or a token in a form we did not configure is caught too.
"""

from __future__ import annotations

import re
from typing import Iterable

REDACTED = "[redacted]"

# Token shapes, each matched as a whole word. Sources for the formats:
# OpenAI keys "sk-…" / "sk-proj-…" (platform.openai.com/docs/api-reference/authentication),
# Slack "xoxb-/xoxp-/xoxa-/xoxr-/xoxs-" and app-level "xapp-" tokens (api.slack.com/authentication/token-types),
# Discord bot tokens: three base64url parts joined by dots (discord.com/developers/docs/reference#authentication),
# Hugging Face "hf_…" access tokens (huggingface.co/docs/hub/security-tokens).
_TOKEN_SHAPES = [
    # An Authorization header value ("Bearer …") quoted anywhere.
    re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"),
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{6,}"),
    re.compile(r"\bxapp-[A-Za-z0-9-]{6,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{6,}"),
    re.compile(r"\b[A-Za-z0-9_-]{23,30}\.[A-Za-z0-9_-]{6,7}\.[A-Za-z0-9_-]{27,}"),
]
# key=value / "key": "value" pairs whose name says they hold a secret.
_SECRET_FIELD = re.compile(
    r"""(?ix)
    (\b(?:api[_-]?key|token|access[_-]?token|auth[_-]?token|client[_-]?secret|secret|password|passwd|signing[_-]?secret)
     ["']?\s*[:=]\s*["']?)
    [^\s"'&,;}]{4,}
    """
)
MIN_SECRET_CHARS = 4  # shorter configured "secrets" would blank out ordinary words


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every configured secret and every token-shaped string replaced by [redacted]."""
    if not text:
        return text
    out = str(text)
    # Longest first, so a secret that contains another is removed whole.
    for secret in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True):
        out = out.replace(secret, REDACTED)
    for shape in _TOKEN_SHAPES:
        out = shape.sub(_keep_scheme, out)
    return _SECRET_FIELD.sub(lambda m: m.group(1) + REDACTED, out)


def _keep_scheme(match: re.Match[str]) -> str:
    """Keep the word "Bearer"/"Basic" (it tells the reader what was there), drop the value."""
    if match.lastindex and match.lastindex >= 2:
        return match.group(1) + match.group(2) + REDACTED
    return REDACTED
