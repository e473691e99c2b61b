"""Whole tasks through the real anthropic SDK against the fake Messages API, and with a GitHub
token: push over smart HTTP with basic auth, pull request through the fake GitHub REST API."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trio

from daemon.agent.loop import AgentRunner
from daemon.states import TaskStatus

from .agent_env import BUGGY_PROJECT, CLAUDE_KEY, agent_settings, run_with_claude, tool_use
from .fakes.anthropic_api import message, overloaded, unauthorized
from .fakes.git_http import GitHttpServer, make_bare_repo
from .fakes.github_api import FakeGitHubAPI
from .helpers import running_supervisor, wait_status

pytestmark = pytest.mark.slow


FIX = [
    message("Running the test.", tool_use("toolu_1", "bash", command="python3 test_calc.py")),
    message(
        tool_use(
            "toolu_2",
            "str_replace_based_edit_tool",
            command="str_replace",
            path="calc.py",
            old_str="a - b",
            new_str="a + b",
        ),
        tool_use("toolu_3", "bash", command="python3 test_calc.py"),
    ),
    message("Fixed add(); the test passes."),
]


async def test_a_multi_turn_tool_session_with_claude(store, hub, tmp_path):
    fake, task, events = await run_with_claude(store, hub, tmp_path, FIX)
    assert task.status is TaskStatus.SUCCEEDED, task.error
    bodies = [r.body for r in fake.requests]
    assert len(bodies) == 3
    # All tool results of a turn come back in one user turn, in order, after the assistant turn.
    last = bodies[2]["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "user", "assistant", "user"]
    results = last[4]["content"]
    assert [(b["type"], b["tool_use_id"]) for b in results] == [
        ("tool_result", "toolu_2"),
        ("tool_result", "toolu_3"),
    ]
    assert "1 passed" in results[1]["content"]
    # Cache breakpoints: the last tool, the system prompt, the newest turn's last block.
    assert "cache_control" in bodies[2]["tools"][-1]
    assert bodies[2]["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert last[-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert not any("cache_control" in b for m in last[:-1] for b in m["content"])
    usage = [e.data for e in events if e.type == "agent.usage"]
    assert len(usage) == 3 and all(u["cost_usd"] > 0 for u in usage)
    assert task.usage.cost_usd == pytest.approx(sum(u["cost_usd"] for u in usage))
    assert "git.pushed" in [e.type for e in events]


async def test_overloaded_api_is_retried_with_backoff_and_the_conversation_resumes(store, hub, tmp_path):
    replies = [FIX[0], overloaded(), *FIX[1:]]
    _fake, task, events = await run_with_claude(store, hub, tmp_path, replies)
    assert task.status is TaskStatus.SUCCEEDED, task.error
    assert task.attempt == 2
    retry = next(e for e in events if e.type == "task.retry_scheduled")
    assert "overloaded" in retry.data["reason"].lower()
    # The second attempt went on from the stored conversation: the bash call ran once.
    calls = [e.data["id"] for e in events if e.type == "agent.tool_call"]
    assert calls == ["toolu_1", "toolu_2", "toolu_3"]


async def test_a_bad_api_key_fails_the_task_with_the_apis_message(store, hub, tmp_path):
    _fake, task, events = await run_with_claude(store, hub, tmp_path, [unauthorized()])
    assert task.status is TaskStatus.FAILED
    assert "401" in task.error and "invalid x-api-key" in task.error
    assert CLAUDE_KEY not in task.error and all(CLAUDE_KEY not in str(e.data) for e in events)


async def run_one(store, hub, runner, repo_url: str, prompt: str):
    """One task of alice's on ``runner``, to its end."""
    async with running_supervisor(store, hub, runner) as sup:
        alice = await store.upsert_user("alice")
        task, _ = await sup.submit(user_id=alice.id, repo_url=repo_url, prompt=prompt)
        await wait_status(hub, task.id, TaskStatus.SUCCEEDED, TaskStatus.FAILED)
    return await store.get_task(task.id)


def token_git_server(tmp_path, token: str) -> tuple[Path, GitHttpServer]:
    """acme/calc.git (the buggy project) served over smart HTTP to those with ``token``."""
    repos = tmp_path / "served"
    repos.mkdir()
    make_bare_repo(repos / "acme", "calc.git", branches={"main": BUGGY_PROJECT})
    return repos, GitHttpServer(repos, username="x-access-token", token=token)


async def test_push_with_a_token_over_smart_http_and_open_a_pull_request(store, hub, tmp_path):
    token = "ghp_testtoken0123456789"
    repos, git_server = token_git_server(tmp_path, token)
    github = FakeGitHubAPI(token)
    script = {
        "turns": [
            {
                "content": [
                    tool_use(
                        "e",
                        "str_replace_based_edit_tool",
                        command="str_replace",
                        path="calc.py",
                        old_str="a - b",
                        new_str="a + b",
                    )
                ]
            },
            {"content": [{"type": "text", "text": "Fixed add()."}]},
        ]
    }
    from daemon.agent.scripted_provider import ScriptedProvider

    async def token_for(user_id: int) -> str:
        return token

    async with trio.open_nursery() as nursery:
        git_url = await nursery.start(git_server.serve)
        api_url = await nursery.start(github.serve)
        settings = agent_settings(tmp_path, github_api=api_url, github_web_host="127.0.0.1")
        runner = AgentRunner(ScriptedProvider(script), settings, github_token=token_for)
        task = await run_one(store, hub, runner, f"{git_url}/acme/calc.git", "Fix add()")
        nursery.cancel_scope.cancel()
    events = await store.read_events(task.id)
    assert task.status is TaskStatus.SUCCEEDED, task.error
    (pr,) = github.pulls
    assert (pr["owner"], pr["repo"], pr["head"], pr["base"]) == ("acme", "calc", task.branch, "main")
    assert task.pr_url == pr["html_url"]
    assert [e.data for e in events if e.type == "git.pr_opened"] == [{"url": pr["html_url"]}]
    shown = subprocess.run(
        ["git", "show", f"{task.branch}:calc.py"],
        cwd=repos / "acme" / "calc.git",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "a + b" in shown
    workspace = tmp_path / "workspaces" / task.id
    assert token not in (workspace / ".git" / "config").read_text()
    assert all(token not in str(e.data) for e in events)


async def test_the_users_github_token_goes_to_github_only(store, hub, tmp_path):
    """A repository on another host (a typo-squat of github.com, say) never gets the token:
    here a server that wants it refuses the clone."""
    token = "ghp_testtoken0123456789"
    _repos, git_server = token_git_server(tmp_path, token)
    from daemon.agent.scripted_provider import ScriptedProvider

    async def token_for(user_id: int) -> str:
        return token

    async with trio.open_nursery() as nursery:
        git_url = await nursery.start(git_server.serve)
        settings = agent_settings(tmp_path)  # GitHub is github.com: 127.0.0.1 is not it
        runner = AgentRunner(ScriptedProvider({"turns": []}), settings, github_token=token_for)
        task = await run_one(store, hub, runner, f"{git_url}/acme/calc.git", "x")
        nursery.cancel_scope.cancel()
    assert task.status is TaskStatus.FAILED and "authentication failed" in task.error
