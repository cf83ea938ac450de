"""Who is asking: sign-in, sessions, the patient's anonymous id, and the checks every request
passes before its handler runs (the model is described in docs/access.md).

* **Staff** (reviewers, moderators) sign in with an account (``llm4sweat users``) or a
  one-time link; the session is an HttpOnly, SameSite=Strict cookie whose token is stored
  only as a hash. Roles come from the accounts table on every request, never from the body.
* **The command line** sends the control token as a bearer token (bot/access/control.py).
* **Patients** get a random id in an HttpOnly, SameSite=Strict cookie set by the server.
  The core knows them as ``anon-<hash of that id>``: no name is typed, nothing identifies
  them, and only that browser can read or delete its conversation.

Every route is registered with an access level; :func:`guard` enforces it (401 without a
session, 403 with the wrong role) and also checks the Host header (DNS rebinding) and the
Origin / Sec-Fetch-Site headers of every state-changing request (cross-site requests).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web

from bot.access import accounts, sessions
from bot.access.control import CLI_NAME
from bot.local.http import BadRequest, SECURITY_HEADERS, json_body, ok, text_field
from bot.safety.ratelimit import RateLimiter
from reviewers.models import MODERATOR_ROLE, REVIEWER_ROLE, Actor

if TYPE_CHECKING:
    from bot.service import Service
    from bot.settings import Settings
    from bot.storage import Database

log = logging.getLogger(__name__)

# Access levels of routes.
PUBLIC = "public"  # the page, the login page, /api/info, /api/me
PATIENT = "patient"  # the patient's own conversation (anonymous id in a cookie)
REVIEWER = REVIEWER_ROLE  # signed in with the reviewer role (moderators have it too)
MODERATOR = MODERATOR_ROLE  # signed in as a moderator, or the command line's control token
LEVELS = (PUBLIC, PATIENT, REVIEWER, MODERATOR)

SESSION_COOKIE = "llm4sweat_session"
PATIENT_COOKIE = "llm4sweat_patient"
PATIENT_COOKIE_DAYS = 180
CONSOLE_PLATFORM = "console"  # staff actors are audited as console:<account name>
CLI_PLATFORM = "cli"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_COOKIE_VALUE = re.compile(r"^[A-Za-z0-9_-]{20,128}$")

# Failed sign-ins: per (client address, name) and per name across addresses, in a sliding window.
LOGIN_WINDOW_S = 15 * 60
LOGIN_FAILURES_PER_CLIENT = 5
LOGIN_FAILURES_PER_NAME = 20

SETTINGS_KEY = web.AppKey("auth_settings", object)
DB_KEY = web.AppKey("auth_db", object)
SERVICE_KEY = web.AppKey("auth_service", object)
ACCESS_KEY = web.AppKey("route_access", dict)
HOSTS_KEY = web.AppKey("allowed_hosts", set)
CONTROL_KEY = web.AppKey("control_token", str)
THROTTLE_KEY = web.AppKey("login_throttle", object)


def _request_key(name: str) -> object:
    """Typed request keys where aiohttp has them (3.13+), plain strings before."""
    maker = getattr(web, "RequestKey", None)
    return maker(name, object) if maker is not None else name


PRINCIPAL = _request_key("principal")
PATIENT_ID = _request_key("patient_id")
NEW_PATIENT_COOKIE = _request_key("new_patient_cookie")


class ConsoleRefused(Exception):
    """The console must not start with these settings; the message is one line for the operator."""


@dataclass(frozen=True)
class Principal:
    """Who is signed in for this request."""

    platform: str  # "console" (an account) or "cli" (the control token)
    name: str
    role: str
    roles: frozenset[str]

    @classmethod
    def of(cls, account: accounts.Account) -> "Principal":
        return cls(CONSOLE_PLATFORM, account.name, account.role, account.roles)

    @classmethod
    def cli(cls) -> "Principal":
        return cls(CLI_PLATFORM, CLI_NAME, MODERATOR_ROLE, frozenset({MODERATOR_ROLE}))

    @property
    def label(self) -> str:
        return f"{self.platform}:{self.name}"

    def actor(self) -> Actor:
        """What the core and the command layer check and audit."""
        return Actor(platform=self.platform, user_id=self.name, display_name=self.name, roles=self.roles)


class LoginThrottle:
    """Failed sign-ins are limited per client and name, and per name (guessing is slow)."""

    def __init__(self) -> None:
        self.by_client = RateLimiter(LOGIN_FAILURES_PER_CLIENT, LOGIN_WINDOW_S)
        self.by_name = RateLimiter(LOGIN_FAILURES_PER_NAME, LOGIN_WINDOW_S)

    def wait_s(self, client: str, name: str) -> float:
        return max(self.by_client.retry_after(f"{client}|{name}"), self.by_name.retry_after(name))

    def failed(self, client: str, name: str) -> None:
        self.by_client.hit(f"{client}|{name}")
        self.by_name.hit(name)


# ---------------------------------------------------------------------------- binding and hosts


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def check_binding(settings: "Settings", host: str, db: "Database") -> None:
    """Beyond loopback the console needs sign-in (a moderator account) and a public address."""
    if is_loopback(host or "127.0.0.1"):
        return
    missing = []
    if settings.local.public_url is None:
        missing.append("local.public_url (LLM4SWEAT_LOCAL__PUBLIC_URL, the address people open)")
    if await accounts.count(db, MODERATOR_ROLE) == 0:
        missing.append("a moderator account (llm4sweat users add NAME --role moderator)")
    if missing:
        raise ConsoleRefused(f"refusing to serve the console on {host or '0.0.0.0'} (beyond this machine) without "
                             + " and ".join(missing) + "; or serve it on 127.0.0.1")


def allowed_hosts(host: str, public_url: str | None) -> set[str]:
    """Host names the console may be opened by (a page elsewhere pointing its own name here
    — DNS rebinding — is refused): loopback names, the bound address, the public URL's host."""
    names = {"localhost", "127.0.0.1", "::1"}
    if host and host not in ("0.0.0.0", "::"):
        names.add(host.lower().strip("[]"))
    if public_url:
        names.add((urlsplit(public_url).hostname or "").lower())
    return names


