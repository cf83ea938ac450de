"""What an operator watches: the service's figures in Prometheus text format (prometheus-client).

Two kinds of figures:

* **Events counted as they happen** (counters and histograms, in this process): messages
  received, replies by outcome, reviewer decisions and how long after the reply they came,
  model request latency and errors per replica, crisis alerts, judge verdicts, job durations.
  They start from zero when the process starts, as Prometheus expects of counters.
* **State read from the database at each scrape** (gauges, :func:`refresh`): the review queue's
  depth and the age of its oldest item, open incidents by kind, outbox effects waiting and
  given up, running jobs, the live adapter. They are true whichever process changed them.

Served at ``/metrics`` on the console (moderators and the control token only) and, when
``metrics.port`` is set, on a listener of its own on the loopback interface for a Prometheus
scraper on the same machine (:func:`start_metrics_server`). Label values are bounded (platform
names, outcomes, replica URLs from settings); patient text never appears. The example Grafana
dashboard in ``deploy/grafana-dashboard.json`` uses these names.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

if TYPE_CHECKING:
    from aiohttp import web

    from bot.service import Service

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
_DECISION_BUCKETS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600, 3 * 86400, 7 * 86400)
_JOB_BUCKETS = (10, 30, 60, 300, 600, 1800, 3600, 2 * 3600, 6 * 3600, 12 * 3600)

# ---------------------------------------------------------------------- events (this process)

MESSAGES = Counter("llm4sweat_messages_received", "Patient messages stored, by platform.", ["platform"])
REPLIES = Counter(
    "llm4sweat_replies", "Messages answered, by outcome: shown, held (for review first), crisis, queued_retry "
    "(model unavailable), out_of_scope, language_unsupported.", ["outcome"])
DECISIONS = Counter("llm4sweat_review_decisions", "Reviewer decisions recorded, by action.", ["action"])
DECISION_SECONDS = Histogram(
    "llm4sweat_review_decision_latency_seconds", "Seconds from a reply being stored to a reviewer's decision on it.",
    buckets=_DECISION_BUCKETS)
MODEL_SECONDS = Histogram(
    "llm4sweat_model_request_seconds", "Seconds per successful model request, by replica (in-process: the local "
    "backend).", ["replica"], buckets=_LATENCY_BUCKETS)
MODEL_ERRORS = Counter("llm4sweat_model_errors", "Failed model requests, by replica (each is retried on another "
                       "replica while one is up).", ["replica"])
MODEL_UNAVAILABLE = Counter("llm4sweat_model_unavailable", "Messages no model server could answer (queued for retry, "
                            "patient told).")
CRISIS_ALERTS = Counter("llm4sweat_crisis_alerts", "Messages triaged as a crisis (resources sent, moderators alerted).")
JUDGE_VERDICTS = Counter(
    "llm4sweat_judge_verdicts", "Judge outcomes per reply: done, pending (an attempt failed, retried later), "
    "unavailable (gave up).", ["outcome"])
JOB_SECONDS = Histogram("llm4sweat_job_duration_seconds", "Seconds from a job's start to its end, by kind and status.",
                        ["kind", "status"], buckets=_JOB_BUCKETS)

# ---------------------------------------------------------------------- state (read at each scrape)

QUEUE_DEPTH = Gauge("llm4sweat_review_queue_depth", "Review items waiting for a decision, by priority.", ["priority"])
QUEUE_OLDEST = Gauge("llm4sweat_review_queue_oldest_age_seconds", "Age of the oldest review item waiting (0 when none).")
INCIDENTS = Gauge("llm4sweat_open_incidents", "Incidents not resolved, by kind (crisis, model_unavailable …).", ["kind"])
OUTBOX = Gauge("llm4sweat_outbox_effects", "Effects of decisions not applied yet (pending), of which failing max_attempts times or more (failing, still retried).",
               ["status"])
OUTBOX_OLDEST = Gauge("llm4sweat_outbox_oldest_pending_age_seconds", "Age of the oldest effect waiting (0 when none).")
JOBS_RUNNING = Gauge("llm4sweat_jobs_running", "Jobs queued or running, by kind.", ["kind"])
LIVE_ADAPTER = Gauge("llm4sweat_live_adapter_info", "1 for the adapter version serving now (base: the base model).",
                     ["version"])
MESSAGES_WAITING = Gauge("llm4sweat_messages_waiting", "Patient messages stored and not answered yet, by status.",
                         ["status"])

_WAITING_STATUSES = ("received", "answering", "queued_retry", "paused")
_PRIORITIES = ("high", "normal")


async def refresh(service: "Service") -> None:
    """Set the state gauges from the database (called right before each exposition)."""
    from bot.storage import now

    db = service.db
    t = now()
    rows = await db.fetchall("SELECT priority, COUNT(*), MIN(created_at) FROM review_items WHERE state = 'pending'"
                             " GROUP BY priority")
    QUEUE_DEPTH.clear()
    for priority in _PRIORITIES:
        QUEUE_DEPTH.labels(priority=priority).set(0)
    oldest = None
    for priority, count, first in rows:
        QUEUE_DEPTH.labels(priority=priority).set(count)
        oldest = first if oldest is None else min(oldest, first)
    QUEUE_OLDEST.set(0 if oldest is None else max(0.0, t - oldest))

    INCIDENTS.clear()
    for kind, count in await db.fetchall("SELECT kind, COUNT(*) FROM incidents WHERE resolved_at IS NULL GROUP BY kind"):
        INCIDENTS.labels(kind=kind).set(count)

    stats = await service.core.outbox.stats()
    OUTBOX.labels(status="pending").set(stats["pending"])
    OUTBOX.labels(status="failing").set(stats["failing"])
    OUTBOX_OLDEST.set(stats["oldest_pending_s"] or 0)

    JOBS_RUNNING.clear()
    for kind, count in await db.fetchall("SELECT kind, COUNT(*) FROM jobs WHERE status IN ('queued', 'running')"
                                         " GROUP BY kind"):
        JOBS_RUNNING.labels(kind=kind).set(count)

    MESSAGES_WAITING.clear()
    counts = dict(await db.fetchall(
        f"SELECT status, COUNT(*) FROM messages WHERE status IN ({', '.join('?' * len(_WAITING_STATUSES))})"
        " GROUP BY status", _WAITING_STATUSES))
    for status in _WAITING_STATUSES:
        MESSAGES_WAITING.labels(status=status).set(counts.get(status, 0))

    LIVE_ADAPTER.clear()
    LIVE_ADAPTER.labels(version=service.backend.status().adapter_version or "base").set(1)


async def exposition(service: "Service", accept: str = "") -> tuple[bytes, str]:
    """The metrics page (body, content type), with the state gauges read just now. The format is
    negotiated from the scraper's Accept header by prometheus-client (text 0.0.4 by default,
    OpenMetrics when asked for)."""
    await refresh(service)
    encoder, content_type = choose_encoder(accept)
    return encoder(REGISTRY), content_type


async def metrics_response(service: "Service", accept: str = "") -> "web.Response":
    from aiohttp import web

    body, content_type = await exposition(service, accept)
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    response.headers["Cache-Control"] = "no-store"
    return response


async def start_metrics_server(service: "Service", host: str, port: int) -> tuple[Any, str]:
    """A listener that serves only ``GET /metrics`` (no sign-in: loopback only, see MetricsSettings).
    Returns the runner (``await runner.cleanup()``) and the URL."""
    from aiohttp import web

    from bot.listen import start_site

    async def handler(request: web.Request) -> web.Response:
        return await metrics_response(service, request.headers.get("Accept", ""))

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = await start_site(runner, host, port, "metrics", "metrics.port (LLM4SWEAT_METRICS__PORT)")
    server = getattr(site, "_server", None)
    real_port = server.sockets[0].getsockname()[1] if server is not None and server.sockets else port
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{real_port}/metrics"
    log.info("metrics at %s", url)
    return runner, url
