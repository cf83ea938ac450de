"""The local console: one web page (patient chat, reviewer queue, moderator panel) on 127.0.0.1.

This module only translates HTTP into calls on the service and the service's answers into
JSON. Every rule (what a patient sees, who may decide or run a command, what joins the
dataset) lives in ``bot.core``, ``reviewers`` and ``bot.commands``.

Routes (all JSON; errors are ``{"error": "..."}`` with a 4xx status, never a traceback):

    GET  /                               the page (static files under /static/)
    GET  /api/info                       demo flag, condition title
    POST /api/patient/messages           {user, text}
    GET  /api/patient/conversation       ?user=U
    POST /api/patient/forget             {user}
    GET  /api/reviews                    pending items, high priority first
    POST /api/reviews/{id}/decision      {reviewer, action, text, accuracy, appropriateness, empathy, comment}
    GET  /api/reviews/agreement          reviewer agreement (kappa)
    GET  /api/moderator/status           ?moderator=M   (the /status command)
    POST /api/moderator/command          {moderator, command, argument}
    GET  /api/moderator/alerts           ?moderator=M   alerts kept by the local platform + open incidents
    GET  /api/dataset                    example counts per task and source
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from bot.local.platform import PLATFORM, LocalPlatform
from bot.platform import IncomingMessage, PatientView
from pipeline import dataset
from reviewers.agreement import agreement_report
from reviewers.models import (
    MODERATOR_ROLE,
    REVIEWER_ROLE,
    RUBRIC_CRITERIA,
    Action,
    Actor,
    PermissionDenied,
    ReviewError,
    Rubric,
)

if TYPE_CHECKING:
    from bot.service import Service

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
CHANNEL_ID = "console"
MAX_BODY_BYTES = 1024 * 1024  # a 100,000-character message fits even with \u escapes
MAX_NAME_CHARS = 64
THREAD_LIMIT = 200  # most recent messages returned for one conversation

SERVICE_KEY = web.AppKey("service", object)
PLATFORM_KEY = web.AppKey("platform", LocalPlatform)
HOSTS_KEY = web.AppKey("allowed_hosts", set)

# How a message's processing state reads in the patient's thread (presentation only).
STATUS_TEXT = {
    "received": "received, waiting for an answer",
    "answered": "",
    "queued_retry": "the assistant is temporarily unavailable; your message is saved and will be answered",
    "paused": "the assistant is paused; your message is saved and will be answered",
    "crisis": "crisis resources sent; a person will look at this",
    "unsupported": "not answered (attachments only)",
    "rate_limited": "saved, not answered: too many messages in a short time",
    "out_of_scope": "answered with a fixed note (outside what this assistant covers)",
    "language_unsupported": "answered with a fixed note (language not supported yet)",
}

SECURITY_HEADERS = {
    # Nothing external may load: scripts, styles and requests stay on this origin.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class BadRequest(Exception):
    """Input the page or a caller got wrong; the message is shown to them as is."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------- plumbing


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=SECURITY_HEADERS)


def _ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers=SECURITY_HEADERS,
                             dumps=lambda v: json.dumps(v, ensure_ascii=False, default=str))


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Every failure becomes a JSON error with a log line; no traceback ever reaches the page."""
    try:
        _check_host(request)
        return await handler(request)
    except BadRequest as exc:
        log.info("console %s %s -> %d: %s", request.method, request.path, exc.status, exc)
        return _error(exc.status, str(exc))
    except PermissionDenied as exc:
        log.warning("console %s %s refused: %s", request.method, request.path, exc)
        return _error(403, str(exc))
    except ReviewError as exc:
        log.info("console %s %s review error: %s", request.method, request.path, exc)
        return _error(400, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason if exc.status != 404 else f"No such page or API route: {request.path}"
        log.info("console %s %s -> %d", request.method, request.path, exc.status)
        return _error(exc.status, message)
    except Exception:
        log.exception("console %s %s failed", request.method, request.path)
        return _error(500, "Something went wrong on the server; it has been logged. Your data is safe.")


def _check_host(request: web.Request) -> None:
    """Refuse other Host names (DNS rebinding: a web page pointing its own name at 127.0.0.1)."""
    allowed: set[str] = request.app[HOSTS_KEY]
    if not allowed:
        return
    host = (request.host or "").lower()
    if host.startswith("["):
        name = host[1:host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name not in allowed:
        raise BadRequest(f"Host {request.host!r} is not served here; open the console by its own address.", 403)


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, or a clear 4xx."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BadRequest(f"The request is too large ({request.content_length} bytes; the limit is {MAX_BODY_BYTES}).", 413)
    if request.content_type != "application/json":
        # Also keeps other web sites from posting plain-text forms to this local server.
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


def _text_field(data: dict[str, Any], name: str, *, required: bool = True, default: str = "") -> str:
    value = data.get(name)
    if value is None:
        if required:
            raise BadRequest(f"The field {name!r} is missing.")
        return default
    if not isinstance(value, str):
        raise BadRequest(f"The field {name!r} must be a string.")
    return value


def _name(value: Any, field: str) -> str:
    """A person's name as typed into the console (patient, reviewer or moderator)."""
    if value is None:
        raise BadRequest(f"The field {field!r} is missing: enter your name first.")
    if not isinstance(value, str):
        raise BadRequest(f"The field {field!r} must be a string.")
    name = value.strip()
    if not name:
        raise BadRequest(f"The field {field!r} is empty: enter your name first.")
    if len(name) > MAX_NAME_CHARS:
        raise BadRequest(f"The field {field!r} is longer than {MAX_NAME_CHARS} characters.")
    if any(not ch.isprintable() for ch in name):
        raise BadRequest(f"The field {field!r} contains control characters.")
    return name


