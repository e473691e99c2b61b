"""Iterating on review, end to end on the real daemon over real HTTP: a task opens a pull
request on the fake GitHub (its branch pushed over smart HTTP to a local bare repository);
reviewers request changes and a check fails; ``POST /api/tasks/{id}/review`` hands that to the
scripted model as the task's next user turn; the task pushes again to the same branch, and the
pull request is the same one (no second is opened)."""

from __future__ import annotations

import json

import pytest
import trio

from control.client import CommandRefused, ControlClient
from daemon.agent.scripted_provider import ScriptedProvider
from daemon.states import TaskStatus

from .agent_env import tool_use
from .fakes.git_http import git_out
from .fakes.phone import running_daemon
from .github_env import daemon_on_github
from .helpers import finished_after, wait_status

pytestmark = pytest.mark.slow

TOKEN = "ghp_reviewround0123456789"


def edit(id: str, old: str, new: str) -> dict:
    return {
        "content": [
            tool_use(
                id,
                "str_replace_based_edit_tool",
                command="str_replace",
                path="calc.py",
                old_str=old,
                new_str=new,
            )
        ]
    }


SCRIPT = {
    "turns": [
        edit("e1", "a - b", "a + b"),
        {"content": [{"type": "text", "text": "Fixed add()."}]},
        edit("e2", "def add(a, b):", "def add(a: int, b: int) -> int:"),
        {"content": [{"type": "text", "text": "Added the type hints the review asked for."}]},
    ]
}


async def test_a_review_round_pushes_to_the_same_branch_and_pull_request(tmp_path):
    async with daemon_on_github(tmp_path, ScriptedProvider(SCRIPT), TOKEN) as gh:
        server, github, bare = gh.server, gh.github, gh.bare
        hub = server.daemon.hub
        async with server.client(gh.token) as http:
            created = await http.post("/api/tasks", json={"repo_url": gh.repo_url, "prompt": "Fix add()"})
            task_id = created.json()["id"]
            with trio.fail_after(30):
                assert await wait_status(hub, task_id, TaskStatus.SUCCEEDED, TaskStatus.FAILED) is (
                    TaskStatus.SUCCEEDED
                )
            task = await server.store.get_task(task_id)
            (pr,) = github.pulls
            assert task.pr_url == pr["html_url"] and pr["head"] == task.branch

            nothing = await http.post(f"/api/tasks/{task_id}/review")
            assert nothing.status_code == 409
            assert "no review comments or failing checks" in nothing.text
            assert (await server.store.get_task(task_id)).last_seq == task.last_seq  # not woken

            first_commit = git_out(bare, "rev-parse", task.branch)
            pr["head_sha"] = first_commit
            github.add_review(
                "acme", "calc", 1, user="carol", state="CHANGES_REQUESTED", body="Add type hints."
            )
            github.add_review_comment(
                "acme", "calc", 1, user="carol", path="calc.py", line=1, body="Hints here."
            )
            github.add_check_run(
                "acme",
                "calc",
                first_commit,
                name="mypy",
                conclusion="failure",
                title="1 error",
                summary="add: untyped",
            )
            review = await http.post(f"/api/tasks/{task_id}/review")
            assert review.status_code == 202, review.text
            assert review.json()["task"]["status"] in ("queued", "running")
            assert await finished_after(hub, task_id, review.json()["event"]["seq"]) == "succeeded"
            messages = (await http.get(f"/api/tasks/{task_id}/messages")).json()["messages"]
        task = await server.store.get_task(task_id)
        events = await server.store.read_events(task_id)

    turns = [m["content"] for m in messages if m["role"] == "user"]
    said = json.dumps(turns)
    assert "acme/calc#1" in said and "carol (CHANGES_REQUESTED)" in said and "Add type hints." in said
    assert "calc.py:1" in said and "mypy (failure): 1 error" in said and "add: untyped" in said
    pushed = [e.data for e in events if e.type == "git.pushed"]
    assert [p["branch"] for p in pushed] == [task.branch, task.branch]
    assert git_out(bare, "rev-parse", task.branch) == pushed[-1]["commit"] != first_commit
    shown = git_out(bare, "show", f"{task.branch}:calc.py")
    assert "def add(a: int, b: int) -> int:" in shown and "a + b" in shown
    assert len(github.pulls) == 1 and task.pr_url == github.pulls[0]["html_url"]
    assert [r.method for r in github.requests if r.path.endswith("/pulls")] == ["POST"]  # one PR opened


async def test_a_task_without_a_pull_request_has_nothing_to_review(tmp_path):
    """The phone API answers 409, the control socket refuses with ``conflict``; neither wakes it."""
    async with running_daemon(tmp_path) as server:
        _, token = await server.user("alice")
        async with server.client(token) as http:
            task_id = (
                await http.post("/api/tasks", json={"repo_url": "file:///repo", "prompt": "p"})
            ).json()["id"]
            with trio.fail_after(10):
                await wait_status(server.daemon.hub, task_id, TaskStatus.SUCCEEDED)
            before = (await server.store.get_task(task_id)).last_seq
            refused = await http.post(f"/api/tasks/{task_id}/review")
            assert refused.status_code == 409 and "this task has no pull request" in refused.text
            assert (await http.post("/api/tasks/01m8bz0000000000000000000/review")).status_code == 404
        async with await ControlClient.connect(server.daemon.settings.control_socket_path) as ctl:
            with pytest.raises(CommandRefused) as by_operator:
                await ctl.call("tasks.review", id=task_id)
        assert by_operator.value.code == "conflict" and "no pull request" in str(by_operator.value)
        assert (await server.store.get_task(task_id)).last_seq == before
