"""The sandbox's own identity: one unprivileged uid per running task, when the daemon is root.

A task's tools (and the git that commits their work) run as a uid of their own, so nothing they
create is owned by the daemon, a git on the host refuses their repository (``safe.directory``),
one task's processes cannot signal another's, and ``RLIMIT_NPROC`` (counted per real uid) is a
per-task limit. The uids come from a range the operator keeps free (``sandbox_uid_base``,
``sandbox_uid_count``); the gid is the same number; there are no supplementary groups.

A slot is claimed in this process (lowest free index) and, for other daemons on the host, by
binding an abstract unix socket named after the uid: the kernel releases it when the process
dies, so a crashed daemon leaks nothing. A uid of the range that runs processes when the daemon
first claims one (a user the operator put there) is never used.

Everything here blocks on /proc or the file system: call it from a worker thread.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import PermanentError
from daemon.git.disk import charged, first_sight

from .procs import pids, proc_file

__all__ = ["Slot", "claim_slot", "count_tasks", "own_and_measure", "sweep_uid"]

log = logging.getLogger(__name__)

_taken: set[int] = set()
_taken_lock = threading.Lock()
# uids that ran processes when the first slot was claimed (None: not looked yet).
_foreign: set[int] | None = None


@dataclass
class Slot:
    """A claimed uid; ``release`` gives it back (idempotent)."""

    uid: int
    _lock: socket.socket | None

    @property
    def gid(self) -> int:
        return self.uid

    def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.close()
            with _taken_lock:
                _taken.discard(self.uid)


def claim_slot(base: int, count: int) -> Slot | None:
    """The lowest uid of ``base .. base+count-1`` that no task of any daemon here holds and
    that ran no process when this process first looked; None when every one is taken."""
    global _foreign
    if _foreign is None:
        # Once: a scan of every process is costly on a busy host, and a uid of the range with
        # processes that are not a task's (a user given a uid there) stays one.
        _foreign = _uids_in_use()
        if mine := sorted(uid for uid in _foreign if base <= uid < base + count):
            log.warning(
                "sandbox uids %s run processes that are not agentd's: never used "
                "(keep sandbox_uid_base .. + sandbox_uid_count free)",
                mine,
            )
    for uid in range(base, base + count):
        if uid in _foreign:
            continue
        with _taken_lock:
            if uid in _taken:
                continue
            lock = _host_lock(uid)
            if lock is None:
                continue
            _taken.add(uid)
        return Slot(uid, lock)
    return None


def _host_lock(uid: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(f"\0agentd-sandbox-uid-{uid}")
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            return None
        raise
    return sock


def _status_fields(pid: str) -> tuple[int, int] | None:
    """(real uid, threads) of a process, None when it is gone or a zombie."""
    data = proc_file(pid, "status")
    if data is None:
        return None
    uid = threads = None
    for line in data.splitlines():
        if line.startswith(b"State:") and line.split()[1] in (b"Z", b"X"):
            return None
        if line.startswith(b"Uid:"):
            uid = int(line.split()[1])
        elif line.startswith(b"Threads:"):
            threads = int(line.split()[1])
    if uid is None or threads is None:
        return None
    return uid, threads


def _uids_in_use() -> set[int]:
    found = set()
    for pid in pids():
        fields = _status_fields(pid)
        if fields is not None:
            found.add(fields[0])
    return found


def _of_uid(uid: int) -> list[tuple[str, int]]:
    """(pid, threads) of the live processes whose real uid is ``uid``.

    Only processes whose /proc directory ``uid`` owns are read (a stat each, not a read of
    every process's status): that is every process of ``uid`` but those that made themselves
    non-dumpable, whose directory root owns; a sandbox's processes die with its pid namespace
    anyway, this is the second line.
    """
    found = []
    for pid in pids():
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
        except OSError:
            continue
        fields = _status_fields(pid)
        if fields is not None and fields[0] == uid:
            found.append((pid, fields[1]))
    return found


def count_tasks(uid: int) -> int:
    """Processes and threads whose real uid is ``uid``: what ``RLIMIT_NPROC`` counts."""
    return sum(threads for _, threads in _of_uid(uid))


def sweep_uid(uid: int, deadline_s: float = 5.0) -> int:
    """Kill every process whose real uid is ``uid``; returns how many were found.

    Each round stops (SIGSTOP) what it finds before killing it, so a fork bomb cannot refill
    what is killed; rounds repeat until one finds nothing (or ``deadline_s`` passes). Never call
    it with a uid that is not a claimed sandbox slot.
    """
    assert uid != 0 and uid != os.getuid()
    seen = 0
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        found = [int(pid) for pid, _ in _of_uid(uid)]
        if not found:
            break
        seen += len(found)
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in found:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        time.sleep(0.005)  # a worker thread: SIGKILL lands asynchronously
    return seen


# Deeper than this, a workspace is refused rather than walked: a legitimate tree is never near
# it, and the walk holds one descriptor per level.
MAX_DEPTH = 256


def own_and_measure(top: Path, owner: tuple[int, int] | None) -> int:
    """Bytes on disk under ``top`` (allocated blocks, hard links once); with ``owner``, every
    directory and singly linked file not owned by it is given to it on the way.

    Race-free against a hostile tree: the walk goes from directory descriptors, opening each
    subdirectory with ``O_NOFOLLOW`` relative to its parent's and checking it is the directory
    just listed, and changes owners with ``fchownat(AT_SYMLINK_NOFOLLOW)`` on a name inside
    such a descriptor; so a directory swapped for a symlink mid-walk can never lead it outside
    ``top``. Files with several links keep their owner: they may share their inode with a file
    outside (a local clone hard-links objects), and the sandbox never needs to write to those.
    Iterative; raises ``PermanentError`` (``workspace_too_deep``) for directories nested more
    than ``MAX_DEPTH`` deep.
    """
    total = 0
    seen: set[tuple[int, int]] = set()
    try:
        top_fd = os.open(top, _DIR_FLAGS)
    except OSError:
        return 0
    stack: list[tuple[int, Iterator[str]]] = [(top_fd, iter(()))]
    try:
        st = os.fstat(top_fd)
        total += charged(st)
        if owner is not None and (st.st_uid, st.st_gid) != owner:
            os.fchown(top_fd, *owner)
        stack[0] = (top_fd, iter(os.listdir(top_fd)))
        while stack:
            dir_fd, names = stack[-1]
            name = next(names, None)
            if name is None:
                os.close(stack.pop()[0])
                continue
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue  # removed while walking
            if not first_sight(st, seen):
                continue
            singly_linked = st.st_nlink == 1 or stat.S_ISDIR(st.st_mode)
            if singly_linked and owner is not None and (st.st_uid, st.st_gid) != owner:
                try:
                    os.chown(name, *owner, dir_fd=dir_fd, follow_symlinks=False)
                except OSError:
                    pass  # removed meanwhile
            total += charged(st)
            if stat.S_ISDIR(st.st_mode):
                if len(stack) >= MAX_DEPTH:
                    raise PermanentError(
                        f"the workspace nests directories more than {MAX_DEPTH} deep; the task "
                        "was stopped and the workspace is kept as it is",
                        code="workspace_too_deep",
                    )
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                except OSError:
                    continue  # removed, or swapped for something else than a directory
                try:
                    if not os.path.samestat(os.fstat(child), st):
                        raise OSError("swapped while walking")
                    stack.append((child, iter(os.listdir(child))))
                except OSError:
                    os.close(child)
    finally:
        for fd, _ in stack:
            os.close(fd)
    return total


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
