"""The agent loop: one task's conversation with the model, its tool calls, and its delivery.

Everything the loop does is persisted before it acts on it: an assistant turn is stored before
its tools run; a tool call is stored as started before it runs and its result after. So an
attempt that dies anywhere resumes from the store, and a tool call that was started but has no
result is answered to the model as interrupted, never silently run again.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ..errors import PermanentError
from ..git import ClonePolicy, CloneRequest, Workspace, parse_remote, prepare_workspace
from ..store import NewEvent, Task, ToolCallStatus, Usage
from ..supervisor import RunContext, RunResult, RunStatus
from . import conversation as conv
from .context_keeper import ContextKeeper
from .context_window import ContextPolicy
from .delivery import deliver
from .instructions import DEFAULT_CAP_BYTES, Instructions
from .model import ModelProvider
from .resume import last_interruption, pushed_branch, workspace_note
from .setup_phase import SetupSettings, task_network
from .tools import ASK_USER_TOOL, Toolbox, ToolSettings, tool_definitions
from .tools.sandbox import TaskSandbox
from .turns import (
    CUT_OFF as CUT_OFF,  # re-exported: what the model is told of a cut-off call
    ModelTurns,
)

log = logging.getLogger(__name__)

TokenLookup = Callable[[int], Awaitable[str | None]]

SYSTEM_PROMPT = """\
You are a careful software engineer working for a user who sent you a task from their phone.
The repository is checked out at {path} on the branch {branch} (made from {base}).
Use the tools to read and change files and to run commands (tests, linters) in that directory.
Do not commit, push or switch branches: when you finish, your changes are committed and pushed
for you. Finish with a short summary of what you changed and how you checked it. If you cannot
go on without information only the user has, call ask_user with one clear question."""

CONTINUE = "Continue from where you stopped."


@dataclass(frozen=True)
class AgentSettings:
    workspace_root: Path
    budget_defaults: conv.Budget
    budget_caps: conv.Budget
    tools: ToolSettings
    max_output_tokens: int = 8192
    max_output_tokens_limit: int = 64_000
    stuck_repeats: int = 5
    instructions_cap_bytes: int = DEFAULT_CAP_BYTES
    context: ContextPolicy = field(default_factory=ContextPolicy)
    allow_local_remotes: bool = False
    allow_private_remotes: bool = False
    quota_bytes: int = 2_000_000_000
    min_free_bytes: int = 500_000_000
    identity: tuple[str, str] = ("agentd", "agentd@localhost")
    ssh_key: Path | None = None
    github_api: str = "https://api.github.com"
    github_web_host: str = "github.com"
    setup: SetupSettings = field(default_factory=SetupSettings)  # the setup phase and egress proxy

    @property
    def clone_policy(self) -> ClonePolicy:
        """How the tasks' workspaces are made, from these settings."""
        return ClonePolicy(
            self.workspace_root,
            self.identity,
            self.quota_bytes,
            self.min_free_bytes,
            allow_local=self.allow_local_remotes,
            allow_private=self.allow_private_remotes,
            ssh_key=self.ssh_key,
        )


class _Next(enum.Enum):
    """What follows an assistant turn, once its user turn (if any) is added."""

    DONE = enum.auto()  # the model has finished: deliver
    MODEL = enum.auto()  # the model's turn again


class AgentRunner:
    """The task runner the supervisor calls: workspace, conversation, tools, delivery."""

    def __init__(
        self, provider: ModelProvider, settings: AgentSettings, github_token: TokenLookup | None = None
    ) -> None:
        self.provider = provider
        self.settings = settings
        self._github_token = github_token
        # The models the API refused context management for: the client path for every task
        # on them, for the daemon's life (``ContextKeeper.fall_back``).
        self.context_refused: set[str | None] = set()

    async def warm_up(self) -> bool:
        """Load what the first task would otherwise wait for (the model's SDK); False: nothing to."""
        warm_up = getattr(self.provider, "warm_up", None)
        if warm_up is None:
            return False
        await warm_up()
        return True

    async def run(self, ctx: RunContext) -> RunResult:
        """One attempt of a task.

        Cancellation: the running tool's process group is killed and the model stream closed;
        what was persisted stays, so the next attempt resumes from there.
        """
        s = self.settings
        task = ctx.task
        token = await self._github_token(task.user_id) if self._github_token else None
        if token and not _on_github(task.repo_url, s):
            token = None  # the user's GitHub token goes to GitHub only, never to another host
        workspace = await prepare_workspace(
            CloneRequest(
                task.id,
                task.repo_url,
                task.base_branch,
                title=task.prompt,
                token=token,
                known_branch=task.workspace_branch,
                attempt=task.attempt,
                pushed=pushed_branch(task),
            ),
            s.clone_policy,
        )
        if workspace.branch != task.workspace_branch:
            await ctx.store.update_task(task.id, workspace_branch=workspace.branch)
        if workspace.reset:
            reset: dict[str, Any] = {"branch": workspace.branch, "previous_branch": task.workspace_branch}
            if (restored := workspace.restored) is not None:
                reset.update(restored_from=restored.pushed.commit, restored_at=restored.head)
            await ctx.emit("workspace.reset", reset)
        await ctx.emit("workspace.ready", {"commit": workspace.base_commit, "branch": workspace.branch})
        # One confinement for the task's tools and for the git that commits their work.
        async with TaskSandbox(workspace.path, s.tools) as sandbox:
            # The setup phase, when due, before the first turn (setup_phase.py); a failure is
            # not the task's: the model hears of it in its first turn and may fix it.
            async with (
                task_network(ctx, workspace, sandbox, s.setup) as setup_note,
                Toolbox(workspace.path, s.tools, sandbox=sandbox) as toolbox,
            ):
                session = _Session(self, ctx, workspace, toolbox)
                session.system += setup_note
                result = await session.converse()
            if result is not None:
                return result
            # A fork bomb the last command left may only show now, as its processes are killed.
            if (hit := await sandbox.limit_reached()) is not None:
                raise hit
            return await deliver(
                ctx, workspace, token=token, summary=session.summary, settings=s, confinement=sandbox
            )


