"""The data dir as one daemon's own: an exclusive lock, and the node id kept in it."""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
from pathlib import Path

from ..errors import ConfigError


class DataDirLocked(ConfigError):
    code = "data_dir_locked"


def lock_data_dir(data_dir: Path) -> int:
    """Make ``data_dir`` if missing and hold an exclusive lock on ``<data-dir>/agentd.lock`` (the
    descriptor returned) for as long as the store is open. Blocking: call it off the Trio thread."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "agentd.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise DataDirLocked(
                f"another agentd (pid {holder}) is already using the data dir {data_dir}"
            ) from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def node_id(data_dir: Path) -> str:
    """This daemon's stable node id, ``<data-dir>/node-id`` (made on first use).

    The id outlives restarts, so a daemon that restarts knows which running tasks were its own
    (the data dir lock makes sure no other process uses the same id at once).
    """
    path = data_dir / "node-id"
    try:
        found = path.read_text().strip()
    except FileNotFoundError:
        found = ""
    if found:
        return found
    data_dir.mkdir(parents=True, exist_ok=True)
    made = secrets.token_hex(6)
    tmp = path.with_name(f".node-id.{os.getpid()}")
    tmp.write_text(made + "\n")
    os.replace(tmp, path)
    return made
