"""One running service per data directory, and how the command line finds it.

``llm4sweat run`` holds an exclusive lock (``flock``) on ``<data_dir>/service.lock`` for as long
as it runs and writes into the file its process id and the address of its control API (the
console, or with ``--no-console`` the health server, which then also takes the control
token's commands). The kernel drops the lock when the process ends, however it ends (even
``kill -9``), so a stale file never makes the command line believe a dead service runs.

The command line asks :func:`running`: when a service holds the lock, everything that changes
the live adapter goes to it (it is the one source of truth for what it serves), and commands
that must not run beside it (``db restore``) refuse. When none does, they act on the database.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

FILE_NAME = "service.lock"


class AlreadyRunning(Exception):
    """Another process serves this data directory; the message is one line for the operator."""


@dataclass(frozen=True)
class Running:
    """A service that holds the data directory's lock: its process id and control address
    (empty until it serves one)."""

    pid: int
    url: str

    def describe(self) -> str:
        return f"pid {self.pid}" + (f" at {self.url}" if self.url else "")


def lock_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / FILE_NAME


def _read(fd: int) -> Running:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        data = json.loads(raw.decode("utf-8") or "{}")
    except (UnicodeDecodeError, ValueError):
        data = {}
    return Running(int(data.get("pid") or 0), str(data.get("url") or ""))


class Instance:
    """The lock of the service this process runs; :meth:`release` (or process exit) frees it."""

    def __init__(self, data_dir: Path | str) -> None:
        path = lock_path(data_dir)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _read(self.fd)
            os.close(self.fd)
            raise AlreadyRunning(f"a service is already running with the data directory {Path(data_dir)} "
                                 f"({other.describe()}): stop it first, or use another data directory") from None
        self.set_url("")

    def set_url(self, url: str) -> None:
        """Record the control API's address (after the server has bound its real port)."""
        data = json.dumps({"pid": os.getpid(), "url": url.rstrip("/")}).encode("utf-8")
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = -1


def running(data_dir: Path | str) -> Running | None:
    """The service serving ``data_dir``, or None when no process holds its lock."""
    path = lock_path(data_dir)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