def _host_name(request: web.Request) -> str:
    host = (request.host or "").lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def check_host(request: web.Request) -> None:
    if _host_name(request) not in request.app[HOSTS_KEY]:
        raise BadRequest(f"Host {request.host!r} is not served here; open the console by its own address.", 403)


def check_origin(request: web.Request) -> None:
    """A state-changing request must come from the console's own pages (cross-site request forgery)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise BadRequest(f"Cross-site request refused (Sec-Fetch-Site: {site}).", 403)
    origin = request.headers.get("Origin")
    if origin is None:
        raise BadRequest("Request refused: it has no Origin header (send it from the console's page).", 403)
    parts = urlsplit(origin)
    public_url = request.app[SETTINGS_KEY].local.public_url  # type: ignore[attr-defined]
    same_host = parts.scheme in ("http", "https") and parts.netloc.lower() == (request.host or "").lower()
    if not (same_host or (public_url and origin.lower() == public_url)):
        raise BadRequest(f"Cross-site request refused (Origin {origin!r} is not this console).", 403)


# ---------------------------------------------------------------------------- the guard


def route_access(request: web.Request) -> str | None:
    """The access level of the matched route; None when no route matched (404/405 follow)."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return request.app[ACCESS_KEY].get(resource.canonical)


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def guard(request: web.Request) -> None:
    """Run before every handler: who is asking, may they, and is the request really theirs."""
    app = request.app
    principal: Principal | None = None
    bearer = _bearer(request)
    if bearer is not None:
        # No browser sends this header by itself, so neither the Host nor the Origin check is
        # needed (they protect cookies); the trainer container reaches the bot as "bot:8377".
        expected = app.get(CONTROL_KEY) or ""
        if not expected or not hmac.compare_digest(bearer.encode(), expected.encode()):
            log.warning("console %s %s: a wrong control token was presented", request.method, request.path)
            raise BadRequest("The control token is not valid (it changes each time the service starts: run the "
                             "command as the user running the service, with the same data directory).", 401)
        principal = Principal.cli()
    else:
        check_host(request)
        if request.method not in SAFE_METHODS:
            check_origin(request)
        account = await sessions.account_for(app[DB_KEY], request.cookies.get(SESSION_COOKIE))  # type: ignore[arg-type]
        if account is not None:
            principal = Principal.of(account)
    request[PRINCIPAL] = principal
    level = route_access(request)
    if level == PATIENT:
        patient_id(request)
    elif level in (REVIEWER, MODERATOR):
        if principal is None:
            raise BadRequest("Sign in first: open /login (reviewers and moderators have accounts; "
                             "see `llm4sweat users`).", 401)
        if level not in principal.roles:
            log.warning("console %s %s refused: %s lacks the %s role", request.method, request.path,
                        principal.label, level)
            await _service(request).reviews.audit(None, principal.label, "refused",
                                                  f"{request.method} {request.path}: lacks the {level} role")
            what = "moderators" if level == MODERATOR else "reviewers"
            raise BadRequest(f"Only {what} can do this; {principal.name} is signed in as a {principal.role}.", 403)


def principal(request: web.Request) -> Principal:
    """The signed-in principal of a reviewer or moderator route (the guard made sure there is one)."""
    found = request.get(PRINCIPAL)
    if found is None:  # a route registered with the wrong level: fail closed
        raise BadRequest("Sign in first: open /login.", 401)
    return found


