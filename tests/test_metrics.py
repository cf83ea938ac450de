"""The operator's view: /metrics in Prometheus text format, read as a scraper reads it (the
console route with a moderator's sign-in or the control token, and the loopback port of its
own), and the figures moving when the service works."""

from __future__ import annotations

import json

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.access import accounts, control
from bot.local.web import start_console
from bot.metrics import start_metrics_server
from bot.platform import IncomingMessage
from bot.settings import SettingsError, load_settings
from reviewers.models import Action, Actor, Rubric

pytestmark = pytest.mark.asyncio(loop_scope="session")

PASSWORD = "a long enough password"
REVIEWER = Actor("local", "rev1", "Dr Rev", frozenset({"reviewer"}))


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class Scraper:
    def __init__(self, session: aiohttp.ClientSession, url: str):
        self.session, self.url = session, url

    async def scrape(self, **headers: str) -> tuple[int, str, str]:
        async with self.session.get(self.url, headers=headers) as response:
            return response.status, response.headers.get("Content-Type", ""), await response.text()


@pytest.fixture
async def console(service):
    await accounts.add(service.db, "mo", "moderator", PASSWORD)
    await accounts.add(service.db, "rita", "reviewer", PASSWORD)
    runner, url = await start_console(service, "127.0.0.1", 0)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as moderator, \
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as reviewer, \
            aiohttp.ClientSession() as anonymous:
        for session, name in ((moderator, "mo"), (reviewer, "rita")):
            async with session.post(url + "api/login", json={"name": name, "password": PASSWORD},
                                    headers={"Origin": url.rstrip("/")}) as response:
                assert response.status == 200
        yield {name: Scraper(session, url + "metrics")
               for name, session in (("moderator", moderator), ("reviewer", reviewer), ("anonymous", anonymous))}
    await runner.cleanup()


def msg(text: str, user: str) -> IncomingMessage:
    return IncomingMessage("local", user, "console", user, text, display_name=user)


async def test_metrics_move_when_a_message_is_answered_and_decided(console, service):
    status, content_type, text = await console["moderator"].scrape()
    assert status == 200 and content_type.startswith("text/plain") and "version=0.0.4" in content_type
    before = parse(text)
    result = await service.core.handle_message(msg("Which antiperspirant helps sweaty hands?", "pat-metrics"))
    assert result.status == "shown"
    middle = parse((await console["moderator"].scrape())[2])
    assert value(middle, "llm4sweat_messages_received_total", platform="local") == \
        value(before, "llm4sweat_messages_received_total", platform="local") + 1
    assert value(middle, "llm4sweat_replies_total", outcome="shown") == \
        value(before, "llm4sweat_replies_total", outcome="shown") + 1
    assert value(middle, "llm4sweat_model_request_seconds_count", replica="in-process") == \
        value(before, "llm4sweat_model_request_seconds_count", replica="in-process") + 1
    assert value(middle, "llm4sweat_review_queue_depth", priority="normal") == \
        value(before, "llm4sweat_review_queue_depth", priority="normal") + 1
    assert value(middle, "llm4sweat_review_queue_oldest_age_seconds") >= 0
    assert value(middle, "llm4sweat_live_adapter_info", version="base") == 1
    assert value(middle, "llm4sweat_outbox_effects", status="pending") == 0  # delivered and posted

    await service.core.decide(result.item_id, REVIEWER, Action.APPROVE, rubric=Rubric(4, 4, 4))
    after = parse((await console["moderator"].scrape())[2])
    assert value(after, "llm4sweat_review_queue_depth", priority="normal") == \
        value(before, "llm4sweat_review_queue_depth", priority="normal")
    assert value(after, "llm4sweat_review_decisions_total", action="approve") == \
        value(before, "llm4sweat_review_decisions_total", action="approve") + 1
    assert value(after, "llm4sweat_review_decision_latency_seconds_count") == \
        value(before, "llm4sweat_review_decision_latency_seconds_count") + 1


async def test_crisis_alerts_and_open_incidents(console, service):
    before = parse((await console["moderator"].scrape())[2])
    result = await service.core.handle_message(msg("I want to kill myself tonight, I can't go on", "pat-crisis"))
    assert result.status == "crisis"
    after = parse((await console["moderator"].scrape())[2])
    assert value(after, "llm4sweat_crisis_alerts_total") == value(before, "llm4sweat_crisis_alerts_total") + 1
    assert value(after, "llm4sweat_open_incidents", kind="crisis") == value(before, "llm4sweat_open_incidents",
                                                                             kind="crisis") + 1
    assert value(after, "llm4sweat_replies_total", outcome="crisis") == \
        value(before, "llm4sweat_replies_total", outcome="crisis") + 1


