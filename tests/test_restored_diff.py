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

from pathlib import Path

import pytest
import trio

from daemon.agent.scripted_provider import ScriptedProvider
from daemon.errors import PermanentError
from daemon.git import owned as owned_repo
from daemon.git.pushed import PushedBranch
from daemon.git.workspace import ClonePolicy, CloneRequest, prepare_workspace
from daemon.maintenance import collect_workspaces
from daemon.states import TaskStatus

from .agent_env import WRITE_A_THEN_B, bare_repo, someone_pushes
from .fakes.git_http import git_out
from .github_env import daemon_on_github
from .helpers import finished_after, wait_status

pytestmark = pytest.mark.slow

TOKEN = "ghp_restoreddiff0123456789"


@pytest.mark.parametrize(
    ("goes_on", "branch_moved"),
    [("follow-up", False), ("follow-up", True), ("review", False)],
    ids=["follow_up", "follow_up_branch_moved", "review_round"],
)
async def test_after_a_restored_workspace_the_diff_is_the_whole_branch(tmp_path, goes_on, branch_moved):
    async with daemon_on_github(tmp_path, ScriptedProvider(WRITE_A_THEN_B), TOKEN) as gh:
        server, github, bare, settings = gh.server, gh.github, gh.bare, gh.settings
        store, hub = server.store, server.daemon.hub
        async with server.client(gh.token) as http:
            created = await http.post("/api/tasks", json={"repo_url": gh.repo_url, "prompt": "Write a"})
            task_id = created.json()["id"]
            with trio.fail_after(60):
                status = await wait_status(hub, task_id, TaskStatus.SUCCEEDED, TaskStatus.FAILED)
            first = await store.get_task(task_id)
            assert status is TaskStatus.SUCCEEDED and first.pr_url, first.error
            assert first.diff["files"] == ["a.txt"]

            root = settings.workspace_root
            assert await collect_workspaces(store, root, keep_days=0, now=store.now() + 1) == [task_id]
            someone_pushes(tmp_path, bare, "main", "main.txt")  # the base moves on: not the task's
            if branch_moved:
                someone_pushes(tmp_path, bare, first.branch, "c.txt")  # someone's commit on the branch

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
            assert await finished_after(hub, task_id, sent.json()["event"]["seq"]) == "succeeded"
            done = await store.get_task(task_id)
            shown = (await http.get(f"/api/tasks/{task_id}/diff")).json()
        events = await store.read_events(task_id)

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


def _restoring(task_id: str, repo: str, pushed: str, base: str | None) -> CloneRequest:
    """The clone request of task ``task_id``'s workspace re-made from its pushed branch
    ``agentd/<task_id>-write`` at ``pushed``, the task's first base recorded as ``base``."""
    branch = f"agentd/{task_id}-write"
    return CloneRequest(
        task_id, repo, None, "write", known_branch=branch, pushed=PushedBranch(branch, pushed, base=base)
    )


async def test_a_restored_workspace_counts_from_the_tasks_first_base_and_keeps_it(tmp_path):
    """The restored clone's owned repository holds the first base, its record names it, and a
    workspace reused from that record keeps it."""
    bare = bare_repo(tmp_path)
    base = git_out(bare, "rev-parse", "main")
    pushed = someone_pushes(tmp_path, bare, "agentd/t1-write", "a.txt", new_branch=True)
    request = _restoring("t1", str(bare), pushed, base)
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
    pushed = someone_pushes(tmp_path, bare, "agentd/t2-write", "a.txt", new_branch=True)
    request = _restoring("t2", str(bare), pushed, base)
    ws = await prepare_workspace(request, _policy(tmp_path))
    assert ws.restored is not None and ws.diff_base == ws.base_commit == pushed


async def test_a_recorded_base_that_is_not_a_commit_id_is_refused_before_any_git(tmp_path):
    request = _restoring("t3", str(tmp_path / "nowhere.git"), "a" * 40, "--upload-pack=touch /tmp/x")
    with pytest.raises(PermanentError, match="invalid pushed base"):
        await prepare_workspace(request, _policy(tmp_path))