def _service(request: web.Request) -> "Service":
    return request.app[SERVICE_KEY]  # type: ignore[return-value]


def _actor(request: web.Request, name: str, role: str) -> Actor:
    """The console knows people by name; settings list the names holding each role."""
    local = _service(request).settings.local
    members = local.reviewer_ids if role == REVIEWER_ROLE else local.moderator_ids
    roles = frozenset({role}) if name in members else frozenset()
    return Actor(platform=PLATFORM, user_id=name, display_name=name, roles=roles)


def _view_json(view: PatientView) -> dict[str, str]:
    return {"kind": view.kind.value, "text": view.text, "label": view.label, "disclaimer": view.disclaimer}


def _incoming(user: str, text: str) -> IncomingMessage:
    return IncomingMessage(platform=PLATFORM, user_id=user, channel_id=CHANNEL_ID, thread_id=user, text=text,
                           display_name=user)


# ---------------------------------------------------------------------------- page


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers=SECURITY_HEADERS)


async def info(request: web.Request) -> web.Response:
    service = _service(request)
    return _ok({"demo": bool(service.demo), "title": getattr(service.pack, "title", ""), "platform": PLATFORM})


# ---------------------------------------------------------------------------- patient


async def patient_message(request: web.Request) -> web.Response:
    data = await _body(request)
    user = _name(data.get("user"), "user")
    text = _text_field(data, "text")
    result = await _service(request).core.handle_message(_incoming(user, text))
    return _ok({
        "message_id": result.message_id,
        "conversation_id": result.conversation_id,
        "reply_id": result.reply_id,
        "item_id": result.item_id,
        "status": result.status,
        "views": [_view_json(v) for v in result.views],
    })


async def _conversation(service: "Service", user: str) -> tuple[int | None, float]:
    row = await service.db.fetchone(
        "SELECT id, created_at FROM conversations WHERE platform = ? AND channel_id = ? AND thread_id = ?",
        (PLATFORM, CHANNEL_ID, user),
    )
    return (None, 0.0) if row is None else (int(row[0]), float(row[1]))


