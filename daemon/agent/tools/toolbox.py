"""``Toolbox``: the tools of one running task, over its workspace."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from daemon.errors import PermanentError

from .base import ASK_USER_TOOL, BASH_TOOL, EDIT_TOOL, ToolResult, ToolSettings
from .bash import BashSession
from .edit import Editor
from .identity import own_and_measure
from .task_sandbox import TaskSandbox

_MB = 1_000_000


class Toolbox:
    """Runs ``bash`` and ``str_replace_based_edit_tool`` calls for one task.

    The model's mistakes (unknown tool, bad input, failing command, path outside the workspace)
    come back as ``ToolResult(is_error=True)``, never as exceptions. Exceptions are for the
    daemon: ``PermanentError`` when ``sandbox="required"`` and bubblewrap is unusable (no
    command can run, so the task should fail with that reason), ``trio.ClosedResourceError``
    after ``aclose``; ``check_limits`` raises when the task went over a limit. ``ask_user`` is
    answered by the agent loop, not here.

    ``sandbox``: the task's confinement, shared with its git (entered and exited by the
    caller); without one the toolbox makes its own at the first bash command. Use
    ``async with Toolbox(...)`` or call ``aclose`` so that the shell and what it left are
    cleaned up.
    """

    def __init__(
        self, workspace: Path, settings: ToolSettings = ToolSettings(), sandbox: TaskSandbox | None = None
    ) -> None:
        given = os.path.abspath(workspace)
        self.workspace = Path(os.path.realpath(given))
        self.settings = settings
        self._editor = Editor(
            str(self.workspace),
            alias=given if given != str(self.workspace) else None,
            cap_bytes=settings.output_cap_bytes,
        )
        self._bash: BashSession | None = None
        self._bash_lock = trio.Lock()  # one command at a time in the one shell
        # The task's confinement: the caller's (entered and exited by it), else our own,
        # entered at the first bash command and exited by ``aclose``.
        self._sandbox = sandbox
        self._own_sandbox = sandbox is None
        self._entered = sandbox is not None
        self._wrote = False  # a call since the last check may have grown the workspace
        self._commanded = False  # a bash call since the last check (processes to look at)
        self._closed = False

    async def __aenter__(self) -> Toolbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def sandboxed(self) -> bool | None:
        """Whether the shell runs under bubblewrap; None until the first bash command."""
        return self._sandbox.sandboxed if self._entered and self._sandbox is not None else None

    async def run(self, name: str, input: dict) -> ToolResult:
        """Run one tool call and return what goes back to the model.

        Cancellation: a running bash command's whole process group is killed and reaped before
        the cancellation propagates (the next command gets a fresh shell); an editor command's
        worker thread is abandoned at once (an edit not yet renamed into place is dropped).
        """
        if self._closed:
            raise trio.ClosedResourceError("the toolbox is closed")
        if not isinstance(input, dict):
            return ToolResult(f"the input of {name} must be a JSON object", is_error=True)
        if name == BASH_TOOL:
            self._wrote = self._commanded = True
            return await self._run_bash(input)
        if name == EDIT_TOOL:
            self._wrote = self._wrote or input.get("command") != "view"
            return await self._editor.run(input)
        if name == ASK_USER_TOOL:
            return ToolResult(
                "ask_user is handled by the agent loop (it pauses the task for the user's "
                "answer); the toolbox does not run it",
                is_error=True,
            )
        return ToolResult(
            f"Unknown tool {name!r}; available tools: {BASH_TOOL}, {EDIT_TOOL}, {ASK_USER_TOOL}",
            is_error=True,
        )

    async def check_limits(self, quota_bytes: int | None = None) -> None:
        """Raise ``PermanentError`` when the task went over a limit; call it after each call.

        Codes: ``pids_limit`` (its processes reached ``max_processes``), ``tmp_full`` (the
        sandbox's ``/tmp`` is full), ``quota_exceeded`` (the workspace holds more than
        ``quota_bytes``; measured after every call that may have written, including any bash
        call, since background processes go on writing). Nothing is removed: the messages say
        the workspace is kept. Measuring also gives the sandbox's uid what the editor wrote.

        Cancellation: the /proc scan and the workspace walk (worker threads) complete first.
        """
        # Processes are looked at after bash calls only: an editor call starts none (a look
        # costs up to a quarter second while background processes run, ``limit_reached``), and
        # what background processes do meanwhile shows at the next command or at the end.
        if self._entered and self._sandbox is not None and self._commanded:
            self._commanded = False
            pid = self._bash.pid if self._bash is not None else None
            hit = await self._sandbox.limit_reached(pid)
            if hit is not None:
                raise hit
        if not (self._wrote or self._bash is not None):
            return
        self._wrote = False
        if self._entered and self._sandbox is not None:
            size = await self._sandbox.workspace_usage()
        else:
            size = await trio.to_thread.run_sync(own_and_measure, self.workspace, None)
        if quota_bytes is not None and size > quota_bytes:
            raise PermanentError(
                f"workspace quota exceeded: {size / _MB:.1f} MB > {quota_bytes / _MB:.1f} MB "
                "(workspace_quota_mb); the task was stopped and the workspace is kept as it is, "
                "nothing was removed",
                code="quota_exceeded",
            )

    async def aclose(self) -> None:
        """Kill the shell's process group and, when the toolbox made its own sandbox, leave it
        (its leftover processes killed, its temporary home removed). Idempotent.

        Cancellation: shielded, so that the cleanup of a cancelled task still kills the shell
        and releases the sandbox (in worker threads that are waited for).
        """
        self._closed = True
        with trio.CancelScope(shield=True):
            async with self._bash_lock:
                if self._bash is not None:
                    if self._sandbox is not None:
                        # The last look at a running sandbox (a fork bomb left in the
                        # background, a full /tmp), kept for ``limit_reached``.
                        await self._sandbox.limit_reached(self._bash.pid, quick=True)
                    await self._bash.kill()
                    self._bash = None
            if self._own_sandbox and self._entered and self._sandbox is not None:
                self._entered = False
                await self._sandbox.__aexit__(None, None, None)

    async def _run_bash(self, input: dict) -> ToolResult:
        command = input.get("command")
        restart = input.get("restart", False)
        if restart is not None and not isinstance(restart, bool):
            return ToolResult("restart must be true or false", is_error=True)
        if command is not None and not isinstance(command, str):
            return ToolResult("command must be a string", is_error=True)
        if command is not None and "\x00" in command:
            return ToolResult("command must not contain NUL bytes", is_error=True)
        async with self._bash_lock:
            if restart:
                if self._bash is not None:
                    await self._bash.kill()
                if not command or not command.strip():
                    return ToolResult(
                        "The bash session has been restarted (a fresh shell in the workspace; "
                        "the previous working directory and environment are gone)."
                    )
            if not command or not command.strip():
                return ToolResult(
                    "command is required (unless restart is true): the bash command to run",
                    is_error=True,
                )
            session = await self._session()
            return await session.run(
                command,
                timeout_s=self.settings.command_timeout_s,
                cap_bytes=self.settings.output_cap_bytes,
            )

    async def _session(self) -> BashSession:
        if self._bash is not None:
            return self._bash
        if not self._entered:
            self._sandbox = TaskSandbox(self.workspace, self.settings)
            await self._sandbox.__aenter__()
            self._entered = True
        assert self._sandbox is not None
        argv, options = self._sandbox.command(["bash", "--noprofile", "--norc"])
        self._bash = BashSession(
            argv,
            cwd=options["cwd"],
            env=options["env"],
            pass_fds=options.get("pass_fds", ()),
            before_kill=self._sandbox.limit_reached,
        )
        return self._bash
