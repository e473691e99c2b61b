"""The event loop and its SQLite writer on one CPU; what the daemon starts on all of them.

Every write crosses between two threads twice: the Trio thread hands the job to the SQLite
writer thread (``store/sqlite_io.py``), which hands the result back. They never run Python at
the same time (one GIL), so a second CPU buys them little, and costs at every handoff: the
thread is woken on another CPU, often out of idle, which on a VM means an interrupt through the
hypervisor and cold caches. On one CPU the handoff is a context switch. Measured on the README's
2-core VM: a write's round trip 78 -> 48 µs; durable 3-step tasks 1.2-1.4x as many a second.

``loop_on_one_cpu`` pins the calling thread (the Trio thread, before the store opens: threads it
starts, the writer among them, inherit the CPU). Threads that do their work off the GIL (the
checkpointer, the readers) and the processes the daemon starts (git, the bash tool's shell)
call ``release``: they get back every CPU the daemon had, so a clone or a test run never
competes with the loop for its CPU. Linux only; elsewhere, and on one CPU, nothing is pinned.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["loop_on_one_cpu", "release", "pinned_cpu"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_wide: frozenset[int] | None = None  # the CPUs allowed before pinning, while pinned
_cpu: int | None = None
_depth = 0


@contextmanager
def loop_on_one_cpu(enabled: bool = True) -> Iterator[int | None]:
    """Pin the calling thread to one CPU while inside; yields that CPU, or ``None`` if not pinned.

    The CPU is the highest-numbered one the process may use (the first one usually takes more
    of the machine's interrupts). Nested uses (two daemons in one process, as in tests) share
    the pin; the outermost restores the calling thread's CPUs on the way out.
    """
    cpu = _pin() if enabled else None
    try:
        yield cpu
    finally:
        if cpu is not None:
            _unpin()


def pinned_cpu() -> int | None:
    """The CPU of the loop while pinned, else ``None``."""
    return _cpu


def release(pid: int = 0) -> None:
    """Give process ``pid`` (0: the calling thread) every CPU the daemon had before pinning.

    For a process just started: what it starts afterwards inherits its CPUs. Nothing happens if
    nothing is pinned, or if ``pid`` is already gone.
    """
    wide = _wide
    if wide is None:
        return
    try:
        os.sched_setaffinity(pid, wide)
    except OSError:  # gone already, or the CPU set changed since: it keeps the CPU it has
        pass


def _pin() -> int | None:
    """Pin the calling thread (the first use) or share the pin; ``None``: not pinned.

    Pinning is only a speed-up: if the system refuses it (a container's CPU set that changed
    under us, say), the daemon runs unpinned and says so.
    """
    global _wide, _cpu, _depth
    if not hasattr(os, "sched_setaffinity"):
        return None
    with _lock:
        if _depth == 0:
            allowed = frozenset(os.sched_getaffinity(0))
            if len(allowed) < 2:
                return None
            cpu = max(allowed)
            try:
                os.sched_setaffinity(0, {cpu})
            except OSError as exc:
                log.warning("event loop not pinned to CPU %d: %s", cpu, exc)
                return None
            _wide, _cpu = allowed, cpu
        _depth += 1
        return _cpu


def _unpin() -> None:
    global _wide, _cpu, _depth
    with _lock:
        _depth -= 1
        if _depth == 0:
            assert _wide is not None
            try:
                os.sched_setaffinity(0, _wide)
            except OSError as exc:  # the CPUs we had are no longer ours: keep what we have
                log.warning("event loop's CPUs not restored: %s", exc)
            _wide = _cpu = None
