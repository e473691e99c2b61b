"""An agent environment for tests: a real bare repo, the real store, supervisor and agent runner."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from daemon.agent.anthropic_provider import AnthropicProvider
from daemon.agent.conversation import Budget
from daemon.agent.loop import AgentRunner, AgentSettings
from daemon.agent.scripted_provider import ScriptedProvider
from daemon.agent.tools import ToolSettings
from daemon.states import TaskStatus
from daemon.supervisor import Backoff

from .fakes.anthropic_api import FakeAnthropicAPI
from .fakes.git_http import git_out, make_bare_repo
from .fakes.prompt_cache import PromptCache
from .helpers import running_supervisor, wait_status

BUGGY_PROJECT = {
    "README.md": "# calc\n",
    "calc.py": "def add(a, b):\n    return a - b\n",
    "test_calc.py": "from calc import add\n\nassert add(2, 3) == 5, 'add is broken'\nprint('1 passed')\n",
}


def agent_settings(root: Path, **overrides: Any) -> AgentSettings:
    values: dict[str, Any] = dict(
        workspace_root=root / "workspaces",
        budget_defaults=Budget(40, 10_000_000, 10.0),
        budget_caps=Budget(100, 50_000_000, 50.0),
        tools=ToolSettings(command_timeout_s=30, sandbox="auto"),
        stuck_repeats=4,
        allow_local_remotes=True,
        min_free_bytes=0,
    )
    values.update(overrides)
    return AgentSettings(**values)


def tool_use(id: str, name: str, **input: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": id, "name": name, "input": input}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def write_turn(id: str, path: str, body: str) -> dict[str, Any]:
    """A model turn that creates ``path`` holding ``body``."""
    return {
        "content": [tool_use(id, "str_replace_based_edit_tool", command="create", path=path, file_text=body)]
    }


# By position in the conversation: the first run writes a.txt, the run that goes on b.txt.
WRITE_A_THEN_B = {
    "turns": [
        write_turn("a", "a.txt", "A\n"),
        {"content": [text("Wrote a.txt.")]},
        write_turn("b", "b.txt", "B\n"),
        {"content": [text("Wrote b.txt.")]},
    ]
}


def ask_then_write(*questions: str) -> dict[str, Any]:
    """A script that asks each question with ``ask_user``, then writes ``style.txt`` and ends."""
    asked = [{"content": [tool_use(f"q{i}", "ask_user", question=q)]} for i, q in enumerate(questions)]
    write = write_turn("w", "style.txt", "spaces\n")
    return {"turns": [*asked, write, {"content": [text("Wrote the style file.")]}]}


# The edit that fixes BUGGY_PROJECT's add(), as the model's second call.
FIX_CALC_EDIT = tool_use(
    "t2",
    "str_replace_based_edit_tool",
    command="str_replace",
    path="calc.py",
    old_str="return a - b",
    new_str="return a + b",
)

FIX_SCRIPT = {
    "turns": [
        {
            "content": [
                text("Let me look at the code."),
                tool_use("t1", "str_replace_based_edit_tool", command="view", path="calc.py"),
            ]
        },
        {"content": [FIX_CALC_EDIT]},
        {"content": [tool_use("t3", "bash", command="python3 test_calc.py")]},
        {"content": [text("Fixed add() to add instead of subtract; test_calc.py passes.")]},
    ]
}


def bare_repo(tmp_path: Path, files: dict[str, str] | None = None) -> Path:
    return make_bare_repo(tmp_path, branches={"main": files or BUGGY_PROJECT})


def someone_pushes(
    tmp_path: Path, bare: Path, branch: str, name: str, *, body: str | None = None, new_branch: bool = False
) -> str:
    """A commit by someone else adding ``name`` (holding ``body``, by default its name and a
    newline) on ``branch`` of ``bare`` (with ``new_branch``: a new branch made from main); its id."""
    work = tmp_path / f"someone-{name}"
    start = [] if new_branch else ["-b", branch]
    subprocess.run(["git", "clone", "--quiet", *start, str(bare), str(work)], check=True)
    (work / name).write_text(f"{name}\n" if body is None else body)
    ident = ["-c", "user.name=Someone", "-c", "user.email=someone@example.invalid"]
    steps = [["checkout", "--quiet", "-b", branch]] if new_branch else []
    steps += [["add", name], [*ident, "commit", "--quiet", "-m", name], ["push", "--quiet", "origin", branch]]
    for args in steps:
        subprocess.run(["git", *args], cwd=work, check=True)
    return git_out(work, "rev-parse", "HEAD")


def branch_file(bare: Path, branch: str, path: str) -> str:
    return subprocess.run(
        ["git", "show", f"{branch}:{path}"], cwd=bare, check=True, capture_output=True, text=True
    ).stdout


@asynccontextmanager
async def agent_supervisor(
    store, hub, tmp_path: Path, provider=None, script=None, **settings: Any
) -> AsyncIterator[Any]:
    provider = provider or ScriptedProvider(script or FIX_SCRIPT)
    runner = AgentRunner(provider, agent_settings(tmp_path, **settings))
    async with running_supervisor(store, hub, runner, backoff=Backoff(0.01, 0.05, 3)) as sup:
        yield sup


CLAUDE_KEY = "sk-ant-test-key-123"


async def run_with_claude(
    store,
    hub,
    tmp_path: Path,
    replies: Sequence[Any],
    *,
    repo_url: str | None = None,
    files: dict[str, str] | None = None,
    prompt: str = "Fix add()",
    model: str = "claude-sonnet-5-5",
    prompt_cache: PromptCache | None = None,
    fake: FakeAnthropicAPI | None = None,
    **settings: Any,
) -> tuple[FakeAnthropicAPI, Any, list[Any]]:
    """One task through the real anthropic SDK against a fake Messages API serving ``replies``
    (with ``prompt_cache``'s accounting, if given; or ``fake``, made by the caller), run to its
    end: the fake (with the requests it got), the task, and its events. A ``context`` setting
    (``ContextPolicy``) goes to the provider too. Cancellation: the fake and the supervisor end
    with it."""
    if fake is None:
        fake = FakeAnthropicAPI(api_key=CLAUDE_KEY, prompt_cache=prompt_cache)
    fake.push(*replies)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(fake.serve)
        provider = AnthropicProvider(
            CLAUDE_KEY, base_url=url, model=model, max_retries=0, context=settings.get("context")
        )
        async with agent_supervisor(store, hub, tmp_path, provider, **settings) as sup:
            alice = await store.upsert_user("alice")
            repo = repo_url or str(bare_repo(tmp_path, files))
            task, _ = await sup.submit(user_id=alice.id, repo_url=repo, prompt=prompt)
            await wait_status(hub, task.id, TaskStatus.SUCCEEDED, TaskStatus.FAILED)
        nursery.cancel_scope.cancel()
    return fake, await store.get_task(task.id), await store.read_events(task.id)
