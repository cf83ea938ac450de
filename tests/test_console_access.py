"""Who may do what on the console (issue 12; docs/access.md), over real HTTP on 127.0.0.1.

The route table is walked, not listed here: every reviewer and moderator route of the running
app answers 401 without a session and every moderator route 403 to a reviewer, so a route
added later is checked without anyone remembering to add it to this file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import time

import aiohttp
import pytest
from aiohttp import web

from bot.access import accounts, control, sessions
from bot.local import auth
from bot.local.web import make_app, start_console

pytestmark = pytest.mark.asyncio(loop_scope="session")

PASSWORD = "a long enough password"


class Browser:
    """One browser with its own cookie jar; state-changing requests carry the page's Origin."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def request(self, method: str, path: str, body=None, headers: dict | None = None,
                      origin: str | None = "self", **kw) -> tuple[int, dict, aiohttp.ClientResponse]:
        hdrs = dict(headers or {})
        if origin is not None and method not in ("GET", "HEAD"):
            hdrs.setdefault("Origin", self.url if origin == "self" else origin)
        if body is not None:
            kw["data"] = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        async with self.session.request(method, self.url + path, headers=hdrs, **kw) as resp:
            data = await resp.json() if resp.content_type == "application/json" else {}
            return resp.status, data, resp

    async def get(self, path: str, **kw):
        status, data, _ = await self.request("GET", path, **kw)
        return status, data

    async def post(self, path: str, body=None, **kw):
        status, data, _ = await self.request("POST", path, {} if body is None else body, **kw)
        return status, data

    async def sign_in(self, name: str, password: str = PASSWORD) -> "Browser":
        status, data = await self.post("/api/login", {"name": name, "password": password})
        assert status == 200, data
        return self

    def cookie(self, name: str) -> str | None:
        found = [c for c in self.session.cookie_jar if c.key == name]
        return found[0].value if found else None

    async def close(self) -> None:
        await self.session.close()


@pytest.fixture
async def console(service):
    await accounts.add(service.db, "rita", "reviewer", PASSWORD)
    await accounts.add(service.db, "mo", "moderator", PASSWORD)
    runner, url = await start_console(service, "127.0.0.1", 0)
    browsers: list[Browser] = []

    def browser() -> Browser:
        browsers.append(Browser(url))
        return browsers[-1]

    browser.url = url.rstrip("/")  # type: ignore[attr-defined]
    browser.app = runner.app  # type: ignore[attr-defined]
    try:
        yield browser
    finally:
        for b in browsers:
            await b.close()
        await runner.cleanup()


def staff_routes(app: web.Application) -> list[tuple[str, str, str]]:
    """(method, concrete path, level) of every reviewer and moderator route in the live router."""
    access = app[auth.ACCESS_KEY]
    found = []
    for route in app.router.routes():
        resource = route.resource
        level = access.get(resource.canonical) if resource is not None else None
        assert level in auth.LEVELS, f"{route.method} {resource and resource.canonical} has no access level"
        if level in (auth.REVIEWER, auth.MODERATOR):
            path = re.sub(r"\{[^}]+\}", "1", resource.canonical)
            found.append((route.method, path, level))
    return found


# ---------------------------------------------------------------------------- the route table


async def test_every_staff_route_answers_401_without_a_session(console, service):
    routes = staff_routes(console.app)
    # The walk is not vacuous: the known staff routes are among those found.
    assert {("GET", "/api/reviews"), ("POST", "/api/reviews/1/decision"), ("POST", "/api/moderator/command"),
            ("GET", "/api/moderator/alerts"), ("GET", "/api/dataset")} <= {(m, p) for m, p, _ in routes}
    assert all(level == auth.MODERATOR for _, path, level in routes if path.startswith("/api/moderator/"))
    patient = console()
    await patient.post("/api/patient/messages", {"text": "My hands sweat."})  # a patient, with a cookie
    for method, path, _ in routes:
        for who in (console(), patient):
            body = {"action": "approve", "command": "pause", "reviewer": "reviewer", "moderator": "moderator"}
            status, data, _ = await who.request(method, path, body if method == "POST" else None)
            assert status == 401, (method, path, status, data)
            assert "Sign in" in data["error"]
    assert await service.db.fetchval("SELECT COUNT(*) FROM review_decisions") == 0
    assert not await service.core.is_paused()