async def test_only_moderators_and_the_control_token_may_scrape_the_console(console, service):
    assert (await console["anonymous"].scrape())[0] == 401
    assert (await console["reviewer"].scrape())[0] == 403
    token = control.read_token(service.settings.data_dir)  # what a scraper's credentials_file points at
    status, _, text = await console["anonymous"].scrape(Authorization=f"Bearer {token}")
    assert status == 200 and "llm4sweat_review_queue_depth" in text
    assert (await console["anonymous"].scrape(Authorization="Bearer not-the-token"))[0] == 401


async def test_the_loopback_port_of_its_own_serves_without_sign_in(service):
    runner, url = await start_metrics_server(service, "127.0.0.1", 0)
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                assert response.status == 200
                samples = parse(await response.text())
            async with session.get(url.replace("/metrics", "/api/reviews")) as response:
                assert response.status == 404  # nothing else is served there
    finally:
        await runner.cleanup()
    assert ("llm4sweat_review_queue_oldest_age_seconds", ()) in samples


async def test_metrics_without_sign_in_only_on_loopback(tmp_path):
    assert load_settings(data_dir=tmp_path, metrics={"port": 9377, "host": "::1"}).metrics.port == 9377
    with pytest.raises(SettingsError, match="metrics.host.*loopback"):
        load_settings(data_dir=tmp_path, metrics={"port": 9377, "host": "0.0.0.0"})


async def test_model_latency_and_errors_per_replica(tmp_path):
    """Two vLLM replicas (tests/vllm_fake.py), one failing: its error and the other's latency are counted."""
    from prometheus_client import REGISTRY, generate_latest

    from bot.local.platform import LocalPlatform
    from bot.service import Service
    from tests.vllm_fake import FakeVLLM

    a, b = await FakeVLLM().start(), await FakeVLLM().start()
    settings = load_settings(data_dir=tmp_path, inference={
        "backend": "openai", "base_model": "base", "openai_base_url": a.url, "openai_replica_urls": [b.url],
        "openai_health_interval_s": 0, "max_retries": 2})
    service = Service(settings)
    service.add_platform(LocalPlatform())
    await service.start(retry_loop=False)
    try:
        a.fail_chat_models.add("base")  # engine error (500) on replica a: retried on b
        before = parse(generate_latest(REGISTRY).decode())
        results = [await service.core.handle_message(msg(f"Does iontophoresis help, question {i}?", f"rep{i}"))
                   for i in range(3)]
        assert [r.status for r in results] == ["shown"] * 3
        after = parse(generate_latest(REGISTRY).decode())
    finally:
        await service.stop()
        await a.stop()
        await b.stop()
    assert value(after, "llm4sweat_model_errors_total", replica=a.url) > \
        value(before, "llm4sweat_model_errors_total", replica=a.url)
    assert value(after, "llm4sweat_model_request_seconds_count", replica=b.url) == \
        value(before, "llm4sweat_model_request_seconds_count", replica=b.url) + 3
    assert value(after, "llm4sweat_model_request_seconds_count", replica=a.url) == \
        value(before, "llm4sweat_model_request_seconds_count", replica=a.url)


async def test_job_durations_are_observed(service):
    from prometheus_client import REGISTRY, generate_latest

    from pipeline import jobs

    before = parse(generate_latest(REGISTRY).decode())
    job = await jobs.request(service.db, "eval", "test")
    await jobs.start(service.db, job.job_id)
    await jobs.finish(service.db, job.job_id, "succeeded", result={"ok": True})
    after = parse(generate_latest(REGISTRY).decode())
    assert value(after, "llm4sweat_job_duration_seconds_count", kind="eval", status="succeeded") == \
        value(before, "llm4sweat_job_duration_seconds_count", kind="eval", status="succeeded") + 1
    assert json.loads((await jobs.get(service.db, job.job_id))["result"]) == {"ok": True}


async def test_the_grafana_dashboard_uses_metric_names_the_service_exposes(service):
    """deploy/grafana-dashboard.json must not drift from bot/metrics.py: every name in its queries
    is in a scrape (counters with _total, histograms with _bucket), and it imports as a dashboard."""
    import re
    from pathlib import Path

    from bot.metrics import exposition

    dashboard = json.loads((Path(__file__).resolve().parent.parent / "deploy" / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["panels"] and dashboard["__inputs"][0]["pluginId"] == "prometheus"
    body, _ = await exposition(service)
    families = {family.name: family.type for family in text_string_to_metric_families(body.decode())}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    exposed = {family + suffix for family, kind in families.items() for suffix in suffixes.get(kind, ("",))}
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"\bllm4sweat_\w+", target["expr"])}
    assert len(used) >= 15
    assert used <= exposed, sorted(used - exposed)
