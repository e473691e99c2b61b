"""Sandboxes that die with the daemon's process, and not with the thread that started them.

bwrap's ``--die-with-parent`` is ``PR_SET_PDEATHSIG``, which fires when the *thread* that
forked the process ends. Trio starts processes from its worker threads, and retires a worker
after 10 s idle: a sandbox started by one was SIGKILLed about 10 s later, killing the agent's
shell mid-task (and with it a command that ran longer, or a fork bomb before its limit was
seen). So a small shell stands between the daemon and bwrap: bwrap dies with that shell (it
is single-threaded), and the shell kills bwrap when the daemon's process ends, which it learns
from a pipe whose only writer is the daemon: when the daemon dies, however it dies, the pipe's
read end sees end-of-file.

It then kills the shell's whole process group (``kill -KILL 0``), never bwrap alone: between
its ``clone`` and the moment it lets the child go on (an eventfd write), bwrap's monitor is the
only thing that child waits on, and the child has no ``PR_SET_PDEATHSIG`` yet. A monitor killed
alone in that window leaves its child (pid 1 of the new pid namespace, the daemon's uid or
root, not the task's) blocked on that eventfd for ever: parent-less, childless, outside the
task's uid and cgroup. In the group it dies with the monitor (a group signal reaches a process
being forked too). So the shell must lead a process group of its own: callers start it with
``start_new_session=True`` or ``process_group=0`` and stop it with SIGKILL to that group (a
sandbox's pid 1 ignores SIGTERM and the like from outside its pid namespace). Started inside
another group, the shell kills only its command (``TaskSandbox`` then sweeps what is left when
it closes, ``procs.kill_sandboxes``).
"""

from __future__ import annotations

import functools
import os
import shutil

__all__ = ["lifeline_argv", "lifeline_fd"]

# $1: the pipe's read end (any fd number: pass_fds keeps the parent's); then the command.
# The command gets neither the pipe nor /dev/null for its stdin (an asynchronous list's
# default): `<&0` keeps the shell's. Its exit status is the shell's. The watcher kills the
# shell's group when the shell leads it (field 5 of /proc/$$/stat: its pgid), whatever is
# left of it: `kill 0` names the watcher's own group, never another's. Otherwise it kills the
# command only while this shell lives (if it was killed alone, bwrap died with it already,
# and the pid may be another process's by now).
_SCRIPT = r"""
fd=$1; shift
[ "$fd" = 3 ] || eval "exec 3<&$fd $fd<&-"
read -r _ _ _ _ pgid _ < /proc/$$/stat
"$@" 3<&- <&0 &
child=$!
(
  read -r _ <&3
  if [ "$pgid" = "$$" ]; then kill -KILL 0; fi
  kill -0 "$$" && kill -KILL "$child"
) 2>/dev/null &
watcher=$!
exec 3<&-
wait "$child"; status=$?
{ kill -KILL "$watcher"; wait "$watcher"; } 2>/dev/null
exit "$status"
"""

_pipe: tuple[int, int] | None = None


def lifeline_fd() -> int:
    """The read end of the daemon's lifeline pipe, made once per process; pass it to the
    process (``pass_fds``). Nothing is ever written to it; the write end is never inherited
    (both ends are non-inheritable: ``pass_fds`` opens only the read end, only in that child)."""
    global _pipe
    if _pipe is None:
        _pipe = os.pipe()
    return _pipe[0]


@functools.lru_cache(maxsize=1)
def _bash() -> str | None:
    # bash, not sh: dash's redirections take single-digit descriptors only.
    return shutil.which("bash", path="/usr/bin:/bin")


def lifeline_argv(argv: list[str]) -> list[str] | None:
    """``argv`` behind the lifeline shell, killed when the daemon's process ends; None
    without bash (the sandbox's own shell needs it anyway)."""
    bash = _bash()
    if bash is None:
        return None
    return [bash, "--noprofile", "--norc", "-c", _SCRIPT, "agentd-lifeline", str(lifeline_fd()), *argv]
