"""Files that hold patient data or credentials are created readable by their owner only.

The database (with its -wal and -shm files: SQLite gives them the database file's mode),
adapters (trained on patients' conversations), dataset snapshots and the control token are
health data or keys; on a shared machine a 0644 file is readable by every local user.
``llm4sweat`` also sets the process umask to 077, so whatever else it writes is private too;
these helpers make the promise hold when the code is used as a library (tests, scripts).
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path | str) -> Path:
    """Create ``path`` (and missing parents) owner-only; tighten it if it exists."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)
    return path


def private_file(path: Path | str) -> Path:
    """Create an empty ``path`` with mode 0600, or tighten an existing one."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        os.chmod(path, FILE_MODE)
    else:
        os.close(fd)
    return path


def make_private(path: Path | str) -> None:
    """Make a file or a whole directory tree owner-only (directories 0700, files 0600)."""
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return
    if path.is_file():
        os.chmod(path, FILE_MODE)
        return
    os.chmod(path, DIR_MODE)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), DIR_MODE)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), FILE_MODE)
