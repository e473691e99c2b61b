"""A task's diff after it went on from a workspace re-created from its pushed branch: the whole
branch against the base the task first started from, not only the commits since the re-creation.

End to end on the real daemon over real HTTP (real git over smart HTTP, the fake GitHub API,
the scripted model): a task pushes commit A (``a.txt``) and opens its pull request; its
workspace is collected; the base branch moves on the remote (``main.txt``), so that "the
original base" and "the base now" differ; the task goes on (a follow-up, or a review round) and
pushes commit B (``b.txt``). The task's diff summary, its last ``git.pushed`` and
``GET /api/tasks/{id}/diff`` cover A and B, from the commit the task first cloned.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trio

from daemon.agent.loop import AgentRunner
from daemon.agent.scripted_provider import ScriptedProvider
from daemon.errors import PermanentError
from daemon.git import owned as owned_repo
from daemon.git.pushed import PushedBranch
from daemon.git.workspace import ClonePolicy, CloneRequest, prepare_workspace
from daemon.maintenance import collect_workspaces
from daemon.states import TaskStatus

from .agent_env import BUGGY_PROJECT, agent_settings, bare_repo, text, tool_use
from .fakes.git_http import GitHttpServer, git_out, make_bare_repo
from .fakes.github_api import FakeGitHubAPI
from .fakes.phone import running_daemon
from .helpers import wait_status

pytestmark = pytest.mark.slow

TOKEN = "ghp_restoreddiff0123456789"


def _write(id: str, path: str, body: str) -> dict:
    return {
        "content": [tool_use(id, "str_replace_based_edit_tool", command="create", path=path, file_text=body)]
    }


# By position in the conversation: the first run writes a.txt, the one that goes on b.txt.
SCRIPT = {
    "turns": [
        _write("a", "a.txt", "A\n"),
        {"content": [text("Wrote a.txt.")]},
        _write("b", "b.txt", "B\n"),
        {"content": [text("Wrote b.txt.")]},
    ]
}


def _push_to(tmp_path: Path, bare: Path, branch: str, name: str, *, new_branch: bool = False) -> str:
    """A commit by someone else adding ``name`` on ``branch`` of ``bare`` (with ``new_branch``:
    a new branch made from main); its id."""
    work = tmp_path / f"someone-{name}"
    start = [] if new_branch else ["-b", branch]
    subprocess.run(["git", "clone", "--quiet", *start, str(bare), str(work)], check=True)
    (work / name).write_text(f"{name}\n")
    ident = ["-c", "user.name=Someone", "-c", "user.email=someone@example.invalid"]
    steps = [["checkout", "--quiet", "-b", branch]] if new_branch else []
    steps += [["add", name], [*ident, "commit", "--quiet", "-m", name], ["push", "--quiet", "origin", branch]]
    for args in steps:
        subprocess.run(["git", *args], cwd=work, check=True)
    return git_out(work, "rev-parse", "HEAD")


async def _ended_after(hub, task_id: str, after: int) -> str:
    with trio.fail_after(60):
        async for event in hub.follow(task_id, after):
            if event.type == "task.finished":
                return event.data["status"]
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("goes_on", "branch_moved"),
    [("follow-up", False), ("follow-up", True), ("review", False)],
    ids=["follow_up", "follow_up_branch_moved", "review_round"],
)
async def test_after_a_restored_workspace_the_diff_is_the_whole_branch(tmp_path, goes_on, branch_moved):
    served = tmp_path / "served"
    bare = make_bare_repo(served / "acme", "calc.git", branches={"main": BUGGY_PROJECT})
    git_server = GitHttpServer(served, username="x-access-token", token=TOKEN)
    github = FakeGitHubAPI(TOKEN, web_base="http://127.0.0.1")

    async def token_for(user_id: int) -> str:
        return TOKEN

    async with trio.open_nursery() as nursery:
        git_url = await nursery.start(git_server.serve)
        api_url = await nursery.start(github.serve)
        github_at = {"github_api": api_url, "github_web_host": "127.0.0.1"}
        settings = agent_settings(tmp_path / "data", **github_at)
        runner = AgentRunner(ScriptedProvider(SCRIPT), settings, github_token=token_for)
        async with running_daemon(tmp_path, runner, **github_at) as server:
            store, hub = server.store, server.daemon.hub
            alice, token = await server.user("alice")
            await store.set_github_token(alice.id, server.daemon.secrets.encrypt(TOKEN))
            async with server.client(token) as http:
                created = await http.post(
                    "/api/tasks", json={"repo_url": f"{git_url}/acme/calc.git", "prompt": "Write a"}
                )
                task_id = created.json()["id"]
                with trio.fail_after(60):
                    status = await wait_status(hub, task_id, TaskStatus.SUCCEEDED, TaskStatus.FAILED)
                first = await store.get_task(task_id)
                assert status is TaskStatus.SUCCEEDED and first.pr_url, first.error
                assert first.diff["files"] == ["a.txt"]

                root = settings.workspace_root
                assert await collect_workspaces(store, root, keep_days=0, now=store.now() + 1) == [task_id]
                _push_to(tmp_path, bare, "main", "main.txt")  # the base moves on: not the task's
                if branch_moved:
                    _push_to(tmp_path, bare, first.branch, "c.txt")  # someone's commit on the branch

                if goes_on == "follow-up":
                    sent = await http.post(f"/api/tasks/{task_id}/messages", json={"text": "Now write b"})
                else:
                    (pr,) = github.pulls
                    pr["head_sha"] = first.diff["commit"]
                    github.add_review(
                        "acme", "calc", 1, user="carol", state="CHANGES_REQUESTED", body="Write b too."
                    )
                    sent = await http.post(f"/api/tasks/{task_id}/review")
                assert sent.status_code == 202, sent.text
                assert await _ended_after(hub, task_id, sent.json()["event"]["seq"]) == "succeeded"
                done = await store.get_task(task_id)
                shown = (await http.get(f"/api/tasks/{task_id}/diff")).json()
            events = await store.read_events(task_id)
        nursery.cancel_scope.cancel()

    mine = ["a.txt", "b.txt", *(["c.txt"] if branch_moved else [])]
    # The restore really happened: the workspace was re-created from the pushed branch.
    assert [e.data["restored_from"] for e in events if e.type == "workspace.reset"] == [first.diff["commit"]]
    first_base = next(e.data["commit"] for e in events if e.type == "workspace.ready")
    assert done.branch == first.branch and done.diff["commit"] == git_out(bare, "rev-parse", done.branch)
    assert sorted(done.diff["files"]) == mine and done.diff["files_total"] == len(mine)
    assert done.diff["lines_added"] == len(mine) and done.diff["lines_removed"] == 0
    pushed = [e.data for e in events if e.type == "git.pushed"]
    assert len(pushed) == 2 and pushed[-1]["commit"] == done.diff["commit"]
    assert sorted(pushed[-1]["files_changed"]) == mine and pushed[-1]["files_total"] == len(mine)
    # The patch the phone shows: the same span, from the commit the task first started from.
    assert (shown["base_commit"], shown["commit"]) == (first_base, done.diff["commit"])
    for name in mine:
        assert f"diff --git a/{name} b/{name}" in shown["patch"]
    assert "main.txt" not in shown["patch"] and "main.txt" not in done.diff["files"]


def _policy(tmp_path: Path) -> ClonePolicy:
    return ClonePolicy(
        root=tmp_path / "workspaces",
        identity=("agentd", "agentd@localhost"),
        quota_bytes=10**9,
        min_free_bytes=0,
        allow_local=True,
    )


async def test_a_restored_workspace_counts_from_the_tasks_first_base_and_keeps_it(tmp_path):
    """The restored clone's owned repository holds the first base, its record names it, and a
    workspace reused from that record keeps it."""
    bare = bare_repo(tmp_path)
    base = git_out(bare, "rev-parse", "main")
    pushed = _push_to(tmp_path, bare, "agentd/t1-write", "a.txt", new_branch=True)
    request = CloneRequest(
        "t1", str(bare), None, "write", known_branch="agentd/t1-write",
        pushed=PushedBranch("agentd/t1-write", pushed, base=base),
    )  # fmt: skip
    ws = await prepare_workspace(request, _policy(tmp_path))
    assert ws.restored is not None and ws.base_commit == pushed and ws.diff_base == base
    assert owned_repo.diff_base(owned_repo.read_state(ws.owned) or {}) == base
    files, added, _ = await owned_repo.numstat(ws.owned, ws.diff_base, pushed)
    assert (files, added) == (["a.txt"], 1)
    again = await prepare_workspace(request, _policy(tmp_path))
    assert again.diff_base == base and again.base_commit == pushed


@pytest.mark.parametrize("base", ["f" * 40, None], ids=["not_on_the_remote", "not_recorded"])
async def test_a_first_base_that_cannot_be_had_counts_from_the_pushed_commit(tmp_path, base):
    """The documented fallback: a first base the remote no longer has (its history rewritten),
    or a task pushed before the base was recorded, counts from where the workspace starts."""
    bare = bare_repo(tmp_path)
    pushed = _push_to(tmp_path, bare, "agentd/t2-write", "a.txt", new_branch=True)
    request = CloneRequest(
        "t2", str(bare), None, "write", known_branch="agentd/t2-write",
        pushed=PushedBranch("agentd/t2-write", pushed, base=base),
    )  # fmt: skip
    ws = await prepare_workspace(request, _policy(tmp_path))
    assert ws.restored is not None and ws.diff_base == ws.base_commit == pushed


async def test_a_recorded_base_that_is_not_a_commit_id_is_refused_before_any_git(tmp_path):
    request = CloneRequest(
        "t3", str(tmp_path / "nowhere.git"), None, "write", known_branch="agentd/t3-write",
        pushed=PushedBranch("agentd/t3-write", "a" * 40, base="--upload-pack=touch /tmp/x"),
    )  # fmt: skip
    with pytest.raises(PermanentError, match="invalid pushed base"):
        await prepare_workspace(request, _policy(tmp_path))