async def patient_conversation(request: web.Request) -> web.Response:
    service = _service(request)
    user = _name(request.query.get("user"), "user")
    conversation_id, started = await _conversation(service, user)
    if conversation_id is None:
        return _ok({"user": user, "conversation_id": None, "entries": []})
    rows = await service.db.fetchall(
        "SELECT * FROM (SELECT m.id AS message_id, m.text, m.status, m.created_at, r.id AS reply_id,"
        " r.text AS reply_text, r.delivery, r.created_at AS reply_at, i.id AS item_id, i.state, i.final_text"
        " FROM messages m LEFT JOIN replies r ON r.message_id = m.id LEFT JOIN review_items i ON i.reply_id = r.id"
        " WHERE m.conversation_id = ? ORDER BY m.id DESC LIMIT ?) ORDER BY message_id",
        (conversation_id, THREAD_LIMIT),
    )
    entries: list[dict[str, Any]] = []
    for row in rows:
        entries.append({
            "type": "message", "id": row["message_id"], "text": row["text"], "at": row["created_at"],
            "status": row["status"], "status_text": STATUS_TEXT.get(row["status"], row["status"].replace("_", " ")),
        })
        if row["reply_id"] is not None:
            view = service.core.view_for(row["reply_text"], row["delivery"], row["state"] or "pending", row["final_text"])
            entries.append({"type": "reply", "id": row["reply_id"], "message_id": row["message_id"],
                            "item_id": row["item_id"], "state": row["state"], "at": row["reply_at"],
                            **_view_json(view)})
    platform: LocalPlatform = request.app[PLATFORM_KEY]
    for n, notice in enumerate(platform.notices.get(conversation_id, [])):
        if notice["at"] < started:
            continue  # from an earlier, deleted conversation that had the same id
        entries.append({"type": "notice", "id": n, "kind": notice["kind"], "text": notice["text"], "at": notice["at"]})
    # A message first, then what answered it (notices are sent just after their message is stored).
    order = {"message": 0, "notice": 1, "reply": 2}
    entries.sort(key=lambda e: (e["at"], order[e["type"]]))
    return _ok({"user": user, "conversation_id": conversation_id, "entries": entries})


async def patient_forget(request: web.Request) -> web.Response:
    service = _service(request)
    data = await _body(request)
    user = _name(data.get("user"), "user")
    conversation_id, _ = await _conversation(service, user)
    deleted = await service.core.forget_patient(PLATFORM, user)
    if conversation_id is not None:
        request.app[PLATFORM_KEY].notices.pop(conversation_id, None)
    log.info("console: forget request for a local patient (%s)", "deleted" if deleted else "nothing stored")
    text = "Everything you wrote here has been deleted." if deleted else "Nothing was stored under this name."
    return _ok({"deleted": bool(deleted), "text": text})


# ---------------------------------------------------------------------------- reviewer


async def reviews_pending(request: web.Request) -> web.Response:
    service = _service(request)
    items = []
    for item in await service.reviews.pending():
        try:
            flags = json.loads(item.get("risk_flags") or "[]")
        except (TypeError, ValueError):
            flags = []
        items.append({
            "item_id": item["item_id"], "priority": item["priority"], "state": item["state"],
            "created_at": item["created_at"], "reply_id": item["reply_id"], "patient_text": item["patient_text"],
            "reply_text": item["reply_text"], "task": item["task"], "risk_flags": flags,
            "adapter_version": item["adapter_version"], "model": item["model"],
        })
    return _ok({"items": items, "quorum": service.reviews.quorum})


