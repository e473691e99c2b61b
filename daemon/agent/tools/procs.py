"""Processes under /proc: the tree below a process, and a sandbox seen from outside (its own
/proc and /tmp through its pid 1's root). Blocking reads: call from a worker thread (or where a
short /proc read is acceptable)."""

from __future__ import annotations

import os
import select
import signal
import time

__all__ = [
    "descendants",
    "first_child",
    "kill_sandboxes",
    "pids",
    "proc_file",
    "proc_stat",
    "sandbox_processes",
    "sandboxes_of",
    "tmp_full",
]


def pids() -> list[str]:
    """The pids in /proc (empty where there is none)."""
    try:
        return [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def proc_file(pid: int | str, entry: str) -> bytes | None:
    """``/proc/<pid>/<entry>``, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/{entry}", "rb") as f:
            return f.read()
    except OSError:
        return None


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process from /proc, or None when it is gone."""
    data = proc_file(pid, "stat")
    if data is None:
        return None
    # The command name is in parentheses and may itself contain spaces and parentheses.
    fields = data[data.rfind(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1])


def descendants(root: int) -> list[int]:
    """Every live descendant of ``root`` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for name in pids():
        stat = proc_stat(int(name))
        if stat is not None:
            children.setdefault(stat[1], []).append(int(name))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def first_child(pid: int) -> int | None:
    """The first child of ``pid`` (for a bwrap: pid 1 of its sandbox), None if it has none."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
    except OSError:  # gone, or a kernel without CONFIG_PROC_CHILDREN
        children = [str(p) for p in descendants(pid)[:1]]
    return int(children[0]) if children else None


def sandbox_processes(inner: int) -> int:
    """Processes in the sandbox whose pid 1 is ``inner`` (itself not counted), from the
    sandbox's own /proc: a few entries, not the host's thousands."""
    try:
        return sum(name.isdigit() for name in os.listdir(f"/proc/{inner}/root/proc")) - 1
    except OSError:
        return 0


def tmp_full(inner: int) -> bool:
    """Whether the /tmp of the sandbox whose pid 1 is ``inner`` is (nearly) full."""
    try:
        st = os.statvfs(f"/proc/{inner}/root/tmp")
    except OSError:
        return False
    total = st.f_blocks * st.f_frsize
    return total > 0 and st.f_bavail * st.f_frsize < max(4 * st.f_frsize, total // 100)


def sandboxes_of(workspace: str) -> list[int]:
    """The bwrap processes set up for ``workspace`` (their command line holds ``--chdir
    <workspace>``): monitors, and their children before or after they became a sandbox's pid 1
    (the child of a monitor killed too early waits for it for ever: ``lifeline.py``)."""
    needle = b"\0--chdir\0" + os.fsencode(workspace) + b"\0"
    found = []
    for name in pids():
        stat = proc_file(name, "stat")
        if stat is None or stat[stat.find(b"(") + 1 : stat.rfind(b")")] != b"bwrap":
            continue
        cmdline = proc_file(name, "cmdline")
        if cmdline is not None and needle in cmdline:
            found.append(int(name))
    return found


def kill_sandboxes(workspace: str, deadline_s: float = 5.0) -> int:
    """SIGKILL every bwrap set up for ``workspace`` (``sandboxes_of``; with its pid 1, its whole
    sandbox goes) and wait for each to end (a pidfd turns readable), for at most ``deadline_s``;
    returns how many were found. Signalled through pidfds: never a process that took a pid
    since the scan."""
    end = time.monotonic() + deadline_s
    seen: set[int] = set()
    while (found := [pid for pid in sandboxes_of(workspace) if pid not in seen]) and time.monotonic() < end:
        fds = []
        for pid in found:
            seen.add(pid)
            try:
                fd = os.pidfd_open(pid)
            except OSError:  # gone meanwhile
                continue
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except OSError:
                pass  # ended meanwhile
            fds.append(fd)
        try:
            for fd in fds:
                select.select([fd], [], [], max(end - time.monotonic(), 0))
        finally:
            for fd in fds:
                os.close(fd)
    return len(seen)
