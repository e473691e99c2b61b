"""Whether a task hit its process limit or filled its sandbox's ``/tmp`` (a part of ``TaskSandbox``).

Where cgroup v2 is delegated the task's cgroup says when ``pids.max`` refused a fork. Otherwise
no counter says that ``RLIMIT_NPROC`` did, so the task's processes are counted: those in its
sandbox (seen through its pid 1), of its uid, or below the command (``procs``). ``/tmp`` is the
sandbox's own tmpfs, looked at through its pid 1's root. Blocking /proc reads: the checks run
in a worker thread.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import trio

from daemon.errors import PermanentError

from .base import ToolSettings
from .identity import count_tasks
from .limits import TaskCgroup
from .procs import descendants, first_child, sandbox_processes, tmp_full

if TYPE_CHECKING:
    from .task_sandbox import HostLimits

# Processes of a sandbox with nothing running but its shell (and a command ending).
_QUIET = 2
# How long a limit check looks at a sandbox's process count (see ``_pids_hit``).
_SHORT_LOOK_S = 0.25
_LONG_LOOK_S = 3.0


class LimitChecks:
    """``limit_reached``; mixed into ``TaskSandbox``, which sets up what it looks at."""

    settings: ToolSettings
    sandboxed: bool
    owner: tuple[int, int] | None
    _host: HostLimits | None
    _cgroup: TaskCgroup | None
    _hit: PermanentError | None
    _lifeline: bool

    async def limit_reached(self, pid: int | None = None, *, quick: bool = False) -> PermanentError | None:
        """The error to fail the task with when it hit its process limit (``pids_limit``) or
        filled its ``/tmp`` (``tmp_full``, seen only while ``pid``, a bwrap this sandbox
        started, still runs); None otherwise. Once hit, always hit.

        Without a delegated cgroup the process count is looked at for up to 0.25 s, or 3 s
        while half the limit is in use (``_pids_hit``); ``quick``: never more than 0.25 s.

        Cancellation: the check (a small /proc scan in a worker thread) completes first.
        """
        if self._hit is None and self._host is not None:
            self._hit = await trio.to_thread.run_sync(self._check, pid, quick)
        return self._hit

    def _check(self, pid: int | None, quick: bool) -> PermanentError | None:
        s = self.settings
        # bwrap's child: pid 1 of the sandbox, in its mount and pid namespaces. ``pid`` is the
        # lifeline shell when there is one (bwrap is its first child), else bwrap itself.
        bwrap = first_child(pid) if pid is not None and self._lifeline else pid
        inner = first_child(bwrap) if bwrap is not None and self.sandboxed else None
        if self._pids_hit(pid, inner, quick):
            return PermanentError(
                f"the task's processes reached their limit ({s.max_processes}, "
                "sandbox_max_processes), a fork bomb or a build that needs more: the task was "
                "stopped and its processes killed; the workspace is kept as it is",
                code="pids_limit",
            )
        if inner is not None and tmp_full(inner):
            return PermanentError(
                f"the sandbox's /tmp is full ({s.tmp_bytes // (1024 * 1024)} MB, sandbox_tmp_mb): "
                "the task was stopped and its processes killed (/tmp goes with them); the "
                "workspace is kept as it is",
                code="tmp_full",
            )
        return None

    def _pids_hit(self, pid: int | None, inner: int | None, quick: bool) -> bool:
        if self._cgroup is not None:
            return self._cgroup.pids_limit_hit()
        if pid is None:
            return False  # nothing of the task is running to count
        limit = self.settings.max_processes
        near = limit - max(2, limit // 8)
        # No counter says that RLIMIT_NPROC refused a fork: count the sandbox's processes.
        # A fork bomb reaches the limit within ~100 ms of its start; later its count waves
        # (bash sleeps 1, 2, 4, 8 s before retrying a failed fork, and processes exit
        # meanwhile). So look again, 20 ms apart, while anything beyond the shell runs: for a
        # quarter second, or for a few seconds while at least half the limit is in use.
        start = time.monotonic()
        quiet = 0
        while True:
            if inner is not None:
                count = sandbox_processes(inner)
            elif self.owner is not None:
                count = count_tasks(self.owner[0])
            else:
                count = len(descendants(pid))
            if count >= near:
                return True
            quiet = quiet + 1 if count <= _QUIET else 0
            window = _LONG_LOOK_S if count >= limit // 2 and not quick else _SHORT_LOOK_S
            if quiet >= 2 or time.monotonic() - start >= window:
                return False
            time.sleep(0.02)
