"""Connecting the Slack platform: Socket Mode (default) or HTTP mode, one bolt app for both.

``start_slack(service)`` checks the settings, builds the Web API client and the bolt app,
registers the platform with the service, connects, and returns a runner whose ``cleanup()``
disconnects. Secrets are read from the settings object and never logged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot.platform import PlatformStartError
from bot.settings import SlackSettings
from bot.slack_platform.platform import SlackPlatform

if TYPE_CHECKING:
    from bot.service import Service

log = logging.getLogger(__name__)

DEFAULT_API_BASE_URL = "https://slack.com/api/"


class SlackStartError(PlatformStartError):
    """Slack cannot start with these settings; the message is one line for the operator."""


class SlackRunner:
    """What ``start_slack`` returns: the running connection, stopped by ``cleanup()``."""

    def __init__(self, platform: SlackPlatform, app: AsyncApp, mode: str):
        self.platform = platform
        self.app = app
        self.mode = mode
        self.socket_handler: AsyncSocketModeHandler | None = None
        self.web_runner: web.AppRunner | None = None
        self.host: str | None = None
        self.port: int | None = None
        self.path: str | None = None

    @property
    def url(self) -> str | None:
        """HTTP mode: the local address of the Request URL (put the public one in the manifest)."""
        if self.port is None:
            return None
        host = "127.0.0.1" if self.host in (None, "0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}{self.path}"

    async def cleanup(self) -> None:
        if self.socket_handler is not None:
            try:
                await self.socket_handler.close_async()
            except Exception:
                log.exception("slack: closing the Socket Mode connection failed")
            self.socket_handler = None
        if self.web_runner is not None:
            await self.web_runner.cleanup()
            self.web_runner = None
        await self.platform.drain()  # acknowledged requests finish before the database closes
        await self.platform.close()
        log.info("slack: disconnected")


def make_client(cfg: SlackSettings) -> AsyncWebClient:
    base_url = cfg.api_base_url or DEFAULT_API_BASE_URL
    if not base_url.endswith("/"):
        base_url += "/"  # slack_sdk joins "base_url + method"
    return AsyncWebClient(
        token=cfg.bot_token.get_secret_value() if cfg.bot_token else None,
        base_url=base_url,
        retry_handlers=[
            AsyncConnectionErrorRetryHandler(max_retry_count=2),
            AsyncRateLimitErrorRetryHandler(max_retry_count=3),
            AsyncServerErrorRetryHandler(max_retry_count=2),
        ],
    )


def check_settings(cfg: SlackSettings) -> None:
    env = "LLM4SWEAT_SLACK__"
    if cfg.bot_token is None or not cfg.bot_token.get_secret_value():
        raise SlackStartError(f"Slack needs the bot token (xoxb-…) in {env}BOT_TOKEN")
    if cfg.mode == "socket" and (cfg.app_token is None or not cfg.app_token.get_secret_value()):
        raise SlackStartError(
            f"Slack Socket Mode needs an app-level token (xapp-…, scope connections:write) in {env}APP_TOKEN, "
            f"or set {env}MODE=http"
        )
    if cfg.mode == "http" and (cfg.signing_secret is None or not cfg.signing_secret.get_secret_value()):
        raise SlackStartError(f"Slack HTTP mode needs the app's signing secret in {env}SIGNING_SECRET")
    if not cfg.reviewer_channel_id:
        log.warning("slack: no reviewer channel set (%sREVIEWER_CHANNEL_ID): replies will not be reviewed on Slack", env)
    if not cfg.reviewer_usergroup_id and not cfg.reviewer_user_ids:
        log.warning("slack: nobody can review on Slack: set %sREVIEWER_USERGROUP_ID or %sREVIEWER_USER_IDS", env, env)
    if not cfg.support_channel_ids and not cfg.allow_dms:
        log.warning("slack: no support channels and DMs off: the bot answers only when mentioned")


def build_app(service: "Service", cfg: SlackSettings, client: AsyncWebClient) -> tuple[AsyncApp, SlackPlatform]:
    platform = SlackPlatform(service, client, cfg)  # ValueError: bad command names
    app = AsyncApp(
        client=client,
        signing_secret=cfg.signing_secret.get_secret_value() if cfg.signing_secret else None,
        # Socket Mode requests are not signed; HTTP requests always are.
        request_verification_enabled=cfg.mode == "http",
        name="llm4sweat",
    )
    platform.register(app)
    return app, platform


async def start_slack(service: "Service") -> SlackRunner:
    """Connect to Slack with the service's settings; returns the runner (``await runner.cleanup()``)."""
    cfg = service.settings.slack
    check_settings(cfg)
    client = make_client(cfg)
    try:
        app, platform = build_app(service, cfg, client)
    except ValueError as exc:
        raise SlackStartError(str(exc)) from None
    try:
        identity = await client.auth_test()
    except SlackApiError as exc:
        raise SlackStartError(f"Slack refused the bot token: {exc.response.get('error')}") from None
    platform.bot_user_id = identity.get("user_id")
    log.info("slack: signed in as %s in workspace %s", identity.get("user"), identity.get("team"))
    service.add_platform(platform)
    runner = SlackRunner(platform, app, cfg.mode)
    try:
        if cfg.mode == "http":
            await _start_http(runner, cfg)
        else:
            await _start_socket(runner, cfg, client)
    except BaseException:
        service.core.platforms.pop(platform.name, None)
        await runner.cleanup()
        raise
    return runner


async def _start_socket(runner: SlackRunner, cfg: SlackSettings, client: AsyncWebClient) -> None:
    app_token = cfg.app_token.get_secret_value()  # type: ignore[union-attr]
    # Ask for the websocket URL ourselves first: a wrong app token is then one clear error
    # instead of the socket client retrying forever.
    try:
        opened = await client.apps_connections_open(app_token=app_token)
    except SlackApiError as exc:
        raise SlackStartError(
            f"Slack refused the app-level token for Socket Mode: {exc.response.get('error')} "
            "(it needs the connections:write scope, and Socket Mode must be enabled for the app)"
        ) from None
    handler = AsyncSocketModeHandler(runner.app, app_token=app_token, web_client=client)
    handler.client.wss_uri = opened["url"]
    runner.socket_handler = handler
    await handler.connect_async()
    log.info("slack: connected in Socket Mode")


async def _start_http(runner: SlackRunner, cfg: SlackSettings) -> None:
    app = runner.app

    async def events(request: web.Request) -> web.Response:
        bolt_request = await to_bolt_request(request)
        bolt_response = await app.async_dispatch(bolt_request)
        return await to_aiohttp_response(bolt_response)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "platform": "slack", "mode": "http"})

    web_app = web.Application(client_max_size=2 * 1024 * 1024)
    web_app.router.add_post(cfg.http_path, events)
    web_app.router.add_get("/healthz", health)
    web_runner = web.AppRunner(web_app, access_log=None)
    await web_runner.setup()
    site = web.TCPSite(web_runner, cfg.http_host, cfg.http_port)
    runner.web_runner = web_runner
    try:
        await site.start()
    except OSError as exc:
        raise SlackStartError(f"Slack HTTP mode cannot listen on {cfg.http_host}:{cfg.http_port}: {exc}") from None
    addresses = web_runner.addresses  # the real port when http_port is 0
    runner.host, runner.path = cfg.http_host, cfg.http_path
    runner.port = addresses[0][1] if addresses else cfg.http_port
    log.info("slack: HTTP mode listening on %s:%s%s", cfg.http_host, runner.port, cfg.http_path)
