"""The local console: one web page (patient chat, reviewer queue, moderator panel).

This module only translates HTTP into calls on the service and the service's answers into
JSON. Every rule (what a patient sees, who may decide or run a command, what joins the
dataset) lives in ``bot.core``, ``reviewers`` and ``bot.commands``; who is asking is settled
by ``bot.local.auth`` before a handler runs (docs/access.md).

Routes (all JSON; errors are ``{"error": "..."}`` with a 4xx status, never a traceback). The
access level of each is in ``ROUTES``; the guard refuses reviewer and moderator routes with
401 without a session and 403 with the wrong role:

    GET  /                               the page (static files under /static/)       public
    GET  /login                          sign-in page; ?token=… a one-time link       public
    POST /api/login                      {name, password} → session cookie            public
    POST /api/logout                     end this browser's session                   public
    GET  /api/me                         who is signed in                             public
    GET  /api/info                       demo flag, condition title                   public
    POST /api/patient/messages           {text}                                       patient (own cookie id)
    GET  /api/patient/conversation       this browser's conversation                  patient
    POST /api/patient/forget             delete this browser's conversation           patient
    POST /api/patient/consent            {choice: agree|decline} training use          patient
    GET  /api/reviews                    pending items, most in need first (priority, risk, judge)  reviewer
    POST /api/reviews/{id}/decision      {action, text, accuracy, appropriateness, empathy, comment}  reviewer
    GET  /api/reviews/agreement          reviewer agreement (kappa)                   reviewer
    GET  /api/dataset                    example counts per task and source           reviewer
    GET  /api/cases                      open crisis cases in full (age, who has each) reviewer
    POST /api/cases/{id}/take            take the case over (the model stays out)     reviewer
    POST /api/cases/{id}/reply           {text}: write to the patient as a person     reviewer
    POST /api/cases/{id}/resolve         {note}: outcome; releases the conversation   reviewer
    GET  /api/moderator/status           the /status command                          moderator
    POST /api/moderator/command          {command, argument}                          moderator
    GET  /api/moderator/alerts           alerts kept by the local platform + open incidents  moderator
    GET  /api/moderator/adapters         the adapter registry and the adapter being served    moderator
    GET  /api/moderator/charts           the charts' numbers (bot/charts.py)          moderator
    GET  /api/moderator/charts/{name}.svg evaluation | versions | reviews, drawn        moderator
    GET  /api/events                     Server-Sent Events: review items; job progress and alerts
                                         for moderators (bot/live.py)                 reviewer
    GET  /metrics                        Prometheus text format (bot/metrics.py)      moderator or control token
    GET  /healthz, /readyz               process up; ready to serve (bot/health.py)   public
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from bot.access.control import write_token
from bot.incidents import PERSON_LABEL
from bot import charts, consent, health_http
from bot.listen import CONSOLE_PORT_HOW, start_site
from bot.live import hub_for
from bot.local import auth
from bot.local.auth import MODERATOR, PATIENT, PUBLIC, REVIEWER
from bot.local.http import MAX_BODY_BYTES, SECURITY_HEADERS, BadRequest, error, json_body, ok, text_field
from bot.local.platform import PLATFORM, LocalPlatform
from bot.platform import ConversationRef, IncomingMessage, PatientView
from pipeline import dataset, jobs
from reviewers import judge
from reviewers.agreement import agreement_report
from reviewers.models import (
    RUBRIC_CRITERIA,
    Action,
    PermissionDenied,
    ReviewError,
    Rubric,
)

if TYPE_CHECKING:
    from bot.service import Service

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
CHANNEL_ID = "console"
THREAD_LIMIT = 200  # most recent messages returned for one conversation
__all__ = ["MAX_BODY_BYTES", "STATIC_DIR", "ROUTES", "make_app", "start_console"]

SSE_KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing a quiet stream
SSE_MAX_S = 300.0  # then the stream ends and the browser reconnects, so the sign-in is checked again
SERVICE_KEY = web.AppKey("service", object)
CLOSING_KEY = web.AppKey("closing", asyncio.Event)
PLATFORM_KEY = web.AppKey("platform", LocalPlatform)

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


# ---------------------------------------------------------------------------- plumbing


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Who is asking is settled first (bot.local.auth.guard); every failure becomes a JSON
    error with a log line; no traceback ever reaches the page."""
    try:
        await auth.guard(request)
        response = await handler(request)
        auth.finish(request, response)
        return response
    except BadRequest as exc:
        log.info("console %s %s -> %d: %s", request.method, request.path, exc.status, exc)
        return error(exc.status, str(exc), exc.headers)
    except PermissionDenied as exc:
        log.warning("console %s %s refused: %s", request.method, request.path, exc)
        return error(403, str(exc))
    except ReviewError as exc:
        log.info("console %s %s review error: %s", request.method, request.path, exc)
        return error(400, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason if exc.status != 404 else f"No such page or API route: {request.path}"
        log.info("console %s %s -> %d", request.method, request.path, exc.status)
        return error(exc.status, message)
    except Exception:
        log.exception("console %s %s failed", request.method, request.path)
        return error(500, "Something went wrong on the server; it has been logged. Your data is safe.")


def _service(request: web.Request) -> "Service":
    return request.app[SERVICE_KEY]  # type: ignore[return-value]


def _view_json(view: PatientView) -> dict[str, str]:
    return {"kind": view.kind.value, "text": view.text, "label": view.label, "disclaimer": view.disclaimer}


def _incoming(user: str, text: str) -> IncomingMessage:
    return IncomingMessage(platform=PLATFORM, user_id=user, channel_id=CHANNEL_ID, thread_id=user, text=text)


# ---------------------------------------------------------------------------- page


async def index(request: web.Request) -> web.StreamResponse:
    auth.patient_id(request)  # the browser gets its anonymous patient id with the page
    return web.FileResponse(STATIC_DIR / "index.html", headers=SECURITY_HEADERS)


async def info(request: web.Request) -> web.Response:
    service = _service(request)
    general = service.core.general_model if service.backend.status().adapter_version is None else None
    return ok({"demo": bool(service.demo), "general_model": general, "title": getattr(service.pack, "title", ""),
               "platform": PLATFORM})


# ---------------------------------------------------------------------------- patient


async def patient_message(request: web.Request) -> web.Response:
    data = await json_body(request)
    text = text_field(data, "text")
    result = await _service(request).core.handle_message(_incoming(auth.patient_id(request), text))
    return ok({
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
    user = auth.patient_id(request)
    conversation_id, started = await _conversation(service, user)
    row = await service.db.fetchone(
        "SELECT consent, consent_at, consent_asked_at FROM patients WHERE platform = ? AND platform_user_id = ?",
        (PLATFORM, user))
    agreed = consent.state(row)  # the page offers the choice until it is made (and a way to change it)
    asked_at = row["consent_asked_at"] if row is not None else None
    if conversation_id is None:
        return ok({"conversation_id": None, "entries": [], "consent": agreed})
    rows = await service.db.fetchall(
        "SELECT * FROM (SELECT m.id AS message_id, m.text, m.status, m.created_at, m.response_text, r.id AS reply_id,"
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
        if row["response_text"]:  # the crisis resources this message was answered with
            entries.append({"type": "notice", "id": f"crisis-{row['message_id']}", "kind": "crisis",
                            "text": row["response_text"], "label": "", "at": row["created_at"]})
        if row["reply_id"] is not None:
            view = service.core.view_for(row["reply_text"], row["delivery"], row["state"] or "pending", row["final_text"])
            entries.append({"type": "reply", "id": row["reply_id"], "message_id": row["message_id"],
                            "item_id": row["item_id"], "state": row["state"], "at": row["reply_at"],
                            **_view_json(view)})
    # What a person of the care team wrote (a crisis case taken over), labelled as a person's.
    # These, the crisis resources and the consent notice come from the database, so a restart
    # does not take them off the page; the platform's in-memory notices are only passing ones.
    for person in await service.db.fetchall(
            "SELECT cr.id, cr.author, cr.text, cr.created_at FROM case_replies cr JOIN incidents i"
            " ON i.id = cr.incident_id WHERE i.conversation_id = ? AND cr.created_at >= ? ORDER BY cr.id",
            (conversation_id, started)):
        entries.append({"type": "notice", "id": f"person-{person['id']}", "kind": "person", "text": person["text"],
                        "label": PERSON_LABEL.format(name=person["author"].split(":", 1)[-1] or "a team member"),
                        "at": person["created_at"]})
    if asked_at is not None and asked_at >= started:  # the first-contact notice, with its choice
        ref = ConversationRef(conversation_id, PLATFORM, CHANNEL_ID, user, user)
        entries.append({"type": "notice", "id": "consent", "kind": "consent",
                        "text": service.core.consent_view(ref).text, "label": "", "at": asked_at})
    # The rest from memory, leaving out what was read above (a possible crisis's check-in is a
    # crisis notice too, and is only there).
    stored = {(e["kind"], e["text"]) for e in entries if e["type"] == "notice"}
    platform: LocalPlatform = request.app[PLATFORM_KEY]
    for n, notice in enumerate(platform.notices.get(conversation_id, [])):
        if notice["at"] < started or notice["kind"] == "consent" or (notice["kind"], notice["text"]) in stored:
            continue  # from an earlier, deleted conversation that had the same id; or read above
        entries.append({"type": "notice", "id": n, "kind": notice["kind"], "text": notice["text"],
                        "label": notice.get("label") or "", "at": notice["at"]})  # label: who wrote it (a person)
    # A message first, then what answered it (notices are sent just after their message is stored).
    order = {"message": 0, "notice": 1, "reply": 2}
    entries.sort(key=lambda e: (e["at"], order[e["type"]], e.get("kind") != "consent"))  # consent, then resources
    return ok({"conversation_id": conversation_id, "entries": entries, "consent": agreed})


async def patient_consent(request: web.Request) -> web.Response:
    """This browser's answer to the consent question ("agree" or "decline"), for this browser's id only."""
    data = await json_body(request)
    choice = text_field(data, "choice").strip().lower()
    if choice not in ("agree", "decline"):
        raise BadRequest("choice must be agree or decline.")
    agree = choice == "agree"
    await _service(request).core.record_consent(PLATFORM, auth.patient_id(request), agree)
    return ok({"consent": "agreed" if agree else "declined",
               "text": consent.CONFIRM_AGREE if agree else consent.CONFIRM_DECLINE})


async def patient_forget(request: web.Request) -> web.Response:
    """Delete this browser's conversation, then give the browser a new anonymous id."""
    service = _service(request)
    user = auth.patient_id(request)
    conversation_id, _ = await _conversation(service, user)
    report = await service.core.forget_patient(PLATFORM, user)
    if conversation_id is not None:
        request.app[PLATFORM_KEY].notices.pop(conversation_id, None)
    auth.patient_id(request, fresh=True)
    log.info("console: forget request for a local patient (%s)", "deleted" if report else "nothing stored")
    return ok({"deleted": bool(report), "text": report.text()})


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
            "judge": judge.queue_line(item, service.settings.judge.enabled),
            # why the reply is held from the patient (an open crisis case, a possible crisis, a red flag …)
            "hold_reason": card.hold_reason if (card := await service.core.review_card(item["item_id"])) else None,
        })
    return ok({"items": items, "quorum": service.reviews.quorum})


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
    """The signed-in account decides; a "reviewer" field in the body, if any, is ignored."""
    service = _service(request)
    item_id = int(request.match_info["item_id"])
    data = await json_body(request)
    raw_action = text_field(data, "action")
    try:
        action = Action(raw_action.strip().lower())
    except ValueError:
        raise BadRequest(f"Unknown action {raw_action!r}; use approve, edit or reject.") from None
    text = text_field(data, "text", required=False) or None
    comment = text_field(data, "comment", required=False) or None
    try:
        rubric = Rubric(**{name: _score(data, name) for name in RUBRIC_CRITERIA})
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    outcome = await service.core.decide(item_id, auth.principal(request).actor(), action, text, rubric, comment)
    return ok({
        "item_id": outcome.item_id, "state": outcome.state.value, "recorded": outcome.recorded,
        "closed_now": outcome.closed_now, "final_text": outcome.final_text, "message": outcome.message,
    })


async def reviews_agreement(request: web.Request) -> web.Response:
    return ok({"agreement": await agreement_report(_service(request).db)})


async def dataset_counts(request: web.Request) -> web.Response:
    counts = await dataset.counts(_service(request).db)
    total = sum(n for by_source in counts.values() for n in by_source.values())
    by_source: dict[str, int] = {}
    for by in counts.values():
        for source, n in by.items():
            by_source[source] = by_source.get(source, 0) + n
    return ok({"counts": counts, "by_source": by_source, "total": total})


# ---------------------------------------------------------------------------- crisis cases


def _case_json(case: dict[str, Any]) -> dict[str, Any]:
    from bot import incidents

    return {**{k: v for k, v in case.items() if k != "messages"}, "line": incidents.case_line(case),
            "text": incidents.case_text(case)}


async def cases_open(request: web.Request) -> web.Response:
    from bot import incidents

    db = _service(request).db
    # Each case in full (the patient's last messages, what people wrote to them): whoever takes a
    # case over on the console has to read what the patient said, and it is in no review card.
    return ok({"cases": [_case_json(await incidents.get_case(db, c["id"])) for c in await incidents.open_cases(db)]})


async def case_action(request: web.Request) -> web.Response:
    """Take over, reply to the patient as a person, resolve: the signed-in account acts (the
    roles are checked again by bot.incidents; a refusal is a 403 with a log line)."""
    from bot import incidents

    service = _service(request)
    case_id = int(request.match_info["case_id"])
    action = request.path.rsplit("/", 1)[1]
    data = await json_body(request)
    actor = auth.principal(request).actor()
    try:
        if action == "take":
            case = await service.core.cases.take_over(case_id, actor)
        elif action == "reply":
            case = await service.core.cases.reply(case_id, actor, text_field(data, "text"))
        else:
            case = await service.core.cases.resolve(case_id, actor, text_field(data, "note"))
    except incidents.CaseError as exc:
        raise BadRequest(str(exc)) from None
    return ok({"case": _case_json(case)})


# ---------------------------------------------------------------------------- moderator


async def _run_command(request: web.Request, command: str, argument: str | None) -> web.Response:
    reply = await _service(request).commands.run(auth.principal(request).actor(), command, argument)
    report = reply.report.to_dict() if reply.report is not None else None
    if report is not None:
        report.pop("image", None)  # a path on the server; the page shows the charts by their own routes
    return ok({"ok": reply.ok, "text": reply.text, "data": reply.data, "report": report})


async def moderator_status(request: web.Request) -> web.Response:
    return await _run_command(request, "status", None)


async def moderator_command(request: web.Request) -> web.Response:
    data = await json_body(request)
    command = text_field(data, "command").strip().lower().lstrip("/")
    if not command:
        raise BadRequest("The field 'command' is empty.")
    argument = text_field(data, "argument", required=False).strip() or None
    return await _run_command(request, command, argument)


async def moderator_adapters(request: web.Request) -> web.Response:
    """The adapter registry with the adapter this process is serving right now (``llm4sweat
    adapters list`` asks here while the service runs: the service is the source of truth)."""
    from pipeline import registry

    service = _service(request)
    return ok({"serving": service.backend.status().adapter_version,
               "adapters": await registry.all_versions(service.db)})


async def moderator_alerts(request: web.Request) -> web.Response:
    service = _service(request)
    incidents = await service.db.fetchall(
        "SELECT id, kind, detail, message_id, created_at FROM incidents WHERE resolved_at IS NULL"
        " ORDER BY id DESC LIMIT 50"
    )
    redact = service.settings.redact  # stored scrubbed already; rows from older versions too
    alerts = [{**a, "text": redact(a["text"]), "report": _public_report(a.get("report"))}
              for a in reversed(request.app[PLATFORM_KEY].alerts)]
    return ok({"alerts": alerts, "incidents": [{**dict(row), "detail": redact(row["detail"])} for row in incidents]})


def _public_report(report: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if not report else {k: v for k, v in report.items() if k != "image"}


async def charts_data(request: web.Request) -> web.Response:
    db = _service(request).db
    return ok({name: await charts.data(db, name) for name in charts.NAMES})


async def chart_svg(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in charts.NAMES:
        raise BadRequest(f"No chart {name!r}; charts: {', '.join(charts.NAMES)}.", 404)
    payload = await charts.data(_service(request).db, name)
    body = await asyncio.to_thread(charts.svg, name, payload)
    return web.Response(body=body, content_type="image/svg+xml", headers={"Cache-Control": "no-store"})


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: ``review`` (an item arrived or changed) for reviewers; ``job``
    (progress, with a fraction for the bar) and ``alert`` for moderators. The page's
    EventSource reconnects by itself; the stream ends after SSE_MAX_S so the sign-in is
    checked again."""
    service = _service(request)
    moderator = MODERATOR in auth.principal(request).roles
    hub = hub_for(service.db)
    closing = request.app[CLOSING_KEY]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)

    async def send(event: str, data: dict[str, Any]) -> None:
        await response.write(f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n".encode())

    loop = asyncio.get_running_loop()
    ends = loop.time() + SSE_MAX_S
    with hub.subscribe() as queue:
        try:
            await response.write(b"retry: 2000\n\n")
            if moderator:
                job = await jobs.latest(service.db)
                if job is not None:
                    state = hub.jobs.get(int(job["id"]), {})
                    await send("job", {**state, "id": job["id"], "kind": job["kind"], "status": job["status"],
                                       "progress": job["progress"] or "", "error": job["error"]})
            while not closing.is_set() and loop.time() < ends:
                getter = asyncio.ensure_future(queue.get())
                stop = asyncio.ensure_future(closing.wait())
                done, _ = await asyncio.wait({getter, stop}, timeout=min(SSE_KEEPALIVE_S, max(0.0, ends - loop.time())),
                                             return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if getter not in done:
                    getter.cancel()
                    await response.write(b": keep-alive\n\n")
                    continue
                event, data = getter.result()
                if event in ("job", "alert") and not moderator:
                    continue
                if event == "alert":
                    data = {**data, "text": service.settings.redact(data.get("text", ""))}
                await send(event, data)
        except ConnectionResetError:
            pass  # the page went away
    return response


async def metrics_page(request: web.Request) -> web.Response:
    """The operator's figures in Prometheus text format (bot/metrics.py)."""
    from bot.metrics import metrics_response

    return await metrics_response(_service(request), request.headers.get("Accept", ""))


# ---------------------------------------------------------------------------- app

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Every route with its access level. make_app refuses a route without one, and the tests walk
# this table: a new reviewer or moderator route is checked for 401/403 without being listed.
ROUTES: list[tuple[str, str, Handler, str]] = [
    ("GET", "/", index, PUBLIC),
    ("GET", "/login", auth.login_page, PUBLIC),
    ("POST", "/api/login", auth.login, PUBLIC),
    ("POST", "/api/logout", auth.logout, PUBLIC),
    ("GET", "/api/me", auth.me, PUBLIC),
    ("GET", "/api/info", info, PUBLIC),
    ("POST", "/api/patient/messages", patient_message, PATIENT),
    ("GET", "/api/patient/conversation", patient_conversation, PATIENT),
    ("POST", "/api/patient/forget", patient_forget, PATIENT),
    ("POST", "/api/patient/consent", patient_consent, PATIENT),
    ("GET", "/api/reviews", reviews_pending, REVIEWER),
    ("GET", "/api/reviews/agreement", reviews_agreement, REVIEWER),
    ("POST", r"/api/reviews/{item_id:\d{1,12}}/decision", review_decision, REVIEWER),
    ("GET", "/api/dataset", dataset_counts, REVIEWER),
    ("GET", "/api/cases", cases_open, REVIEWER),
    ("POST", r"/api/cases/{case_id:\d{1,12}}/take", case_action, REVIEWER),
    ("POST", r"/api/cases/{case_id:\d{1,12}}/reply", case_action, REVIEWER),
    ("POST", r"/api/cases/{case_id:\d{1,12}}/resolve", case_action, REVIEWER),
    ("GET", "/api/moderator/status", moderator_status, MODERATOR),
    ("POST", "/api/moderator/command", moderator_command, MODERATOR),
    ("GET", "/api/moderator/alerts", moderator_alerts, MODERATOR),
    ("GET", "/api/moderator/adapters", moderator_adapters, MODERATOR),
    ("GET", "/api/moderator/charts", charts_data, MODERATOR),
    ("GET", r"/api/moderator/charts/{name:[a-z0-9_-]{1,20}}.svg", chart_svg, MODERATOR),
    ("GET", "/api/events", events, REVIEWER),  # reviewers; job progress and alerts only to moderators
    ("GET", "/metrics", metrics_page, MODERATOR),  # Prometheus: moderators, or the control token as bearer
    ("GET", "/healthz", health_http.healthz, PUBLIC),  # container health checks: nothing but up or not
    ("GET", "/readyz", health_http.readyz, PUBLIC),
]
STATIC_PREFIX = "/static"  # the page's own scripts and styles: public


def make_app(service: "Service", host: str = "127.0.0.1", control_token: str | None = None) -> web.Application:
    platform = service.core.platforms.get(PLATFORM)
    if platform is None:
        platform = LocalPlatform()
        service.add_platform(platform)
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY_BYTES)
    app[SERVICE_KEY] = service
    app[PLATFORM_KEY] = platform  # type: ignore[assignment]
    platform.events = hub_for(service.db)  # type: ignore[union-attr]  # review items and alerts, live
    app[CLOSING_KEY] = asyncio.Event()

    async def _close_streams(app: web.Application) -> None:
        app[CLOSING_KEY].set()  # open event streams end now, not after the shutdown timeout

    app.on_shutdown.append(_close_streams)
    app[auth.SERVICE_KEY] = service
    app[health_http.SERVICE_KEY] = service
    app[auth.SETTINGS_KEY] = service.settings
    app[auth.DB_KEY] = service.db
    app[auth.HOSTS_KEY] = auth.allowed_hosts(host, service.settings.local.public_url)
    app[auth.THROTTLE_KEY] = auth.LoginThrottle()
    if control_token:
        app[auth.CONTROL_KEY] = control_token
    access: dict[str, str] = {}
    for method, path, handler, level in ROUTES:
        if level not in auth.LEVELS:
            raise ValueError(f"route {method} {path}: unknown access level {level!r}")
        route = app.router.add_route(method, path, handler)
        access[route.resource.canonical] = level  # type: ignore[union-attr]
    static = app.router.add_static(STATIC_PREFIX + "/", STATIC_DIR, append_version=False)
    access[static.canonical] = PUBLIC
    missing = [r.canonical for r in app.router.resources() if r.canonical not in access]
    if missing:
        raise ValueError(f"console routes without an access level: {missing}")
    app[auth.ACCESS_KEY] = access

    async def _headers(request: web.Request, response: web.StreamResponse) -> None:
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)

    app.on_response_prepare.append(_headers)
    return app


async def start_console(service: "Service", host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve the console; port 0 picks a free port. Returns the runner (``await runner.cleanup()``) and URL.

    Refuses (:class:`bot.local.auth.ConsoleRefused`) to serve beyond loopback without sign-in
    and a public URL. Writes a fresh control token for the command line (mode 0600)."""
    host = host or "127.0.0.1"
    await auth.check_binding(service.settings, host, service.db)
    token = write_token(service.settings.data_dir)
    app = make_app(service, host, token)
    runner = web.AppRunner(app, access_log=None)  # no access log: URLs may carry a sign-in token
    await runner.setup()
    site = await start_site(runner, host, port, "the console", CONSOLE_PORT_HOW)
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
