"""The event loop and its SQLite writer on one CPU; what the daemon starts on all of them.

Every write crosses between two threads twice: the Trio thread hands the job to the SQLite
writer thread (``store/sqlite_io.py``), which hands the result back. Only one of them runs
Python at a time (one GIL; SQLite's own work runs outside it), so a second CPU buys them little,
and costs at every handoff: the thread is woken on another CPU, often out of idle, which on a VM
means an interrupt through the hypervisor and cold caches. On one CPU the handoff is a context
switch. Measured on the README's 2-core VM: a write's round trip 78 -> 48 µs; durable 3-step
tasks 1.2-1.4x as many a second; the commits' own work then shares the loop's CPU, which the
benchmarks include.

``loop_on_one_cpu`` pins the calling thread (the Trio thread, before the store opens: threads it
starts inherit the CPU: the writer, and Trio's worker threads). The checkpointer, the readers and
a backup's copy call ``release`` to get back every CPU the daemon had, and so do the processes
the daemon starts (git, the bash tool's shell and what bubblewrap forked for it), just after
they start: what one of them forks before that keeps the loop's CPU (a git alias's shell can;
a clone's transport, forked later, did not in 20 tries). Linux only; elsewhere, and on one CPU,
nothing is pinned. The daemon pins only with SQLite: PostgreSQL has no writer thread.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["loop_on_one_cpu", "pinned_cpu", "release"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_wide: frozenset[int] | None = None  # the CPUs allowed before pinning, while pinned
_cpu: int | None = None
_owner: int | None = None  # the pinned thread's native id
_depth = 0


@contextmanager
def loop_on_one_cpu(enabled: bool = True) -> Iterator[int | None]:
    """Pin the calling thread to one CPU while inside; yields that CPU, or ``None`` if not pinned.

    The CPU is the highest-numbered one the process may use (the first one usually takes more
    of the machine's interrupts). Nested uses on the pinned thread (two daemons on one Trio
    thread, as in tests) share the pin, and the outermost restores its CPUs on the way out;
    another thread is not pinned while one is.
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
    global _wide, _cpu, _owner, _depth
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
            _wide, _cpu, _owner = allowed, cpu, threading.get_native_id()
        elif _owner != threading.get_native_id():
            return None
        _depth += 1
        return _cpu


def _unpin() -> None:
    global _wide, _cpu, _owner, _depth
    with _lock:
        _depth -= 1
        if _depth == 0:
            assert _wide is not None and _owner == threading.get_native_id()
            try:
                os.sched_setaffinity(0, _wide)
            except OSError as exc:  # the CPUs we had are no longer ours: keep what we have
                log.warning("event loop's CPUs not restored: %s", exc)
            _wide = _cpu = _owner = None
