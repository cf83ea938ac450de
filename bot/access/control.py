"""The command line's credential for the running service: a random control token in a file
only the machine's owner of the data directory can read.

``llm4sweat run`` writes a fresh token to ``<data_dir>/control-token`` (mode 0600) each time
the console starts. ``llm4sweat retrain`` / ``adapters promote`` / ``adapters rollback`` read
it and send it as ``Authorization: Bearer …``; the console accepts it for moderator commands
and audits them as ``cli:operator``. Whoever can read the file can already read the database
in the same directory, so the token grants nothing new to them and nothing to anyone else.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

FILE_NAME = "control-token"
CLI_NAME = "operator"  # audited as cli:operator


def token_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / FILE_NAME


def write_token(data_dir: Path | str) -> str:
    """A new token, written atomically with mode 0600 (never readable by others, even briefly)."""
    token = secrets.token_urlsafe(32)
    path = token_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a leftover file
        os.write(fd, token.encode("ascii"))
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return token


def read_token(data_dir: Path | str) -> str | None:
    """The running service's token, or None when there is none (or it cannot be read)."""
    try:
        text = token_path(data_dir).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None
