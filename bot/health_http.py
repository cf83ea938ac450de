"""``GET /healthz`` and ``GET /readyz`` over HTTP (bot/health.py decides what they say).

They are served by the console's web server, without sign-in (container health checks,
load balancers and Prometheus' blackbox exporter call them). With ``llm4sweat run
--no-console`` the same two routes — and nothing else — are served on the console's address
and port, so a deployment without the console still has its health checks.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web

from bot.health import readiness
from bot.listen import CONSOLE_PORT_HOW, start_site

if TYPE_CHECKING:
    from bot.service import Service

log = logging.getLogger(__name__)

SERVICE_KEY = web.AppKey("health_service", object)
_NO_STORE = {"Cache-Control": "no-store"}


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"}, headers=_NO_STORE)


async def readyz(request: web.Request) -> web.Response:
    state = await readiness(request.app[SERVICE_KEY])  # type: ignore[arg-type]
    return web.json_response(state.as_json(), status=200 if state.ready else 503, headers=_NO_STORE)


async def start_health_server(service: "Service", host: str, port: int) -> tuple[web.AppRunner, str]:
    """Only /healthz and /readyz (for ``run --no-console``); returns the runner and its URL."""
    app = web.Application()
    app[SERVICE_KEY] = service
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await start_site(runner, host, port, "/healthz and /readyz", CONSOLE_PORT_HOW)
    real_port = runner.addresses[0][1] if runner.addresses else port
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{real_port}"
    log.info("health checks at %s/healthz and %s/readyz", url, url)
    return runner, url
