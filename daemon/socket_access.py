"""Who is at the other end of a unix socket, and whether a group can reach a socket file.

``peer_uid`` and ``peer_groups`` read the kernel's credentials of the connected process
(``SO_PEERCRED``; ``SO_PEERGROUPS`` for its supplementary groups as they were when it
connected, Linux 4.13+). Where ``SO_PEERGROUPS`` is missing, the groups come from
``/proc/<pid>/status`` (checked to still be a process of the same uid), else from the group
database for the peer's user. The control server admits by these (``control_server.py``).
"""

from __future__ import annotations

import array
import errno
import grp
import os
import pwd
import socket as _socket
import stat
import struct
import sys
from pathlib import Path
from typing import Protocol

_SO_PEERCRED = getattr(_socket, "SO_PEERCRED", None)
# Python's socket module does not name it; 59 on every Linux architecture.
_SO_PEERGROUPS = getattr(_socket, "SO_PEERGROUPS", 59 if sys.platform == "linux" else None)
_MAX_GROUPS = 65536  # the kernel's NGROUPS_MAX


class Socket(Protocol):
    """A connected unix socket: ``socket.socket`` or ``trio.socket.SocketType``."""

    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


def peer_cred(sock: Socket) -> tuple[int, int, int] | None:
    """``(pid, uid, gid)`` of the peer, or ``None`` where SO_PEERCRED does not exist."""
    if _SO_PEERCRED is None:
        return None
    raw = sock.getsockopt(_socket.SOL_SOCKET, _SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def peer_uid(sock: Socket) -> int | None:
    """The uid of the process at the other end, or ``None`` where SO_PEERCRED does not exist."""
    cred = peer_cred(sock)
    return None if cred is None else cred[1]


def peer_groups(sock: Socket) -> frozenset[int]:
    """The peer's primary group and supplementary groups (empty where they cannot be known)."""
    cred = peer_cred(sock)
    if cred is None:
        return frozenset()
    pid, uid, gid = cred
    groups = _socket_groups(sock)
    if groups is None:
        groups = _proc_groups(pid, uid)
    if groups is None:
        groups = _user_groups(uid, gid)
    return frozenset({gid, *groups})


def _socket_groups(sock: Socket) -> list[int] | None:
    if _SO_PEERGROUPS is None:
        return None
    size = 4 * 64
    while True:
        try:
            raw = sock.getsockopt(_socket.SOL_SOCKET, _SO_PEERGROUPS, size)
        except OSError as exc:
            if exc.errno == errno.ERANGE and size < 4 * _MAX_GROUPS:
                size *= 16  # the kernel said the list is longer: ask again with room for it
                continue
            return None  # an older kernel: ENOPROTOOPT
        return list(array.array("I", raw[: len(raw) - len(raw) % 4]))


def _proc_groups(pid: int, uid: int) -> list[int] | None:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].split() for line in lines if ":" in line}
    # The pid may have ended and been reused since it connected: the uid must still match.
    if str(uid) not in fields.get("Uid", [])[:2]:
        return None
    try:
        return [int(g) for g in fields.get("Groups", [])]
    except ValueError:
        return None


def _user_groups(uid: int, gid: int) -> list[int]:
    try:
        return os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
    except (KeyError, OSError):
        return []


def group_gid(name: str) -> int:
    """The gid of group ``name``; ``KeyError`` when there is none."""
    return grp.getgrnam(name).gr_gid


def unreachable_by_group(path: Path, gid: int) -> Path | None:
    """The first directory above ``path`` that members of ``gid`` cannot search, or None.

    Members need search permission on every directory on the way to connect to a socket file.
    """
    for directory in Path(os.path.abspath(path)).parents:
        try:
            st = os.stat(directory)
        except OSError:
            return directory
        mode = stat.S_IMODE(st.st_mode)
        if not (mode & stat.S_IXOTH or (st.st_gid == gid and mode & stat.S_IXGRP)):
            return directory
    return None
