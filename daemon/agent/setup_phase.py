"""The setup phase: install a task's dependencies before the agent's first turn, in its sandbox.

Most repositories cannot run their tests before packages are installed, and the sandbox has no
network. So, once the workspace is cloned and before the model's first turn (again after a fresh
clone, and on an attempt that never reached the model), the setup runs in the task's sandbox,
the one its ``bash`` tool uses, with network only through the task's egress proxy
(``egress_proxy.py``: CONNECT and plain HTTP to allowlisted host names, package registries by
default, never private addresses):

1. the operator's ``setup_command`` (``bash -c``), when set: it runs first, for every task;
2. then the repository's ``.agentd/setup.sh`` (``bash .agentd/setup.sh`` in the workspace), when
   the repository has one and ``setup_repo_script`` is on; only if the operator's succeeded.

The setup script is workspace content, untrusted like all of it: it runs only inside bubblewrap
(where the sandbox is not usable it is not run at all, and the model is told), as the task's
uid, under the task's limits, with the proxy as its only way out. The host only looks whether
the file is there (``lstat``, no link followed, nothing read). What it installs must go into the
workspace (a ``.venv``, ``node_modules``...): the sandbox's ``/tmp`` and ``HOME`` are private to
each command.

Events: ``setup.started`` {steps, timeout_s}; ``setup.output`` {text} (batched, at most
``OUTPUT_EVENT_CAP`` bytes in all); ``setup.finished`` {exit_code (None: killed at the time
limit, or not run), duration_s, timed_out, output_bytes, refused (the proxy's refusals:
host, port, reason, detail; the first 20), refused_total, proxy_connections, proxy_bytes;
``skipped`` with the reason when it could not run}.

A failing setup does not fail the task: the model is told in its first turn (a note at the end
of the system prompt: what failed, the exit code or the time limit, the output's tail) and goes
on, since it may fix the setup itself. The agent's own commands stay offline unless
``agent_network = "proxy"``, which keeps the same proxy open for them for the whole attempt.
"""

from __future__ import annotations

import codecs
import math
import os
import shlex
import stat
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import trio

from ..git import Workspace
from ..git.process import kill_group
from ..store import Usage
from ..supervisor import RunContext
from .egress_proxy import DEFAULT_ALLOWED_HOSTS, EgressProxy, ProxyPolicy, Resolver, running_proxy
from .tools.base import HeadTail, cap_text
from .tools.sandbox import TaskSandbox

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["REPO_SCRIPT", "SetupSettings", "setup_settings", "task_network"]

REPO_SCRIPT = ".agentd/setup.sh"
OUTPUT_EVENT_CAP = 64 * 1024  # bytes of setup.output events per run
NOTE_TAIL = 3000  # bytes of the output's end told to the model after a failure
REFUSALS_IN_EVENT = 20
_FLUSH_S = 0.5  # output is sent as an event at least this often while it comes...
_FLUSH_BYTES = 8192  # ...or once this much is waiting
_CHUNK = 65536


@dataclass(frozen=True)
class SetupSettings:
    """``command``: the operator's setup command; ``repo_script``: run ``.agentd/setup.sh``;
    ``timeout_s``: the whole setup's time limit; ``agent_network``: ``"proxy"`` lets the
    agent's own commands use the proxy too; ``proxy``: what the proxy lets through;
    ``resolver``: tests' names (None: ``getaddrinfo``)."""

    command: str | None = None
    repo_script: bool = True
    timeout_s: float = 600.0
    agent_network: Literal["off", "proxy"] = "off"
    proxy: ProxyPolicy = field(default_factory=ProxyPolicy)
    resolver: Resolver | None = None


def setup_settings(settings: Settings) -> SetupSettings:
    """The setup phase's settings from the daemon's."""
    return SetupSettings(
        command=settings.setup_command,
        repo_script=settings.setup_repo_script,
        timeout_s=settings.setup_timeout_s,
        agent_network=settings.agent_network,
        proxy=ProxyPolicy(
            allowed_hosts=settings.egress_allowed_hosts or DEFAULT_ALLOWED_HOSTS,
            allowed_ports=settings.egress_allowed_ports,
            private_hosts=settings.egress_private_hosts,
            max_connections=settings.egress_max_connections,
            max_bytes=settings.egress_max_mb * 1024 * 1024,
            idle_timeout_s=settings.egress_idle_timeout_s,
        ),
    )


@asynccontextmanager
async def task_network(
    ctx: RunContext, workspace: Workspace, sandbox: TaskSandbox, settings: SetupSettings
) -> AsyncIterator[str]:
    """Run the setup phase when it is due, then keep the task's proxy open for the body when
    the agent may use it. Yields what the model must be told ('' when nothing).

    Cancellation: the setup's processes are killed (their sandbox's pid namespace with them),
    the proxy closed and its socket removed; nothing is recorded after ``setup.started``."""
    task = ctx.task
    due = task.workspace_branch is None or workspace.reset or task.usage == Usage()
    steps = await _steps(workspace.path, settings) if due else []
    agent = settings.agent_network == "proxy" and sandbox.sandboxed
    if not steps and not agent:
        yield ""
        return
    if steps and not sandbox.sandboxed:
        await ctx.emit("setup.finished", {"exit_code": None, "skipped": "no sandbox", "steps": steps})
        yield _skipped_note(steps)
        return
    async with running_proxy(settings.proxy, resolver=settings.resolver, task_id=task.id) as proxy:
        note = await _run_setup(ctx, sandbox, proxy, steps, settings) if steps else ""
        sandbox.proxy = proxy.path if agent else None
        try:
            yield note
        finally:
            sandbox.proxy = None


