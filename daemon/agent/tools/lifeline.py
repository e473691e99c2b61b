"""Sandboxes that die with the daemon's process, and not with the thread that started them.

bwrap's ``--die-with-parent`` is ``PR_SET_PDEATHSIG``, which fires when the *thread* that
forked the process ends. Trio starts processes from its worker threads, and retires a worker
after 10 s idle: a sandbox started by one was SIGKILLed about 10 s later, killing the agent's
shell mid-task (and with it a command that ran longer, or a fork bomb before its limit was
seen). So a small shell stands between the daemon and bwrap: bwrap dies with that shell (it
is single-threaded), and the shell kills bwrap when the daemon's process ends, which it learns
from a pipe whose only writer is the daemon: when the daemon dies, however it dies, the pipe's
read end sees end-of-file.
"""

from __future__ import annotations

import functools
import os
import shutil

__all__ = ["lifeline_argv", "lifeline_fd"]

# $1: the pipe's read end (any fd number: pass_fds keeps the parent's); then the command.
# The command gets neither the pipe nor /dev/null for its stdin (an asynchronous list's
# default): `<&0` keeps the shell's. Its exit status is the shell's. The watcher kills the
# command only while this shell lives (if it was killed alone, bwrap died with it already,
# and the pid may be another process's by now).
_SCRIPT = r"""
fd=$1; shift
[ "$fd" = 3 ] || eval "exec 3<&$fd $fd<&-"
"$@" 3<&- <&0 &
child=$!
( read -r _ <&3; kill -0 "$$" 2>/dev/null && kill -KILL "$child" 2>/dev/null ) &
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