def _score(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadRequest(f"The {name} score must be a whole number from 1 to 5.")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise BadRequest(f"The {name} score must be a whole number from 1 to 5.") from None
    if not isinstance(value, int):
        raise BadRequest(f"The {name} score must be a whole number from 1 to 5.")
    return value


async def review_decision(request: web.Request) -> web.Response:
    service = _service(request)
    item_id = int(request.match_info["item_id"])
    data = await _body(request)
    reviewer = _name(data.get("reviewer"), "reviewer")
    raw_action = _text_field(data, "action")
    try:
        action = Action(raw_action.strip().lower())
    except ValueError:
        raise BadRequest(f"Unknown action {raw_action!r}; use approve, edit or reject.") from None
    text = _text_field(data, "text", required=False) or None
    comment = _text_field(data, "comment", required=False) or None
    try:
        rubric = Rubric(**{name: _score(data, name) for name in RUBRIC_CRITERIA})
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    actor = _actor(request, reviewer, REVIEWER_ROLE)
    try:
        outcome = await service.core.decide(item_id, actor, action, text, rubric, comment)
    except PermissionDenied as exc:
        raise PermissionDenied(f"{exc} ({reviewer!r} is not one of the console's reviewers; "
                               "they are listed in the settings under local.reviewer_ids.)") from None
    return _ok({
        "item_id": outcome.item_id, "state": outcome.state.value, "recorded": outcome.recorded,
        "closed_now": outcome.closed_now, "final_text": outcome.final_text, "message": outcome.message,
    })


async def reviews_agreement(request: web.Request) -> web.Response:
    return _ok({"agreement": await agreement_report(_service(request).db)})


# ---------------------------------------------------------------------------- moderator


async def _run_command(request: web.Request, moderator: str, command: str, argument: str | None) -> web.Response:
    actor = _actor(request, moderator, MODERATOR_ROLE)
    try:
        reply = await _service(request).commands.run(actor, command, argument)
    except PermissionDenied as exc:
        raise PermissionDenied(f"{exc} ({moderator!r} is not one of the console's moderators; "
                               "they are listed in the settings under local.moderator_ids.)") from None
    return _ok({"ok": reply.ok, "text": reply.text, "data": reply.data})


async def moderator_status(request: web.Request) -> web.Response:
    return await _run_command(request, _name(request.query.get("moderator"), "moderator"), "status", None)


async def moderator_command(request: web.Request) -> web.Response:
    data = await _body(request)
    moderator = _name(data.get("moderator"), "moderator")
    command = _text_field(data, "command").strip().lower().lstrip("/")
    if not command:
        raise BadRequest("The field 'command' is empty.")
    argument = _text_field(data, "argument", required=False).strip() or None
    return await _run_command(request, moderator, command, argument)


async def moderator_alerts(request: web.Request) -> web.Response:
    moderator = _name(request.query.get("moderator"), "moderator")
    actor = _actor(request, moderator, MODERATOR_ROLE)
    if not actor.has(MODERATOR_ROLE):
        log.warning("console alerts refused: %s lacks the moderator role", actor.label)
        raise PermissionDenied(f"Only moderators can see alerts ({moderator!r} is not one of the console's "
                               "moderators; they are listed in the settings under local.moderator_ids.)")
    service = _service(request)
    incidents = await service.db.fetchall(
        "SELECT id, kind, detail, message_id, created_at FROM incidents WHERE resolved_at IS NULL"
        " ORDER BY id DESC LIMIT 50"
    )
    alerts = list(reversed(request.app[PLATFORM_KEY].alerts))
    return _ok({"alerts": alerts, "incidents": [dict(row) for row in incidents]})


async def dataset_counts(request: web.Request) -> web.Response:
    counts = await dataset.counts(_service(request).db)
    total = sum(n for by_source in counts.values() for n in by_source.values())
    by_source: dict[str, int] = {}
    for by in counts.values():
        for source, n in by.items():
            by_source[source] = by_source.get(source, 0) + n
    return _ok({"counts": counts, "by_source": by_source, "total": total})


# ---------------------------------------------------------------------------- app


def _allowed_hosts(host: str) -> set[str]:
    """Host names the page may be opened by; empty (no check) when bound to all interfaces."""
    if host in ("", "0.0.0.0", "::"):
        return set()
    names = {host.lower(), "localhost", "127.0.0.1", "::1"}
    try:
        if not ipaddress.ip_address(host).is_loopback:
            names.add(socket.gethostname().lower())
    except ValueError:
        pass
    return names


def make_app(service: "Service", host: str = "127.0.0.1") -> web.Application:
    platform = service.core.platforms.get(PLATFORM)
    if platform is None:
        platform = LocalPlatform()
        service.add_platform(platform)
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY_BYTES)
    app[SERVICE_KEY] = service
    app[PLATFORM_KEY] = platform  # type: ignore[assignment]
    app[HOSTS_KEY] = _allowed_hosts(host)
    app.router.add_get("/", index)
    app.router.add_get("/api/info", info)
    app.router.add_post("/api/patient/messages", patient_message)
    app.router.add_get("/api/patient/conversation", patient_conversation)
    app.router.add_post("/api/patient/forget", patient_forget)
    app.router.add_get("/api/reviews", reviews_pending)
    app.router.add_get("/api/reviews/agreement", reviews_agreement)
    app.router.add_post(r"/api/reviews/{item_id:\d{1,12}}/decision", review_decision)
    app.router.add_get("/api/moderator/status", moderator_status)
    app.router.add_post("/api/moderator/command", moderator_command)
    app.router.add_get("/api/moderator/alerts", moderator_alerts)
    app.router.add_get("/api/dataset", dataset_counts)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)

    async def _headers(request: web.Request, response: web.StreamResponse) -> None:
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)

    app.on_response_prepare.append(_headers)
    return app


async def start_console(service: "Service", host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve the console; port 0 picks a free port. Returns the runner (``await runner.cleanup()``) and URL."""
    host = host or "127.0.0.1"
    app = make_app(service, host)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(exc.errno, f"cannot serve the console on {host}:{port}: {exc.strerror}") from None
    real_port = port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        real_port = server.sockets[0].getsockname()[1]
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown_host and not shown_host.startswith("["):
        shown_host = f"[{shown_host}]"
    url = f"http://{shown_host}:{real_port}/"
    log.info("local console at %s", url)
    return runner, url
