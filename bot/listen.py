"""The service's own ports (console, health checks, metrics): a port that cannot be bound is one
line naming the port and the setting that chooses it, not a traceback.

``llm4sweat demo`` loads or builds a model for minutes before it serves; :func:`check_free`
lets it say "port in use" before that work, :func:`start_site` says it when the real bind fails.
"""

from __future__ import annotations

import errno
import os
import socket

from aiohttp import web


CONSOLE_PORT_HOW = "--port or local.port (LLM4SWEAT_LOCAL__PORT)"


class CannotListen(OSError):
    """A port this process must serve is taken or not allowed; the message is for the operator."""

    def __str__(self) -> str:  # the sentence alone, without OSError's "[Errno 98]"
        return str(self.strerror)


def _message(what: str, host: str, port: int, exc: OSError, how: str) -> str:
    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    if exc.errno == errno.EADDRINUSE:
        return (f"cannot serve {what} on {host}:{port}: the port is in use (another program, or another "
                f"llm4sweat, has it): stop that, or choose another port with {how}")
    return f"cannot serve {what} on {host}:{port}: {reason}; choose another address or port with {how}"


def check_free(host: str, port: int, what: str, how: str) -> None:
    """Raise :class:`CannotListen` if ``host:port`` is in use now (port 0 never is).

    Binds with SO_REUSEADDR as aiohttp does, so a port left in TIME_WAIT by a stopped service
    is free here as it is there. Any other failure (a name that does not resolve, an address
    family) is left to the real bind, which says what it is."""
    if not port:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CannotListen(exc.errno, _message(what, host, port, exc, how)) from None


async def start_site(runner: web.AppRunner, host: str, port: int, what: str, how: str) -> web.TCPSite:
    """Start ``runner`` on ``host:port``; on failure clean it up and raise :class:`CannotListen`."""
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise CannotListen(exc.errno, _message(what, host, port, exc, how)) from None
    return site