def finish(request: web.Request, response: web.StreamResponse) -> None:
    """After the handler: hand a new patient id to the browser that asked without one."""
    new = request.get(NEW_PATIENT_COOKIE)
    if new is not None and not response.prepared:
        response.set_cookie(PATIENT_COOKIE, new, max_age=PATIENT_COOKIE_DAYS * 86400, path="/",
                            httponly=True, samesite="Strict", secure=_secure(request))


# ---------------------------------------------------------------------------- patients


def patient_id(request: web.Request, *, fresh: bool = False) -> str:
    """The core's user id for this browser's patient: ``anon-`` + a hash of the cookie's random id."""
    if not fresh and PATIENT_ID in request:
        return request[PATIENT_ID]
    cookie = None if fresh else request.cookies.get(PATIENT_COOKIE)
    if cookie is None or not _COOKIE_VALUE.match(cookie):
        cookie = secrets.token_urlsafe(24)
        request[NEW_PATIENT_COOKIE] = cookie
    request[PATIENT_ID] = "anon-" + hashlib.sha256(cookie.encode()).hexdigest()[:32]
    return request[PATIENT_ID]


# ---------------------------------------------------------------------------- sign-in


def _secure(request: web.Request) -> bool:
    public_url = request.app[SETTINGS_KEY].local.public_url  # type: ignore[attr-defined]
    return bool(public_url and public_url.startswith("https://"))


def _set_session(request: web.Request, response: web.StreamResponse, token: str) -> None:
    hours = request.app[SETTINGS_KEY].local.session_hours  # type: ignore[attr-defined]
    response.set_cookie(SESSION_COOKIE, token, max_age=int(hours * 3600), path="/", httponly=True,
                        samesite="Strict", secure=_secure(request))


def _service(request: web.Request) -> "Service":
    return request.app[SERVICE_KEY]  # type: ignore[return-value]


async def _start_session(request: web.Request, account: accounts.Account, how: str) -> str:
    hours = request.app[SETTINGS_KEY].local.session_hours  # type: ignore[attr-defined]
    token = await sessions.create(request.app[DB_KEY], account, hours * 3600)  # type: ignore[arg-type]
    await _service(request).reviews.audit(None, Principal.of(account).label, "sign_in", how)
    log.info("%s signed in (%s)", Principal.of(account).label, how)
    return token


async def login_page(request: web.Request) -> web.StreamResponse:
    """GET /login: the sign-in form, or with ?token=… a one-time link that signs in at once."""
    token = request.query.get("token")
    if token is None:
        return web.FileResponse(Path(__file__).resolve().parent / "static" / "login.html", headers=SECURITY_HEADERS)
    account = await sessions.redeem_link(request.app[DB_KEY], token)  # type: ignore[arg-type]
    if account is None:
        log.info("console: an expired, used or unknown sign-in link was opened")
        return web.Response(status=303, headers={**SECURITY_HEADERS, "Location": "/login?link=invalid"})
    response = web.Response(status=303, headers={
        **SECURITY_HEADERS, "Location": "/#moderator" if account.role == MODERATOR_ROLE else "/#reviewer"})
    _set_session(request, response, await _start_session(request, account, "one-time link"))
    return response


async def login(request: web.Request) -> web.Response:
    """POST /api/login {name, password}: a session cookie, or 401 / 429."""
    data = await json_body(request)
    name = text_field(data, "name").strip()[:64]
    password = text_field(data, "password")
    throttle: LoginThrottle = request.app[THROTTLE_KEY]  # type: ignore[assignment]
    client = request.remote or "?"
    wait = throttle.wait_s(client, name)
    if wait > 0:
        minutes = max(1, round(wait / 60))
        raise BadRequest(f"Too many failed sign-ins for this name; try again in {minutes} minute(s).", 429,
                         {"Retry-After": str(int(wait) + 1)})
    account = await accounts.verify(request.app[DB_KEY], name, password)  # type: ignore[arg-type]
    if account is None:
        throttle.failed(client, name)
        log.warning("console: failed sign-in for %r from %s", name, client)
        raise BadRequest("Wrong name or password.", 401)
    response = ok({"name": account.name, "role": account.role})
    _set_session(request, response, await _start_session(request, account, "password"))
    return response


async def logout(request: web.Request) -> web.Response:
    """POST /api/logout: end this browser's session (on the server, not only the cookie)."""
    who = request.get(PRINCIPAL)
    await sessions.end(request.app[DB_KEY], request.cookies.get(SESSION_COOKIE))  # type: ignore[arg-type]
    if who is not None and who.platform == CONSOLE_PLATFORM:
        await _service(request).reviews.audit(None, who.label, "sign_out", "")
    response = ok({"signed_in": False})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def me(request: web.Request) -> web.Response:
    """GET /api/me: who this browser is signed in as (the page shows it and hides what it may not do)."""
    who = request.get(PRINCIPAL)
    if who is None:
        return ok({"signed_in": False})
    return ok({"signed_in": True, "name": who.name, "role": who.role, "roles": sorted(who.roles),
               "audited_as": who.label})
