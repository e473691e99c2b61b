"""``Toolbox``: the tools of one running task, over its workspace."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import trio

from daemon.errors import PermanentError

from .base import ASK_USER_TOOL, BASH_TOOL, EDIT_TOOL, ToolResult, ToolSettings
from .bash import BashSession
from .edit import Editor
from .sandbox import SANDBOX_HOME, probe_sandbox, shell_argv, shell_env


class Toolbox:
    """Runs ``bash`` and ``str_replace_based_edit_tool`` calls for one task.

    The model's mistakes (unknown tool, bad input, failing command, path outside the workspace)
    come back as ``ToolResult(is_error=True)``, never as exceptions. Exceptions are for the
    daemon: ``PermanentError`` when ``sandbox="required"`` and bubblewrap is unusable (no
    command can run, so the task should fail with that reason), ``trio.ClosedResourceError``
    after ``aclose``. ``ask_user`` is answered by the agent loop, not here.

    Use ``async with Toolbox(...)`` or call ``aclose`` so that the shell and its temporary home
    are cleaned up.
    """

    def __init__(self, workspace: Path, settings: ToolSettings = ToolSettings()) -> None:
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
        self._home: str | None = None  # temporary HOME of an unsandboxed shell
        self._sandboxed: bool | None = None
        self._closed = False

    async def __aenter__(self) -> Toolbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def sandboxed(self) -> bool | None:
        """Whether the shell runs under bubblewrap; None until the first bash command."""
        return self._sandboxed

    async def run(self, name: str, input: dict) -> ToolResult:
        """Run one tool call and return what goes back to the model.

        Cancellation: a running bash command's whole process group is killed and reaped before
        the cancellation propagates (the next command gets a fresh shell); an editor command
        already handed to its worker thread completes first (edits are atomic).
        """
        if self._closed:
            raise trio.ClosedResourceError("the toolbox is closed")
        if not isinstance(input, dict):
            return ToolResult(f"the input of {name} must be a JSON object", is_error=True)
        if name == BASH_TOOL:
            return await self._run_bash(input)
        if name == EDIT_TOOL:
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

    async def aclose(self) -> None:
        """Kill the shell's process group and remove its temporary home. Idempotent.

        Cancellation: shielded, so that the cleanup of a cancelled task still kills the shell
        and removes its home (in a worker thread that is waited for).
        """
        self._closed = True
        with trio.CancelScope(shield=True):
            async with self._bash_lock:
                if self._bash is not None:
                    await self._bash.kill()
                    self._bash = None
            if self._home is not None:
                home, self._home = self._home, None
                await trio.to_thread.run_sync(shutil.rmtree, home, True)

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
        mode = self.settings.sandbox
        sandboxed, bwrap = False, None
        if mode != "off":
            probe = await probe_sandbox()
            if probe.usable:
                sandboxed, bwrap = True, probe.bwrap
            elif mode == "required":
                raise PermanentError(
                    "commands must run in the bubblewrap sandbox (sandbox = \"required\") but it "
                    f"is not usable on this host: {probe.reason}. Install bubblewrap, allow "
                    "unprivileged user namespaces, or set sandbox to \"auto\" or \"off\".",
                    code="sandbox_unavailable",
                )
        if sandboxed:
            home = SANDBOX_HOME
        else:
            if self._home is None:
                # Outside the workspace so that caches and dotfiles never end up in the diff.
                self._home = await trio.to_thread.run_sync(
                    lambda: tempfile.mkdtemp(prefix="agentd-home-")
                )
            home = self._home
        self._sandboxed = sandboxed
        self._bash = BashSession(
            shell_argv(sandboxed=sandboxed, bwrap=bwrap, workspace=self.workspace),
            cwd=self.workspace,
            env=shell_env(home),
        )
        return self._bash