async def _steps(workspace: Path, settings: SetupSettings) -> list[str]:
    """What the setup runs: ``setup_command`` and/or ``.agentd/setup.sh``."""
    steps = ["setup_command"] if settings.command else []
    if settings.repo_script and await trio.to_thread.run_sync(_has_repo_script, workspace):
        steps.append(REPO_SCRIPT)
    return steps


def _has_repo_script(workspace: Path) -> bool:
    # A hint only (the script runs in the sandbox, whatever it is there): lstat, no link followed.
    try:
        folder = os.lstat(workspace / ".agentd")
        script = os.lstat(workspace / REPO_SCRIPT)
    except OSError:
        return False
    return stat.S_ISDIR(folder.st_mode) and stat.S_ISREG(script.st_mode)


def _script(steps: list[str], settings: SetupSettings) -> list[str]:
    commands = []
    for step in steps:
        body = f"-c {shlex.quote(settings.command or '')}" if step == "setup_command" else REPO_SCRIPT
        commands.append(f"bash --noprofile --norc {body}")
    return ["bash", "--noprofile", "--norc", "-c", " && ".join(commands)]


async def _run_setup(
    ctx: RunContext, sandbox: TaskSandbox, proxy: EgressProxy, steps: list[str], settings: SetupSettings
) -> str:
    """Run the setup in the sandbox through ``proxy``, with its events; the note for the model."""
    await ctx.emit("setup.started", {"steps": steps, "timeout_s": settings.timeout_s})
    start = trio.current_time()
    argv, options = sandbox.command(_script(steps, settings), proxy=proxy.path)
    output = _Output(ctx)
    proc = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # one killpg reaches the whole setup
        **options,
    )
    try:
        with trio.move_on_after(settings.timeout_s) as limit:
            assert proc.stdout is not None
            await _pump(proc.stdout, output.feed)
            await proc.wait()
    finally:
        with trio.CancelScope(shield=True):
            await kill_group(proc)
            with trio.move_on_after(5):  # SIGKILL: short; the bound is a safety net
                await proc.wait()
            if proc.stdout is not None:
                await proc.stdout.aclose()
    await output.flush()
    timed_out = limit.cancelled_caught
    exit_code = None if timed_out else proc.returncode
    duration = round(trio.current_time() - start, 3)
    refused = [r.as_event() for r in proxy.refused[:REFUSALS_IN_EVENT]]
    await ctx.emit(
        "setup.finished",
        {
            "exit_code": exit_code,
            "duration_s": duration,
            "timed_out": timed_out,
            "steps": steps,
            "output_bytes": output.tail.total,
            "refused": refused,
            "refused_total": proxy.refused_total,
            "proxy_connections": proxy.connections,
            "proxy_bytes": proxy.bytes,
        },
    )
    if exit_code == 0:
        return ""
    what = " then ".join(f"`{s}`" for s in steps)
    how = (
        f"was stopped at its time limit ({settings.timeout_s:g} s, setup_timeout_s)"
        if timed_out
        else f"failed with exit code {exit_code}"
    )
    network = (
        "only through the same allowlisting proxy"
        if settings.agent_network == "proxy"
        else "no network access at all"
    )
    return (
        f"\n\n[agentd] Before you started, the setup ({what}) ran in your sandbox to install the "
        f"dependencies and {how}, after {duration:g} s: what it should have installed may be "
        f"missing. Your own commands have {network}. The end of its output:\n"
        f"{cap_text(output.tail.text(), NOTE_TAIL)}"
    )


def _skipped_note(steps: list[str]) -> str:
    return (
        f"\n\n[agentd] The setup ({', '.join(steps)}) was not run: it runs only inside the "
        "bubblewrap sandbox, which is not usable on this host. Dependencies may be missing."
    )


class _Output:
    """The setup's output: sent as ``setup.output`` events up to ``OUTPUT_EVENT_CAP`` bytes,
    and its head and tail kept for the model's note."""

    def __init__(self, ctx: RunContext) -> None:
        self._ctx = ctx
        # Incremental: a character cut between two events is not replaced by U+FFFD.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = bytearray()
        self._sent = 0
        self.tail = HeadTail(NOTE_TAIL * 2)

    async def feed(self, data: bytes) -> None:
        self.tail.feed(data)
        room = OUTPUT_EVENT_CAP - self._sent - len(self._pending)
        self._pending += data[: max(room, 0)]
        if len(self._pending) >= _FLUSH_BYTES or data == b"":
            await self.flush()

    async def flush(self) -> None:
        if self._pending:
            text = self._decoder.decode(bytes(self._pending))
            self._sent += len(self._pending)
            self._pending.clear()
            await self._ctx.emit("setup.output", {"text": text})


async def _pump(stream: trio.abc.ReceiveStream, feed: Callable[[bytes], Awaitable[None]]) -> None:
    """Read ``stream`` to its end; ``feed(b"")`` (a flush) once output has waited ``_FLUSH_S``."""
    deadline = math.inf
    while True:
        with trio.move_on_at(deadline):  # a cancelled receive loses nothing (Trio's promise)
            data = await stream.receive_some(_CHUNK)
            if not data:
                return
            await feed(bytes(data))
            if deadline == math.inf:
                deadline = trio.current_time() + _FLUSH_S
            continue
        await feed(b"")
        deadline = math.inf