async def test_every_moderator_route_answers_403_to_a_reviewer(console, service):
    reviewer = await console().sign_in("rita")
    moderator_routes = [(m, p) for m, p, level in staff_routes(console.app) if level == auth.MODERATOR]
    assert ("POST", "/api/moderator/command") in moderator_routes
    for method, path in moderator_routes:
        status, data, _ = await reviewer.request(method, path, {"command": "pause"} if method == "POST" else None)
        assert status == 403, (method, path, status, data)
        assert "moderators" in data["error"]
    assert not await service.core.is_paused()
    # ... while reviewer routes answer them.
    for method, path, level in staff_routes(console.app):
        if level == auth.REVIEWER and method == "GET":
            status, data = await reviewer.get(path)
            assert status == 200, (path, data)


async def test_a_moderator_may_also_review(console, service):
    patient, moderator = console(), await console().sign_in("mo")
    sent = (await patient.post("/api/patient/messages", {"text": "Is iontophoresis safe?"}))[1]
    status, items = await moderator.get("/api/reviews")
    assert status == 200 and [i["item_id"] for i in items["items"]] == [sent["item_id"]]
    status, outcome = await moderator.post(f"/api/reviews/{sent['item_id']}/decision", {"action": "approve", "accuracy": 4,
                                                                                   "appropriateness": 4, "empathy": 4})
    assert status == 200 and outcome["state"] == "approved"
    assert await service.db.fetchval("SELECT actor FROM review_audit WHERE action = 'approve'") == "console:mo"


async def test_a_route_without_an_access_level_stops_the_app(service, monkeypatch):
    from bot.local import web as console_web

    async def extra(request):
        return web.json_response({})

    monkeypatch.setattr(console_web, "ROUTES", [*console_web.ROUTES, ("GET", "/api/new", extra, "everyone")])
    with pytest.raises(ValueError, match="access level"):
        make_app(service)


# ---------------------------------------------------------------------------- patients


async def test_patients_see_and_delete_only_their_own_conversation(console, service):
    alex, sam = console(), console()
    sent = (await alex.post("/api/patient/messages", {"text": "Alex's private question about sweating."}))[1]
    assert sent["message_id"]
    alex_cookie = alex.cookie(auth.PATIENT_COOKIE)
    assert alex_cookie and alex_cookie != sam.cookie(auth.PATIENT_COOKIE)

    # Sam asks for Alex's conversation every way a request could name it: nothing comes back.
    alex_id = await service.db.fetchval("SELECT platform_user_id FROM patients")
    assert alex_id.startswith("anon-") and alex_cookie not in alex_id  # stored as a hash of the cookie
    for query in ({}, {"user": "alex"}, {"user": alex_id}, {"conversation_id": str(sent["conversation_id"])}):
        status, body = await sam.get("/api/patient/conversation", params=query)
        assert status == 200 and body["entries"] == [], (query, body)
    # Sam's forget deletes nothing of Alex's, whatever the body says.
    status, body = await sam.post("/api/patient/forget", {"user": alex_id})
    assert status == 200 and body["deleted"] is False
    status, body = await alex.get("/api/patient/conversation")
    assert [e["text"] for e in body["entries"] if e["type"] == "message"] == ["Alex's private question about sweating."]
    # The review queue (every patient's words) is not for patients.
    status, body = await sam.get("/api/reviews")
    assert status == 401
    # Alex deletes their own, and the browser gets a new id.
    status, body = await alex.post("/api/patient/forget")
    assert status == 200 and body["deleted"] is True
    assert alex.cookie(auth.PATIENT_COOKIE) != alex_cookie
    assert await service.db.fetchval("SELECT COUNT(*) FROM messages") == 0


async def test_a_typed_name_does_not_pick_the_patient(console, service):
    one = console()
    for name in ("alex", "bob", "reviewer"):
        status, body = await one.post("/api/patient/messages", {"user": name, "text": f"Question from {name}?"})
        assert status == 200
    assert await service.db.fetchval("SELECT COUNT(*) FROM patients") == 1
    assert await service.db.fetchval("SELECT COUNT(*) FROM patients WHERE platform_user_id IN ('alex', 'bob', 'reviewer')") == 0


