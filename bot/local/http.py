"""HTTP plumbing shared by the console's modules: JSON answers, clear 4xx errors, body parsing."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

MAX_BODY_BYTES = 1024 * 1024  # a 100,000-character message fits even with \u escapes

SECURITY_HEADERS = {
    # Nothing external may load: scripts, styles and requests stay on this origin.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class BadRequest(Exception):
    """A request refused with a message for the person who sent it (shown as is), e.g. 400,
    401 (not signed in), 403 (signed in without the role), 429 (too many attempts)."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers={**SECURITY_HEADERS, **(headers or {})})


def ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers=SECURITY_HEADERS,
                             dumps=lambda v: json.dumps(v, ensure_ascii=False, default=str))


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, or a clear 4xx."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BadRequest(f"The request is too large ({request.content_length} bytes; the limit is {MAX_BODY_BYTES}).", 413)
    if request.content_type != "application/json":
        raise BadRequest("Send the request body as JSON (Content-Type: application/json).", 415)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BadRequest(f"The request is too large (the limit is {MAX_BODY_BYTES} bytes).", 413) from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("The request body is not valid UTF-8.") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON ({exc.msg} at position {exc.pos}).") from None
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.")
    return data


def text_field(data: dict[str, Any], name: str, *, required: bool = True, default: str = "") -> str:
    value = data.get(name)
    if value is None:
        if required:
            raise BadRequest(f"The field {name!r} is missing.")
        return default
    if not isinstance(value, str):
        raise BadRequest(f"The field {name!r} must be a string.")
    return value
