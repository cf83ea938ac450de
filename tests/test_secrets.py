"""Nothing secret survives in storage or on screen (issue 12).

The end-to-end test runs the real service on the real ``openai`` backend against a local
OpenAI-compatible server that answers 401 and echoes the key it was sent (as OpenAI's API
does: "Incorrect API key provided: …"), with the real Slack platform (slack-bolt, HTTP mode,
against tests/slack_fake.py) as the reviewer channel and the console's API for moderators.
Then it reads the raw database bytes (and -wal, -shm), every other file under the data
directory, the alerts API, /status and every message posted to Slack, and finds no key.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bot.access import accounts
from bot.inference.fixed import FixedBackend
from bot.local.web import start_console
from bot.redact import REDACTED, redact
from bot.settings import load_settings
from bot.slack_platform import start_slack
from bot.storage import Database
from reviewers.models import Actor
from tests.slack_fake import FakeSlack
from tests.test_slack import GROUP, REVIEWER, SECRET, slack_config

# Async tests share the session's event loop (the platform fakes and servers run in it).
in_session_loop = pytest.mark.asyncio(loop_scope="session")

KEY = "vllm-local-key-7f3a9c2e51d4"  # configured for the model server; no known shape: removed by value
OTHER_TOKENS = ["sk-proj-abcdefghij0123456789", "hf_AbCdEfGhIjKlMnOpQrStUv", "xoxb-1234-5678-abcdefghijkl"]


# ---------------------------------------------------------------------------- the function


def test_configured_secrets_are_removed_by_value():
    text = f"Incorrect API key provided: {KEY}. Your key {KEY} was rejected."
    assert redact(text, [KEY]) == f"Incorrect API key provided: {REDACTED}. Your key {REDACTED} was rejected."
    assert KEY not in redact(text, ["short", KEY])
    assert redact(text, []) == text  # a value of no known shape needs the settings


@pytest.mark.parametrize("leak", [
    "Authorization: Bearer abc.def-ghi_jkl~123",
    "Incorrect API key provided: sk-proj-abcdefghij0123456789.",
    "invalid_auth for xoxb-1234-5678-abcdefghijkl",
    "app token xapp-1-A0123-456-abcdef0123",
    "401 Unauthorized: MTIzNDU2Nzg5MDEyMzQ1Njc4OTA.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456",
    "HF_TOKEN hf_AbCdEfGhIjKlMnOpQrStUv is invalid",
    '{"api_key": "zz-99-secret-value"}',
    "https://example.org/v1?token=abcdef123456&x=1",
    "password=hunter2hunter2",
])
def test_token_shapes_are_removed_without_settings(leak):
    value = {"abc.def-ghi_jkl~123", "sk-proj-abcdefghij0123456789", "xoxb-1234-5678-abcdefghijkl",
             "xapp-1-A0123-456-abcdef0123", "MTIzNDU2Nzg5MDEyMzQ1Njc4OTA.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456",
             "hf_AbCdEfGhIjKlMnOpQrStUv", "zz-99-secret-value", "abcdef123456", "hunter2hunter2"}
    cleaned = redact(leak)
    assert REDACTED in cleaned and not any(v in cleaned for v in value), cleaned


def test_ordinary_error_text_is_left_alone():
    for text in ("connection refused", "HTTP 503: the model is loading, retry later",
                 "the token provided is invalid", "task-1234 and a risk-assessment", "Basic information",
                 "model server http://127.0.0.1:8000/v1 refused the request: HTTP 404: model v3 not found"):
        assert redact(text, [KEY]) == text


def test_settings_redact_uses_every_configured_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM4SWEAT_INFERENCE__OPENAI_API_KEY", KEY)
    monkeypatch.setenv("LLM4SWEAT_DISCORD__TOKEN", "discord-token-of-no-shape")
    cfg = load_settings(data_dir=tmp_path)
    assert cfg.redact(f"{KEY} / discord-token-of-no-shape") == f"{REDACTED} / {REDACTED}"


# ---------------------------------------------------------------------------- end to end


class KeyEchoServer:
    """OpenAI-compatible: /health is open (as vLLM's), every /v1 call answers 401 quoting the
    key from the Authorization header, until ``accept`` is set; then chat completions answer."""

    def __init__(self) -> None:
        self.accept = False
        self.seen_keys: list[str] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _v1(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        key = header.removeprefix("Bearer ")
        self.seen_keys.append(key)
        if not self.accept:
            return web.json_response({"error": {
                "message": f"Incorrect API key provided: {key}. Received header: Authorization: {header}. "
                           f"Known keys start like {OTHER_TOKENS}",
                "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}, status=401)
        if request.path.endswith("/models"):
            return web.json_response({"object": "list", "data": [{"id": "base", "object": "model"}]})
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "base",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Aluminium chloride at night helps many people."}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18}})

    async def start(self) -> "KeyEchoServer":
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_route("*", "/v1/{tail:.*}", self._v1)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def leaks(text: str) -> list[str]:
    return [secret for secret in [KEY, *OTHER_TOKENS] if secret in text]


@in_session_loop
async def test_a_key_echoed_by_the_model_server_is_stored_shown_and_posted_nowhere(tmp_path, monkeypatch):
    from bot.service import Service

    monkeypatch.setenv("LLM4SWEAT_INFERENCE__OPENAI_API_KEY", KEY)
    echo = await KeyEchoServer().start()
    slack = await FakeSlack().start()
    slack.usergroups[GROUP] = [REVIEWER]
    cfg = load_settings(data_dir=tmp_path, slack=slack_config(slack),
                        inference={"backend": "openai", "openai_base_url": echo.url, "base_model": "base",
                                   "max_retries": 0, "openai_health_interval_s": 0})
    service = Service(cfg)
    await service.start(retry_loop=False)
    slack_runner = await start_slack(service)
    await accounts.add(service.db, "mo", "moderator", "a long enough password")
    runner, url = await start_console(service, "127.0.0.1", 0)
    base = url.rstrip("/")
    headers = {"Origin": base}
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as patient, \
                aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as moderator:
            async with patient.post(base + "/api/patient/messages", json={"text": "Why do my hands sweat?"},
                                    headers=headers) as resp:
                sent = await resp.json()
            assert sent["status"] == "queued_retry", sent
            assert KEY in echo.seen_keys  # the server really was sent the key, and echoed it
            async with moderator.post(base + "/api/login", json={"name": "mo", "password": "a long enough password"},
                                      headers=headers) as resp:
                assert resp.status == 200
            shown = []
            for path in ("/api/moderator/alerts", "/api/moderator/status"):
                async with moderator.get(base + path) as resp:
                    assert resp.status == 200
                    shown.append(await resp.text())
            alerts = json.loads(shown[0])
            assert alerts["incidents"] and alerts["incidents"][0]["kind"] == "model_unavailable"
            assert "401" in alerts["incidents"][0]["detail"] and REDACTED in alerts["incidents"][0]["detail"]
            assert any("failing" in a["text"] for a in alerts["alerts"])

            # The server takes the key again; the saved message is answered and its card posted.
            echo.accept = True
            async with moderator.post(base + "/api/moderator/command", json={"command": "resume"},
                                      headers=headers) as resp:
                resumed = await resp.json()
                shown.append(json.dumps(resumed))
            assert resumed["data"]["answered"] == 1, resumed
            await slack.wait_for(lambda: len(slack.calls_to("chat.postMessage")) >= 2)

        posted = [json.dumps(call.args) for call in slack.calls if call.method.startswith("chat.")]
        assert any("failing" in text for text in posted)  # the outage alert reached the reviewer channel
        assert any("Why do my hands sweat?" in text for text in posted)  # and the review card
        for text in shown + posted:
            assert leaks(text) == [], text

        stored = await service.db.fetchone("SELECT last_error FROM messages")
        assert stored["last_error"] is None  # answered now; the error column was scrubbed while it held one
    finally:
        await runner.cleanup()
        await slack_runner.cleanup()
        await service.stop()
        await slack.stop()
        await echo.stop()

    files = [p for p in Path(tmp_path).rglob("*") if p.is_file()]
    assert "llm4sweat.db" in {p.name for p in files}
    for path in files:
        raw = path.read_bytes()
        for secret in [KEY, *OTHER_TOKENS]:
            assert secret.encode() not in raw, f"{secret} in {path.name}"


@in_session_loop
async def test_the_error_column_holds_no_key_while_a_message_waits(tmp_path, monkeypatch):
    """While the model server refuses, messages.last_error and incidents.detail are what the
    operator reads; both carry the reason without the key (read before any retry clears them)."""
    from bot.service import Service

    monkeypatch.setenv("LLM4SWEAT_INFERENCE__OPENAI_API_KEY", KEY)
    echo = await KeyEchoServer().start()
    cfg = load_settings(data_dir=tmp_path, inference={"backend": "openai", "openai_base_url": echo.url,
                                                      "base_model": "base", "max_retries": 0,
                                                      "openai_health_interval_s": 0})
    service = Service(cfg)
    await service.start(retry_loop=False)
    try:
        from bot.platform import IncomingMessage

        result = await service.core.handle_message(IncomingMessage("local", "anon-1", "console", "anon-1",
                                                                   "Does botox help?"))
        assert result.status == "queued_retry"
        error = await service.db.fetchval("SELECT last_error FROM messages")
        detail = await service.db.fetchval("SELECT detail FROM incidents")
        for text in (error, detail):
            assert "401" in text and REDACTED in text and leaks(text) == [], text
    finally:
        await service.stop()
        await echo.stop()
    raw = b"".join(p.read_bytes() for p in Path(tmp_path).glob("llm4sweat.db*"))
    assert KEY.encode() not in raw and b"Incorrect API key provided" in raw  # the reason is kept, the key is not


# ---------------------------------------------------------------------------- file modes


@in_session_loop
async def test_database_files_are_owner_only(tmp_path):
    old = os.umask(0o022)  # a usual shell umask: files would be 0644 unless created otherwise
    try:
        db = await Database(tmp_path / "data" / "llm4sweat.db").open()
        await db.execute("INSERT INTO service_state (key, value, updated_at) VALUES ('k', 'v', 0)")
        names = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "data").iterdir()}
        await db.close()
    finally:
        os.umask(old)
    assert {"llm4sweat.db", "llm4sweat.db-wal", "llm4sweat.db-shm"} <= set(names)
    assert all(mode == 0o600 for mode in names.values()), {k: oct(v) for k, v in names.items()}
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700


@in_session_loop
async def test_an_existing_world_readable_database_is_tightened(tmp_path):
    path = tmp_path / "llm4sweat.db"
    db = await Database(path).open()
    await db.close()
    os.chmod(path, 0o644)
    db = await Database(path).open()
    await db.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@in_session_loop
async def test_a_platform_error_quoting_a_token_is_stored_without_it(tmp_path):
    """Slack's answer to a failed post may carry a token (here: the bot token in the error);
    the outbox keeps the failure for a retry and for /status, without the token."""
    from bot.service import Service
    from tests.slack_fake import BOT_TOKEN

    slack = await FakeSlack().start()
    service = Service(load_settings(data_dir=tmp_path, slack=slack_config(slack)), FixedBackend())
    await service.start(retry_loop=False)
    slack_runner = await start_slack(service)
    try:
        # The bot token has a known shape; the signing secret is removed only because it is configured.
        slack.fail("chat.postMessage", error=f"token_revoked ({BOT_TOKEN}, {SECRET})", times=3)
        await service.core.alert_moderators("The model is failing: connection refused.")
        await slack.wait_for(lambda: slack.attempts("chat.postMessage"))
        row = await service.db.fetchone("SELECT status, last_error FROM outbox WHERE kind = 'alert' AND platform = 'slack'")
        assert row["status"] == "pending" and "token_revoked" in row["last_error"], dict(row)
        assert BOT_TOKEN not in row["last_error"] and SECRET not in row["last_error"] and REDACTED in row["last_error"]
        status = await service.commands.run(Actor("cli", "operator", roles=frozenset({"moderator"})), "status")
        assert BOT_TOKEN not in status.text + json.dumps(status.data, default=str)
    finally:
        await slack_runner.cleanup()
        await service.stop()
        await slack.stop()
    raw = b"".join(p.read_bytes() for p in Path(tmp_path).glob("llm4sweat.db*"))
    assert BOT_TOKEN.encode() not in raw and SECRET.encode() not in raw and b"token_revoked" in raw