async def test_the_rate_limit_keys_on_the_browser_not_on_a_name(console, service):
    limit = service.settings.safety.rate_limit_messages
    flooder, other = console(), console()
    statuses = []
    for i in range(limit + 4):  # a new name each time: it used to reset the limit
        status, body = await flooder.post("/api/patient/messages", {"user": f"name-{i}", "text": f"Question {i} on sweat?"})
        assert status == 200
        statuses.append(body["status"])
    assert statuses.count("rate_limited") == 4 and "rate_limited" not in statuses[:limit]
    status, body = await other.post("/api/patient/messages", {"text": "My feet sweat, what helps?"})
    assert body["status"] == "shown"  # another browser is not held back


async def test_patient_cookie_is_httponly_strict_and_set_by_the_server(console):
    status, _, resp = await console().request("GET", "/")
    cookie = resp.cookies[auth.PATIENT_COOKIE]
    assert status == 200 and cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert int(cookie["max-age"]) == auth.PATIENT_COOKIE_DAYS * 86400 and not cookie["secure"]


# ---------------------------------------------------------------------------- sign-in and sessions


async def test_session_cookie_and_server_side_sessions(console, service):
    browser = console()
    status, data, resp = await browser.request("POST", "/api/login", {"name": "rita", "password": PASSWORD})
    assert status == 200 and data == {"name": "rita", "role": "reviewer"}
    cookie = resp.cookies[auth.SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/" and not cookie["secure"]
    assert int(cookie["max-age"]) == int(service.settings.local.session_hours * 3600)
    token = cookie.value
    stored = [r[0] for r in await service.db.fetchall("SELECT token_hash FROM sessions")]
    assert stored == [hashlib.sha256(token.encode()).hexdigest()]  # only the hash is kept
    raw = b"".join(p.read_bytes() for p in service.settings.db_path.parent.glob(service.settings.db_path.name + "*"))
    assert token.encode() not in raw
    status, me = await browser.get("/api/me")
    assert me == {"signed_in": True, "name": "rita", "role": "reviewer", "roles": ["reviewer"],
                  "audited_as": "console:rita"}
    assert await service.db.fetchval("SELECT actor FROM review_audit WHERE action = 'sign_in'") == "console:rita"

    # Expired on the server: refused even though the browser still has the cookie.
    await service.db.execute("UPDATE sessions SET expires_at = ?", (time.time() - 1,))
    assert (await browser.get("/api/reviews"))[0] == 401

    # Signing out ends the session on the server, not only in this browser.
    await browser.sign_in("rita")
    token = browser.cookie(auth.SESSION_COOKIE)
    assert (await browser.post("/api/logout"))[0] == 200
    async with aiohttp.ClientSession() as stolen:
        async with stolen.get(browser.url + "/api/reviews", headers={"Cookie": f"{auth.SESSION_COOKIE}={token}"}) as r:
            assert r.status == 401


async def test_removing_an_account_or_changing_its_password_ends_its_sessions(console, service):
    reviewer = await console().sign_in("rita")
    assert (await reviewer.get("/api/reviews"))[0] == 200
    assert await accounts.set_password(service.db, "rita", "another long password")
    assert (await reviewer.get("/api/reviews"))[0] == 401
    await reviewer.sign_in("rita", "another long password")
    assert (await reviewer.get("/api/reviews"))[0] == 200
    assert await accounts.remove(service.db, "rita")
    assert (await reviewer.get("/api/reviews"))[0] == 401
    assert await service.db.fetchval("SELECT COUNT(*) FROM sessions") == 0


async def test_the_role_is_read_from_the_database_on_every_request(console, service):
    moderator = await console().sign_in("mo")
    assert (await moderator.get("/api/moderator/status"))[0] == 200
    await service.db.execute("UPDATE accounts SET role = 'reviewer' WHERE name = 'mo'")
    assert (await moderator.get("/api/moderator/status"))[0] == 403


async def test_wrong_passwords_are_refused_and_rate_limited(console, service):
    browser = console()
    status, data = await browser.post("/api/login", {"name": "nobody", "password": PASSWORD})
    assert status == 401 and data["error"] == "Wrong name or password."
    for _ in range(auth.LOGIN_FAILURES_PER_CLIENT - 1):
        status, data = await browser.post("/api/login", {"name": "rita", "password": "wrong password!!"})
        assert status == 401 and data["error"] == "Wrong name or password."
    status, _ = await browser.post("/api/login", {"name": "rita", "password": "wrong password!!"})
    assert status == 401
    # Now even the right password waits: guessing is slowed to a few tries per quarter hour.
    status, data, resp = await browser.request("POST", "/api/login", {"name": "rita", "password": PASSWORD})
    assert status == 429 and "try again" in data["error"] and int(resp.headers["Retry-After"]) > 0
    assert browser.cookie(auth.SESSION_COOKIE) is None
    await browser.sign_in("mo")  # another account from the same browser is not locked out


async def test_a_one_time_link_signs_in_once_and_expires(console, service):
    reviewer = await accounts.get(service.db, "rita")
    token = await sessions.create_link(service.db, reviewer, 60)
    browser = console()
    status, _, resp = await browser.request("GET", f"/login?token={token}", allow_redirects=False)
    assert status == 303 and resp.headers["Location"] == "/#reviewer"
    assert (await browser.get("/api/me"))[1]["name"] == "rita"
    again = console()
    status, _, resp = await again.request("GET", f"/login?token={token}", allow_redirects=False)
    assert status == 303 and resp.headers["Location"] == "/login?link=invalid"
    assert again.cookie(auth.SESSION_COOKIE) is None and (await again.get("/api/me"))[1] == {"signed_in": False}

    expired = await sessions.create_link(service.db, await accounts.get(service.db, "mo"), 60)
    await service.db.execute("UPDATE login_links SET expires_at = ? WHERE used_at IS NULL", (time.time() - 1,))
    status, _, resp = await again.request("GET", f"/login?token={expired}", allow_redirects=False)
    assert resp.headers["Location"] == "/login?link=invalid"
    status, _, resp = await again.request("GET", "/login")
    assert status == 200 and "text/html" in resp.content_type


async def test_secure_cookies_when_the_public_url_is_https(console, service):
    service.settings.local.public_url = "https://support.example.org"
    status, _, resp = await console().request("POST", "/api/login", {"name": "rita", "password": PASSWORD})
    assert status == 200 and resp.cookies[auth.SESSION_COOKIE]["secure"]


# ---------------------------------------------------------------------------- cross-site requests


async def test_state_changing_requests_need_the_console_origin(console, service):
    patient = console()
    moderator = await console().sign_in("mo")
    cases = [
        ({"origin": None}, "no Origin"),
        ({"origin": "https://evil.example"}, "not this console"),
        ({"origin": "null"}, "not this console"),
        ({"headers": {"Sec-Fetch-Site": "cross-site"}}, "Cross-site"),
        ({"headers": {"Sec-Fetch-Site": "same-site"}}, "Cross-site"),
    ]
    for kwargs, needle in cases:
        for who, path, body in ((patient, "/api/patient/messages", {"text": "hello there, sweat?"}),
                                (moderator, "/api/moderator/command", {"command": "pause"}),
                                (patient, "/api/login", {"name": "mo", "password": PASSWORD})):
            status, data, _ = await who.request("POST", path, body, **kwargs)
            assert status == 403 and needle in data["error"], (path, kwargs, data)
    assert await service.db.fetchval("SELECT COUNT(*) FROM messages") == 0 and not await service.core.is_paused()
    status, data, _ = await moderator.request("POST", "/api/moderator/command", {"command": "pause"},
                                              headers={"Sec-Fetch-Site": "same-origin"})
    assert status == 200 and data["ok"] and await service.core.is_paused()


# ---------------------------------------------------------------------------- the command line


async def test_the_command_line_uses_the_control_token(console, service, request):
    from pipeline.loop_cli import console_command

    path = control.token_path(service.settings.data_dir)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    from bot.instance import Instance

    cfg = service.settings
    instance = Instance(cfg.data_dir)  # as `llm4sweat run` holds it, with the console's address
    instance.set_url(console.url)
    request.addfinalizer(instance.release)
    reply = await console_command(cfg, "pause")
    assert reply is not None and reply["ok"], reply
    assert await service.core.is_paused()
    assert await service.db.fetchval("SELECT actor FROM review_audit WHERE action = 'command'") == "cli:operator"

    token = control.read_token(service.settings.data_dir)
    browser = console()
    bearer = {"Authorization": f"Bearer {token}"}
    # The trainer container reaches the bot by its compose name: no Host check for the token.
    status, data, _ = await browser.request("GET", "/api/moderator/status", headers={**bearer, "Host": "bot:8377"})
    assert status == 200 and "Live adapter" in data["text"]
    status, data, _ = await browser.request("GET", "/api/reviews", headers=bearer)
    assert status == 403  # the token runs commands; it does not review
    status, data, _ = await browser.request("GET", "/api/moderator/status", headers={"Authorization": "Bearer wrong"})
    assert status == 401 and "control token" in data["error"]

    path.unlink()  # a service whose token this user cannot read: said plainly, nothing done
    reply = await console_command(cfg, "resume")
    assert reply is not None and reply["ok"] is False and "control token" in reply["error"]
    assert await service.core.is_paused()


# ---------------------------------------------------------------------------- binding beyond loopback


async def test_binding_beyond_loopback_needs_a_moderator_and_a_public_url(service):
    with pytest.raises(auth.ConsoleRefused) as refused:
        await auth.check_binding(service.settings, "0.0.0.0", service.db)
    assert "local.public_url" in str(refused.value) and "moderator account" in str(refused.value)
    service.settings.local.public_url = "https://support.example.org"
    await accounts.add(service.db, "rita", "reviewer", PASSWORD)
    with pytest.raises(auth.ConsoleRefused) as refused:
        await auth.check_binding(service.settings, "0.0.0.0", service.db)
    assert "moderator account" in str(refused.value) and "public_url" not in str(refused.value)
    await accounts.add(service.db, "mo", "moderator", PASSWORD)
    await auth.check_binding(service.settings, "0.0.0.0", service.db)
    for host in ("127.0.0.1", "localhost", "::1"):
        await auth.check_binding(service.settings.model_copy(deep=True), host, service.db)


async def test_with_a_wide_binding_the_host_check_uses_the_public_url(service):
    service.settings.local.public_url = "https://support.example.org"
    app = make_app(service, "0.0.0.0")  # the app as it would be on 0.0.0.0, served here on loopback only
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    try:
        async with aiohttp.ClientSession() as session:
            for host, expected in (("support.example.org", 200), ("127.0.0.1:8377", 200),
                                   ("evil.example", 403), ("0.0.0.0", 403)):
                async with session.get(url + "/api/info", headers={"Host": host}) as resp:
                    assert resp.status == expected, host
    finally:
        await runner.cleanup()


async def test_run_refuses_a_wide_binding_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM4SWEAT_")}
    env["LLM4SWEAT_DATA_DIR"] = str(tmp_path)
    out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "bot.cli", "run", "--host", "0.0.0.0"],
                                  capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if "refusing" in line]
    assert len(lines) == 1 and "refusing to serve the console on 0.0.0.0" in lines[0], out.stderr
    assert "users add" in lines[0] and "public_url" in lines[0]
    assert "Building the offline demo model" not in out.stdout  # refused before any model work