def _on_github(repo_url: str, s: AgentSettings) -> bool:
    """Whether ``repo_url`` is on the configured GitHub's host (``github_web_host``)."""
    try:
        remote = parse_remote(
            repo_url, s.allow_local_remotes, allow_private=s.allow_local_remotes or s.allow_private_remotes
        )
    except PermanentError:
        return False  # prepare_workspace says what is wrong with it
    return remote.kind in ("https", "http") and remote.host == s.github_web_host.lower()


class _Session(ModelTurns):
    """One attempt's walk through the conversation (its model turns: ``turns.ModelTurns``)."""

    def __init__(self, runner: AgentRunner, ctx: RunContext, workspace: Workspace, toolbox: Toolbox):
        self.runner = runner
        self.ctx = ctx
        self.store = ctx.store
        self.task: Task = ctx.task
        self.workspace = workspace
        self.toolbox = toolbox
        self.usage: Usage = ctx.task.usage
        self.turns: list[dict[str, Any]] = []
        self.summary = ""
        s = runner.settings
        self.budget = conv.effective_budget(self.task.budget, s.budget_defaults, s.budget_caps)
        self.system = SYSTEM_PROMPT.format(
            path=workspace.path, branch=workspace.branch, base=workspace.base_branch
        )
        given = str(workspace.path)
        real = str(toolbox.workspace)
        self.instructions = Instructions(real, given if given != real else None, s.instructions_cap_bytes)
        # Said to the model once, in the next user turn, when the workspace was reset.
        self.notes: list[str] = []
        # One copy per attempt: providers copy what they decorate (with_cache_breakpoints).
        self.tools = tool_definitions()
        self.context = ContextKeeper(s.context, runner.provider, self.task.model, runner.context_refused)
        # The task's tool calls as the store has them, by tool_use id: read once per attempt,
        # then kept in step with this attempt's own writes (the only writer of them) instead of
        # read again, whole, at every turn.
        self.calls: dict[str, dict[str, Any]] | None = None
        # Why the previous attempt ended, once a call it left without a result needs saying.
        self.interruption: conv.Interruption | None = None

    async def converse(self) -> RunResult | None:
        """Talk until the model is done (None: deliver the work) or the task must wait."""
        self.turns = await self.store.list_messages(self.task.id)
        # The root's instructions end the system prompt, inside its cached prefix.
        self.system += await trio.to_thread.run_sync(self.instructions.load_root)
        self.instructions.resume(self.turns)
        if not self.turns:
            inputs = await self.ctx.take_inputs()
            await self._append("user", conv.text_blocks([self.task.prompt, *inputs]))
        elif self.workspace.reset:
            self.notes.append(workspace_note(self.workspace))
            if self.turns[-1]["role"] == "user":  # the model has not answered it: add to it
                await self._append("user", conv.text_blocks(self._take_notes()))
        while True:
            last = self.turns[-1]
            if last["role"] == "assistant":
                step = await self._after_assistant(last)
                if isinstance(step, RunResult):
                    return step
                if step is _Next.DONE:
                    self.summary = conv.final_text(last)
                    return None
            await self._model_turn()

    async def _after_assistant(self, last: dict[str, Any]) -> RunResult | _Next:
        """Add the user turn that follows ``last`` (a result: the task must wait)."""
        stop = last.get("stop_reason", "end_turn")
        if conv.tool_uses(last):
            results = await self._answer_tools(last)
            if isinstance(results, RunResult):
                return results
            # A subdirectory's instructions, the first time a call works there: added after the
            # results, so no earlier turn changes.
            for block in conv.tool_uses(last):
                self.notes += await trio.to_thread.run_sync(self.instructions.for_call, block.get("input"))
            inputs = await self.ctx.take_inputs()
            await self._append("user", results + conv.text_blocks(self._take_notes() + inputs))
        elif self.notes:  # a reset workspace: the model must hear of it before anything else
            inputs = await self.ctx.take_inputs()
            await self._append("user", conv.text_blocks(self._take_notes() + inputs))
        elif stop == "pause_turn":
            pass  # the API goes on from the paused assistant turn as it stands
        elif stop == "max_tokens":
            inputs = await self.ctx.take_inputs()
            await self._append("user", conv.text_blocks([CONTINUE, *inputs]))
        elif stop == "refusal":
            raise PermanentError(
                f"the model refused: {conv.final_text(last) or 'no reason given'}", code="refusal"
            )
        else:  # end_turn, stop_sequence: done, unless the user said more meanwhile
            inputs = await self.ctx.take_inputs()
            if not inputs:
                return _Next.DONE
            await self._append("user", conv.text_blocks(inputs))
        return _Next.MODEL

    async def _answer_tools(self, turn: dict[str, Any]) -> list[dict[str, Any]] | RunResult:
        """A tool_result for every tool_use of ``turn``: run, recovered, or the user's answer."""
        conv.check_stuck(self.turns, self.runner.settings.stuck_repeats)
        if self.calls is None:
            self.calls = {call["id"]: call for call in await self.store.list_tool_calls(self.task.id)}
        known = dict(self.calls)
        results = []
        for block in conv.tool_uses(turn):
            call = known.get(block["id"])
            if block["name"] == ASK_USER_TOOL:
                answer = await self._ask_user(block, call)
                if isinstance(answer, RunResult):
                    return answer
                output, is_error = answer, False
            elif call is not None and call["status"] == ToolCallStatus.DONE:
                output, is_error = call["output"], bool(call["is_error"])
            elif call is not None:
                if self.interruption is None:  # read once, for the calls of the attempt that ended
                    self.interruption = await last_interruption(self.store, self.task)
                output, is_error = conv.interrupted_note(self.interruption), True
                await self._record_result(block["id"], output, is_error)
            else:
                output, is_error = await self._run_tool(block)
            results.append(conv.tool_result(block["id"], output, is_error))
        return results

    async def _run_tool(self, block: dict[str, Any]) -> tuple[str, bool]:
        """Run one call, store its result, then check the task's limits: a fork bomb
        (``pids_limit``), a full ``/tmp`` (``tmp_full``) or a workspace over its quota
        (``quota_exceeded``) fail the task here, with the result already stored and the
        workspace left as it is."""
        tool_input = block.get("input") or {}
        await self._start_call(block["id"], block["name"], tool_input)
        result = await self.toolbox.run(block["name"], tool_input)
        await self._record_result(block["id"], result.output, result.is_error)
        await self.toolbox.check_limits(self.runner.settings.quota_bytes)
        return result.output, result.is_error

    async def _start_call(self, tool_use_id: str, name: str, tool_input: Any, *also: NewEvent) -> None:
        """Record the call as started, with its ``agent.tool_call`` event (and ``also``)."""
        announce = NewEvent("agent.tool_call", {"id": tool_use_id, "name": name, "input": tool_input})
        await self.store.start_tool_call(
            self.task.id, tool_use_id, name, tool_input, events=[announce, *also]
        )
        if self.calls is not None and tool_use_id not in self.calls:  # the store ignores a repeat
            self.calls[tool_use_id] = {
                "id": tool_use_id,
                "name": name,
                "input": tool_input,
                "status": ToolCallStatus.STARTED,
                "output": None,
                "is_error": None,
            }

    async def _record_result(self, tool_use_id: str, output: str, is_error: bool) -> None:
        await self.store.finish_tool_call(
            self.task.id,
            tool_use_id,
            output,
            is_error,
            events=[
                NewEvent(
                    "agent.tool_result",
                    {"id": tool_use_id, "is_error": is_error, "output": conv.cap_for_event(output)},
                )
            ],
        )
        if self.calls is not None and tool_use_id in self.calls:  # the store updates no other
            self.calls[tool_use_id] = {
                **self.calls[tool_use_id],
                "status": ToolCallStatus.DONE,
                "output": output,
                "is_error": is_error,
            }

    async def _ask_user(self, block: dict[str, Any], call: dict[str, Any] | None) -> str | RunResult:
        """The user's answer to an ``ask_user`` call, or a result that makes the task wait for it."""
        if call is not None and call["status"] == ToolCallStatus.DONE:
            return call["output"]
        question = str((block.get("input") or {}).get("question") or "").strip()
        if call is None:
            await self._start_call(
                block["id"],
                block["name"],
                block.get("input") or {},
                NewEvent("agent.question", {"text": question}),
            )
        answers = await self.ctx.take_inputs()
        if not answers:
            return RunResult(RunStatus.WAITING_INPUT, reason=question or "the agent has a question")
        answer = "\n\n".join(answers)
        await self._record_result(block["id"], answer, False)
        return answer

    def _take_notes(self) -> list[str]:
        notes, self.notes = self.notes, []
        return notes
