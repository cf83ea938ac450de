"""Connecting the Slack platform: Socket Mode (default) or HTTP mode, one bolt app for both.

``start_slack(service)`` checks the settings, builds the Web API client and the bolt app,
registers the platform with the service, connects, and returns a runner whose ``cleanup()``
disconnects and whose ``wait_closed()`` returns when Slack ends the app's access for good.
Secrets are read from the settings object and never logged.

What ends it for good (https://docs.slack.dev/reference/methods/auth.test#errors and the
``tokens_revoked`` / ``app_uninstalled`` events): ``invalid_auth``, ``not_authed``,
``token_revoked``, ``token_expired``, ``account_inactive`` from any Web API call (the bot token,
or the app-level token when Socket Mode asks for a new connection), or Slack telling the app its
tokens were revoked. Retrying does not help; a person must reinstall the app or set a new token.
Network failures and Slack's own errors at start-up are worth trying again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable

import aiohttp
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

from bot.platform import ConnectionState, PlatformHealth, PlatformStartError
from bot.settings import SlackSettings
from bot.slack_platform.platform import SlackPlatform
from bot.supervisor import ConnectionEnded

if TYPE_CHECKING:
    from bot.service import Service

log = logging.getLogger(__name__)

DEFAULT_API_BASE_URL = "https://slack.com/api/"
FATAL_ERRORS = frozenset({"invalid_auth", "not_authed", "token_revoked", "token_expired", "account_inactive"})
RETRYABLE_ERRORS = frozenset({"ratelimited", "internal_error", "fatal_error", "service_unavailable",
                              "request_timeout"})
_ENV = "LLM4SWEAT_SLACK__"


class SlackStartError(PlatformStartError):
    """Slack cannot start with these settings; the message is one line for the operator."""


class WatchedWebClient(AsyncWebClient):
    """The Web API client, telling the platform when an answer means its token is dead for good."""

    on_fatal: Callable[[str, str], None] | None = None

    async def api_call(self, api_method: str, **kwargs: Any) -> Any:  # type: ignore[override]
        try:
            return await super().api_call(api_method, **kwargs)
        except SlackApiError as exc:
            error = str(exc.response.get("error") or "")
            if error in FATAL_ERRORS and self.on_fatal is not None:
                self.on_fatal(api_method, error)
            raise


def fatal_reason(method: str, error: str) -> str:
    """One line: which token Slack refused, and what to do."""
    if method == "apps.connections.open":
        return (f"Slack refused the app-level token ({error}); generate a new one with connections:write, "
                f"set {_ENV}APP_TOKEN and restart")
    return (f"Slack refused the bot token ({error}); reinstall the app to the workspace, "
            f"set {_ENV}BOT_TOKEN to the new xoxb- token and restart")


class SlackRunner:
    """What ``start_slack`` returns: the running connection, stopped by ``cleanup()``."""

    def __init__(self, platform: SlackPlatform, app: AsyncApp, mode: str):
        self.platform = platform
        self.app = app
        self.mode = mode
        self.ended: asyncio.Future[ConnectionEnded] = asyncio.get_running_loop().create_future()
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

    def end(self, reason: str, retryable: bool = False) -> None:
        """Slack ended the app's access: the supervisor logs it once and marks the platform failed."""
        if not self.ended.done():
            self.platform.health.set(ConnectionState.CONNECTING if retryable else ConnectionState.FAILED, reason)
            self.ended.set_result(ConnectionEnded(reason, retryable))

    async def wait_closed(self) -> ConnectionEnded:
        return await asyncio.shield(self.ended)

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
        if self.platform.service.core.platforms.get(self.platform.name) is self.platform:
            del self.platform.service.core.platforms[self.platform.name]
        log.info("slack: disconnected")


def make_client(cfg: SlackSettings) -> WatchedWebClient:
    base_url = cfg.api_base_url or DEFAULT_API_BASE_URL
    if not base_url.endswith("/"):
        base_url += "/"  # slack_sdk joins "base_url + method"
    return WatchedWebClient(
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


def _unreachable(client: AsyncWebClient, exc: BaseException) -> SlackStartError:
    return SlackStartError(f"cannot reach Slack at {client.base_url} ({type(exc).__name__}: {exc})", retryable=True)


async def start_slack(service: "Service", health: PlatformHealth | None = None) -> SlackRunner:
    """Connect to Slack with the service's settings; returns the runner (``await runner.cleanup()``)."""
    cfg = service.settings.slack
    check_settings(cfg)
    client = make_client(cfg)
    try:
        app, platform = build_app(service, cfg, client)
    except ValueError as exc:
        raise SlackStartError(str(exc)) from None
    if health is not None:
        platform.health = health
    try:
        identity = await client.auth_test()
    except SlackApiError as exc:
        error = str(exc.response.get("error"))
        raise SlackStartError(f"Slack refused the bot token ({error})" + (
            "" if error in RETRYABLE_ERRORS else f" (set {_ENV}BOT_TOKEN to the app's xoxb- token)"),
            retryable=error in RETRYABLE_ERRORS) from None
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        raise _unreachable(client, exc) from None
    platform.bot_user_id = identity.get("user_id")
    log.info("slack: signed in as %s in workspace %s", identity.get("user"), identity.get("team"))
    runner = SlackRunner(platform, app, cfg.mode)
    client.on_fatal = lambda method, error: runner.end(fatal_reason(method, error))
    platform.on_tokens_revoked = lambda what: runner.end(
        f"Slack revoked the app's {what}; reinstall the app, set {_ENV}BOT_TOKEN and restart")
    service.add_platform(platform)
    try:
        if cfg.mode == "http":
            await _start_http(runner, cfg)
        else:
            await _start_socket(runner, cfg, client)
    except BaseException:
        await runner.cleanup()
        raise
    platform.health.set(ConnectionState.CONNECTED)
    platform.spawn_catch_up()  # what patients wrote while the app was away (bot/catchup.py)
    return runner


async def _start_socket(runner: SlackRunner, cfg: SlackSettings, client: AsyncWebClient) -> None:
    app_token = cfg.app_token.get_secret_value()  # type: ignore[union-attr]
    # Ask for the websocket URL ourselves first: a wrong app token is then one clear error
    # instead of the socket client retrying forever.
    try:
        opened = await client.apps_connections_open(app_token=app_token)
    except SlackApiError as exc:
        error = str(exc.response.get("error"))
        raise SlackStartError(
            f"Slack refused the app-level token for Socket Mode ({error}); "
            "it needs the connections:write scope, and Socket Mode must be enabled for the app",
            retryable=error in RETRYABLE_ERRORS,
        ) from None
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        raise _unreachable(client, exc) from None
    handler = AsyncSocketModeHandler(runner.app, app_token=app_token, web_client=client)
    handler.client.wss_uri = opened["url"]
    health = runner.platform.health

    async def on_message(message: Any) -> None:
        if '"type":"hello"' in str(getattr(message, "data", "")).replace(" ", ""):
            reconnected = health.state == ConnectionState.CONNECTING and runner.socket_handler is not None
            health.set(ConnectionState.CONNECTED)
            if reconnected:  # Slack retries events for minutes only: look for what a long gap lost
                runner.platform.spawn_catch_up()

    async def on_close(message: Any) -> None:
        if not runner.ended.done():
            health.set(ConnectionState.CONNECTING, "Socket Mode connection closed; slack_sdk is reconnecting")

    handler.client.on_message_listeners.append(on_message)
    handler.client.on_close_listeners.append(on_close)
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