# ---------------------------------------------------------------------------- llm4sweat demo / run


async def test_the_demo_prints_one_time_links_that_sign_in(service):
    from bot import cli

    runner, url = await start_console(service, "127.0.0.1", 0)
    try:
        with cli.console.capture() as run_output:
            await cli._print_sign_in(service, url, demo=False)
        assert "No reviewer or moderator accounts yet" in run_output.get() and "users add" in run_output.get()
        printed = []
        for _ in range(2):  # two demo starts: the accounts are made once, the links are new each time
            with cli.console.capture() as demo_output:
                await cli._print_sign_in(service, url, demo=True)
            printed.append(re.findall(r"(\w+)\s+(http://\S+/login\?token=\S+)", demo_output.get()))
        assert [role for role, _ in printed[0]] == ["reviewer", "moderator"]
        assert [a.name for a in await accounts.all_accounts(service.db)] == ["demo-moderator", "demo-reviewer"]
        assert printed[0][0][1] != printed[1][0][1]
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            for role, link in printed[1]:
                async with browser.get(link, allow_redirects=False) as resp:
                    assert resp.status == 303 and resp.headers["Location"] == f"/#{role}"
                async with browser.get(url + "api/me") as resp:
                    assert (await resp.json())["name"] == f"demo-{role}"
                async with browser.get(link, allow_redirects=False) as resp:  # once only
                    assert resp.headers["Location"] == "/login?link=invalid"
    finally:
        await runner.cleanup()
