"""The persistent bash session behind the ``bash`` tool.

One long-lived ``bash`` reads commands from a pipe, so ``cd`` and ``export`` persist between
calls, as Claude expects. Each command is sent as ``eval '<command>' </dev/null`` followed by a
``printf`` of a random end marker and the exit status; the output (stdout and stderr on one
pipe, so interleaved as the command wrote them) is everything up to the marker. Reading stops at
the marker, not at end-of-file, so background jobs that keep the pipe open do not block a call.

The shell is the leader of its own session and process group (``start_new_session``); every
command and its children stay in that group (a non-interactive bash has no job control). On a
timeout, a cancellation or a restart the whole group is killed with SIGKILL, plus any descendant
that left the group (``setsid``) found through ``/proc``; under bubblewrap the pid namespace dies
with its first process anyway.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from ...cpu_pin import pinned_cpu, release as release_cpu
from .base import HeadTail, ToolResult
from .procs import descendants as _descendants, proc_stat as _proc_stat

_CHUNK = 65536


class BashSession:
    """A lazily started bash process running commands one at a time.

    Not safe for concurrent ``run`` calls: the ``Toolbox`` serialises them with a lock.
    """

    def __init__(
        self,
        argv: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        pass_fds: tuple[int, ...] = (),
        before_kill: Callable[[int], Awaitable[object]] | None = None,
    ) -> None:
        self._argv = argv
        self._cwd = cwd
        self._env = env
        self._pass_fds = pass_fds
        # Called with the shell's pid before a timeout or an exit kills it: the last look at
        # the sandbox while it still exists (its /tmp, its processes).
        self._before_kill = before_kill
        self._proc: trio.Process | None = None
        token = secrets.token_hex(8)
        # The printf below writes the marker from two pieces, so that the command line itself
        # (echoed by `set -x`, say) never contains it.
        self._marker_parts = ("__agentd_end_", token)
        self._marker = re.compile(rb"__agentd_end_" + token.encode() + rb"_(\d+)__\n")
        self._marker_len = len("__agentd_end_") + len(token) + 8

    @property
    def pid(self) -> int | None:
        """The shell's pid (bwrap's under the sandbox) while it runs."""
        return self._proc.pid if self._proc is not None else None

    async def run(self, command: str, *, timeout_s: float, cap_bytes: int) -> ToolResult:
        """Run ``command`` in the session; start the shell first if needed.

        A non-zero exit status is reported in the output (not as an error: the command ran).
        On timeout the process group is killed, the session is restarted (fresh shell at the
        next command) and an ``is_error`` result with the partial output is returned.

        Cancellation: the shell's whole process group is killed with SIGKILL and reaped (in a
        shielded scope) before the cancellation propagates; the next command starts a new shell.
        """
        if self._proc is None:
            await self._start()
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        out = HeadTail(cap_bytes)
        carry = bytearray()
        status: int | None = None
        eof = False
        script = (
            f"eval {shlex.quote(command)} </dev/null\n"
            f"printf '%s%s_%d__\\n' '{self._marker_parts[0]}' '{self._marker_parts[1]}' \"$?\"\n"
        ).encode()
        try:
            with trio.move_on_after(timeout_s) as scope:
                await proc.stdin.send_all(script)
                while status is None and not eof:
                    chunk = await proc.stdout.receive_some(_CHUNK)
                    if not chunk:
                        eof = True
                        break
                    carry += chunk
                    found = self._marker.search(carry)
                    if found:
                        # Read the match before clearing: it refers to the buffer.
                        status = int(found.group(1))
                        out.feed(bytes(carry[: found.start()]))
                        carry.clear()
                    elif len(carry) > self._marker_len:
                        # Keep only what could be the start of a split marker.
                        cut = len(carry) - self._marker_len
                        out.feed(bytes(carry[:cut]))
                        del carry[:cut]
        except trio.BrokenResourceError:
            # The shell died while we wrote the command (it exited on its own earlier).
            eof = True
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.kill()
            raise
        out.feed(bytes(carry))
        if (scope.cancelled_caught or eof) and self._before_kill is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._before_kill(proc.pid)
        if scope.cancelled_caught:
            await self.kill()
            return ToolResult(
                _with_note(
                    out.text(),
                    f"command timed out after {timeout_s:g} s: it and all its child processes "
                    "were killed and the bash session was restarted (working directory and "
                    "environment are reset)",
                ),
                is_error=True,
            )
        if eof:
            code = await self.kill()
            return ToolResult(
                _with_note(
                    out.text(),
                    f"the bash session exited (status {code}); a new session starts with the "
                    "next command (working directory and environment are reset)",
                ),
                is_error=True,
            )
        text = out.text()
        if status != 0:
            return ToolResult(_with_note(text, f"exit code {status}"))
        return ToolResult(text if text else "(no output)")

    async def kill(self) -> int | None:
        """Kill the shell's process tree and reap the shell; returns its exit status.

        Idempotent. Cancellation: runs shielded, so the tree is always killed and reaped.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        with trio.CancelScope(shield=True):
            # Freeze the group first so that nothing forks while /proc is scanned (in a thread:
            # on a busy host the scan takes a while) for descendants that left the group.
            _signal_group(proc.pid, signal.SIGSTOP)
            pids = await trio.to_thread.run_sync(_descendants, proc.pid)
            _signal_group(proc.pid, signal.SIGKILL)
            for pid in pids:
                _signal_pid(pid)
            # SIGKILL cannot be ignored, so these waits are short; the bound is a safety net.
            with trio.move_on_after(5):
                await proc.wait()
                await _wait_gone(pids)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    await stream.aclose()
        return proc.returncode

    async def _start(self) -> None:
        self._proc = await trio.lowlevel.open_process(
            self._argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self._cwd,
            env=self._env,
            pass_fds=self._pass_fds,
            # Own session and process group: one killpg reaches every command and child.
            start_new_session=True,
        )
        # The user's commands: not on the event loop's CPU. bubblewrap may have forked the
        # sandbox's processes already: theirs too (what they fork later inherits theirs).
        # Shielded: a cancellation here, before ``run`` guards the shell, would leave it running.
        release_cpu(self._proc.pid)
        if pinned_cpu() is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_release_tree, self._proc.pid)


def _with_note(text: str, note: str) -> str:
    if text and not text.endswith("\n"):
        text += "\n"
    return f"{text}[{note}]"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _release_tree(root: int) -> None:
    """Give every process under ``root`` every CPU (``cpu_pin.release``), looking again until
    none is left on the loop's: one forked meanwhile by a process not yet released would keep
    it. Bounded: a tree still growing after a few looks is released by what it inherits."""
    loop_cpu = {pinned_cpu()}
    for _ in range(5):
        pinned = [pid for pid in _descendants(root) if _cpus_of(pid) == loop_cpu]
        if not pinned:
            return
        for pid in pinned:
            release_cpu(pid)


def _cpus_of(pid: int) -> set[int] | None:
    try:
        return os.sched_getaffinity(pid)
    except OSError:  # gone
        return None


def _alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    # A zombie is dead: it only waits for its (new) parent to reap it.
    return stat is not None and stat[0] not in ("Z", "X")


async def _wait_gone(pids: list[int]) -> None:
    # SIGKILL is delivered asynchronously; wait briefly so that "returned" means "dead".
    while any(_alive(pid) for pid in pids):  # noqa: ASYNC110 - death of a pid has no event here
        await trio.sleep(0.005)
