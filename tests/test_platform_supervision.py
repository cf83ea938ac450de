"""Each platform starts, fails and reconnects on its own (issue 15; issue 16 items 2 and 4).

Discord and Slack run under ``bot.supervisor`` exactly as ``llm4sweat run`` starts them, against
the strict fakes (real discord.py and slack-bolt at their network boundary), next to the local
console. A platform that cannot start, or whose connection ends for good, is one clear log line,
a ``failed: <reason>`` health state, an incident, and an urgent alert on the other platforms,
while everything else keeps answering.
"""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest

from bot.discord_platform import start_discord
from bot.inference.fixed import FixedBackend
from bot.local.platform import LocalPlatform
from bot.local.web import start_console
from bot.platform import ConnectionState
from bot.settings import load_settings
from bot.slack_platform import start_slack
from bot.supervisor import supervise
from tests.slack_fake import FakeSlack
from tests.test_both_platforms import REPLY, discord_fake, people, slack_fake  # noqa: F401 (fixtures)
from tests.test_discord import thread_texts
from tests.test_slack import PATIENT, REVIEW, SUPPORT, SignedHTTP, message, slack_config

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Supervised:
    """The service with the console, and Discord and Slack each under its supervisor."""

    def __init__(self, tmp_path, dc, sl: FakeSlack, **slack_overrides):
        self.tmp_path, self.dc, self.sl = tmp_path, dc, sl
        self.slack_overrides = slack_overrides
        self.service = None
        self.console = None
        self.http = None

    async def start(self) -> "Supervised":
        from bot.service import Service

        dc = self.dc
        discord_cfg = {"token": "test-token-not-a-secret", "guild_ids": [int(dc.guild_id)],
                       "support_channel_ids": [int(dc.support_id)], "reviewer_channel_id": int(dc.reviewer_channel_id),
                       "reviewer_role": "Reviewer", "moderator_role": "Moderator", "card_edit_interval_s": 0.01}
        settings = load_settings(data_dir=self.tmp_path, discord=discord_cfg,
                                 slack=slack_config(self.sl, **self.slack_overrides))
        self.backend = FixedBackend(reply=REPLY)
        self.service = Service(settings, self.backend)
        self.service.add_platform(LocalPlatform())
        await self.service.start(retry_loop=False)
        service = self.service
        self.discord = supervise(service, "discord", lambda health: start_discord(
            service, health=health, guild_ready_timeout=0.05, ready_timeout=15), backoff_s=(0.05,))
        self.slack = supervise(service, "slack", lambda health: start_slack(service, health), backoff_s=(0.05,))
        self.console, self.console_url = await start_console(service)
        return self

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.console is not None:
            await self.console.cleanup()
        if self.service is not None:
            await self.service.stop()

    async def settled(self, supervisor) -> None:
        """Connected, or given up."""
        done = [asyncio.ensure_future(supervisor.connected.wait()), asyncio.ensure_future(supervisor.finished.wait())]
        await asyncio.wait(done, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.cancel()

    async def console_patient(self, text: str) -> dict:
        return await console_patient(self.console_url, text)

    def slack_http(self) -> SignedHTTP:
        self.http = SignedHTTP(self.sl, self.slack.runner.url)
        return self.http


async def console_patient(url: str, text: str) -> dict:
    """A patient's browser on the console (an anonymous cookie, the page's Origin)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.post(url + "api/patient/messages", json={"text": text},
                                headers={"Origin": url.rstrip("/")}) as response:
            assert response.status == 200, await response.text()
            return await response.json()


def supervisor_errors(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "bot.supervisor" and r.levelno >= logging.ERROR
            and r.getMessage().startswith(f"{name}:")]


@pytest.fixture
async def running(tmp_path, discord_fake, slack_fake):
    harness = await Supervised(tmp_path, discord_fake, slack_fake).start()
    await harness.settled(harness.discord)
    await harness.settled(harness.slack)
    yield harness
    await harness.stop()


async def test_a_bad_slack_token_leaves_the_console_and_discord_running(tmp_path, discord_fake, slack_fake, people,
                                                                        caplog):
    caplog.set_level(logging.INFO)
    harness = await Supervised(tmp_path, discord_fake, slack_fake, bot_token="xoxb-revoked-long-ago").start()
    try:
        await asyncio.wait_for(harness.slack.finished.wait(), 10)
        await asyncio.wait_for(harness.discord.connected.wait(), 15)
        health = harness.service.platform_health
        assert health["slack"].state == ConnectionState.FAILED
        assert "invalid_auth" in health["slack"].reason and "BOT_TOKEN" in health["slack"].reason
        assert health["discord"].state == ConnectionState.CONNECTED and health["local"].ready
        assert "slack" not in harness.service.core.platforms
        (line,) = supervisor_errors(caplog, "slack")  # one clear line, no traceback
        assert line.exc_info is None and "invalid_auth" in line.getMessage()
        assert "xoxb-revoked-long-ago" not in caplog.text
        # the console still answers
        answered = await harness.console_patient("Do sweaty palms get better with age?")
        assert answered["status"] == "shown" and REPLY in answered["views"][-1]["text"]
        # Discord still answers, and the moderators there are told about Slack
        question = await discord_fake.say(people["patient"], discord_fake.support_id, "Is iontophoresis safe?")
        await discord_fake.wait_for(lambda: any(REPLY in t for t in thread_texts(discord_fake, question["id"])),
                                    what="the Discord patient's answer")
        alert = await discord_fake.wait_for(lambda: [m for m in discord_fake.bot_messages(discord_fake.reviewer_channel_id)
                                                     if "slack could not start" in m["content"]], what="the alert")
        assert "invalid_auth" in alert[0]["content"] and "Urgent" in alert[0]["content"]
        incident = await harness.service.db.fetchval("SELECT detail FROM incidents WHERE kind = 'platform_failed'")
        assert incident.startswith("slack:") and "invalid_auth" in incident
    finally:
        await harness.stop()


async def test_discord_token_reset_while_running_fails_it_for_good_and_tells_slack(running, people, caplog):
    caplog.set_level(logging.INFO)
    dc, sl, service = running.dc, running.sl, running.service
    assert service.platform_health["discord"].ready and service.platform_health["slack"].ready
    await dc.drop_connection(4004)  # what Discord does when the token is reset in the developer portal
    await asyncio.wait_for(running.discord.finished.wait(), 10)
    health = service.platform_health["discord"]
    assert health.state == ConnectionState.FAILED and "4004" in health.reason and "Reset Token" in health.reason
    assert health.describe().startswith("failed: Discord ended the connection")
    assert dc.identifies == 1 and not dc.resumes  # not retried: a reset token cannot come back by itself
    assert "discord" not in service.core.platforms
    (line,) = supervisor_errors(caplog, "discord")
    assert line.exc_info is None
    alert = await sl.wait_for(lambda: [m for m in sl.channel_messages(REVIEW) if "discord stopped working" in m["text"]])
    assert "4004" in alert[0]["text"] and alert[0]["text"].startswith(":rotating_light:")
    assert await service.db.fetchval("SELECT COUNT(*) FROM incidents WHERE kind = 'platform_failed'") == 1
    # Slack keeps answering
    http = running.slack_http()
    event = message("Does botox help sweaty hands?", user=PATIENT)
    await http.event(event)
    await sl.wait_for(lambda: len(sl.thread(SUPPORT, event["ts"])) >= 2)


async def test_a_dropped_discord_connection_is_connecting_then_connected(running, people):
    dc, service = running.dc, running.service
    health = service.platform_health["discord"]
    seen: list[ConnectionState] = []
    record = health.set
    health.set = lambda state, reason="": (seen.append(state), record(state, reason))  # type: ignore[method-assign]
    await dc.drop_connection(4000)
    await dc.wait_for(lambda: dc.resumes and health.ready, what="the session resumed")
    assert seen == [ConnectionState.CONNECTING, ConnectionState.CONNECTED]
    assert not running.discord.finished.is_set()


async def test_slack_token_revoked_while_running_fails_it_for_good_and_tells_discord(running, people, caplog):
    """An admin revokes the bot token: Slack answers every Web API call with invalid_auth. The
    next call the bot makes (here the review card for a Discord patient) ends Slack for good."""
    dc, sl, service = running.dc, running.sl, running.service
    sl.bot_tokens.clear()
    question = await dc.say(people["patient"], dc.support_id, "Is it normal that my palms sweat so much?")
    await dc.wait_for(lambda: any(REPLY in t for t in thread_texts(dc, question["id"])), what="the Discord answer")
    await asyncio.wait_for(running.slack.finished.wait(), 10)
    health = service.platform_health["slack"]
    assert health.state == ConnectionState.FAILED and "invalid_auth" in health.reason and "BOT_TOKEN" in health.reason
    alert = await dc.wait_for(lambda: [m for m in dc.bot_messages(dc.reviewer_channel_id)
                                       if "slack stopped working" in m["content"]], what="the alert on Discord")
    assert "invalid_auth" in alert[0]["content"]
    assert len(supervisor_errors(caplog, "slack")) == 1
    assert "slack" not in service.core.platforms


async def test_slack_telling_the_app_its_tokens_were_revoked_fails_it(running, people):
    dc, service = running.dc, running.service
    http = running.slack_http()
    await http.post(json.dumps({"type": "event_callback", "event_id": "EvREVOKED", "team_id": "T0TEAM",
                                "api_app_id": "A0TEST", "event": {"type": "tokens_revoked",
                                                                  "tokens": {"bot": ["U0BOT"]}}}),
                    "application/json", kind="event")
    await asyncio.wait_for(running.slack.finished.wait(), 10)
    assert "revoked" in service.platform_health["slack"].reason
    await dc.wait_for(lambda: [m for m in dc.bot_messages(dc.reviewer_channel_id) if "slack stopped working" in m["content"]],
                      what="the alert on Discord")


async def test_an_unreachable_slack_is_retried_and_connects_when_it_answers(tmp_path, discord_fake, slack_fake, caplog):
    caplog.set_level(logging.INFO)
    slack_fake.fail("auth.test", "service_unavailable", times=2)  # Slack's own trouble: worth trying again
    harness = await Supervised(tmp_path, discord_fake, slack_fake).start()
    try:
        await asyncio.wait_for(harness.slack.connected.wait(), 10)
        assert harness.service.platform_health["slack"].ready
        assert len(slack_fake.attempts("auth.test")) == 3
        retries = [r for r in caplog.records if r.name == "bot.supervisor" and "trying again" in r.getMessage()]
        assert len(retries) == 2 and all(r.exc_info is None for r in retries)
    finally:
        await harness.stop()


async def test_no_slack_at_the_address_is_one_line_and_a_retry(tmp_path, discord_fake, slack_fake, caplog):
    caplog.set_level(logging.INFO)
    harness = Supervised(tmp_path, discord_fake, slack_fake, api_base_url="http://127.0.0.1:9/api/")
    await harness.start()
    try:
        health = harness.service.platform_health["slack"]
        await discord_fake.wait_for(lambda: "cannot reach Slack" in health.reason, timeout=20, what="a retry")
        assert health.state == ConnectionState.CONNECTING and not harness.slack.finished.is_set()
        assert all(r.exc_info is None for r in caplog.records if r.name == "bot.supervisor")
        await asyncio.wait_for(harness.discord.connected.wait(), 15)
    finally:
        await harness.stop()


@pytest.mark.slow
async def test_llm4sweat_run_with_a_bad_slack_token_keeps_the_console(tmp_path, slack_fake):
    """The product's own command: a refused Slack token is one line on the terminal; the console
    starts and answers; Ctrl-C stops the service cleanly (before: the service ended, console
    included, with a traceback)."""
    import os
    import re
    import signal
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM4SWEAT_", "SLACK_"))}
    env.update({
        "LLM4SWEAT_DATA_DIR": str(tmp_path),
        "LLM4SWEAT_INFERENCE__BACKEND": "fixed",
        "LLM4SWEAT_SLACK__BOT_TOKEN": "xoxb-not-valid-any-more",
        "LLM4SWEAT_SLACK__APP_TOKEN": "xapp-test-app-token",
        "LLM4SWEAT_SLACK__API_BASE_URL": slack_fake.base_url,
    })
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from bot.cli import app; app()", "run", "--port", "0",
        env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output = ""
    try:
        while "Open http" not in output:
            line = await asyncio.wait_for(proc.stdout.readline(), 90)
            assert line, f"the service ended: {output[-2000:]}"
            output += line.decode(errors="replace")
        url = re.search(r"Open (http://\S+/)", output).group(1)
        assert (await console_patient(url, "Do sweaty feet smell?"))["status"] == "shown"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        output += (await asyncio.wait_for(proc.communicate(), 60))[0].decode(errors="replace")
    assert proc.returncode == 0, output[-2000:]
    assert "Traceback" not in output
    slack_lines = [line for line in output.splitlines() if "invalid_auth" in line]
    assert len(slack_lines) == 1 and "LLM4SWEAT_SLACK__BOT_TOKEN" in slack_lines[0], output[-2000:]
    assert "xoxb-not-valid-any-more" not in output
