"""Delivery when a task's workspace is made again from its pushed branch (real git over smart
HTTP, the fake GitHub API, the real store, supervisor and agent runner, the scripted model).

The gap this closes: a push that succeeded, then a pull request that did not open (GitHub
answered 502 until the attempts ran out), then the workspace collected; the task goes on (a
retry, a follow-up) with nothing new to push, and its pull request must still open, once.
"""

from __future__ import annotations

import pytest
import trio

from daemon.agent.loop import AgentRunner
from daemon.agent.scripted_provider import ScriptedProvider
from daemon.maintenance import collect_workspaces
from daemon.states import TaskStatus
from daemon.supervisor import Backoff

from .agent_env import BUGGY_PROJECT, FIX_CALC_EDIT, agent_settings, text
from .fakes.git_http import GitHttpServer, git_out, make_bare_repo
from .fakes.github_api import FakeGitHubAPI
from .helpers import running_supervisor

pytestmark = pytest.mark.slow

TOKEN = "ghp_restoreddelivery0123456789"
ATTEMPTS = 3

# By position in the conversation: the fix, its summary, then whatever the model says once the
# task goes on (it is told of the re-made workspace, or gets the follow-up): no change.
SCRIPT = {
    "turns": [
        {"content": [FIX_CALC_EDIT]},
        {"content": [text("Fixed add().")]},
        {"content": [text("Everything is already pushed; nothing more to do.")]},
    ]
}


async def _token_for(user_id: int) -> str:
    return TOKEN


async def _ended_after(hub, task_id: str, after: int) -> None:
    with trio.fail_after(60):
        async for event in hub.follow(task_id, after):
            if event.type == "task.status" and event.data["status"] in ("succeeded", "failed"):
                return


async def _run(store, hub, tmp_path, github: FakeGitHubAPI, *, then, goes_on: str):
    """A task that fixes add() on a GitHub-like remote, to its end; ``then(task)`` (after its
    workspace was collected); then the task goes on (``goes_on``: "retry" or "follow-up") to its
    end. Returns the task as it ended the first time, and as it ends."""
    served = tmp_path / "served"
    make_bare_repo(served / "acme", "calc.git", branches={"main": BUGGY_PROJECT})
    git_server = GitHttpServer(served, username="x-access-token", token=TOKEN)
    async with trio.open_nursery() as nursery:
        git_url = await nursery.start(git_server.serve)
        api_url = await nursery.start(github.serve)
        settings = agent_settings(tmp_path, github_api=api_url, github_web_host="127.0.0.1")
        runner = AgentRunner(ScriptedProvider(SCRIPT), settings, github_token=_token_for)
        backoff = Backoff(0.01, 0.05, ATTEMPTS)
        async with running_supervisor(store, hub, runner, backoff=backoff) as sup:
            alice = await store.upsert_user("alice")
            task, _ = await sup.submit(
                user_id=alice.id, repo_url=f"{git_url}/acme/calc.git", prompt="Fix add()"
            )
            await _ended_after(hub, task.id, 0)
            first = await store.get_task(task.id)
            collected = await collect_workspaces(
                store, settings.workspace_root, keep_days=0, now=store.now() + 1
            )
            assert collected == [task.id]
            then(first)
            if goes_on == "follow-up":
                await store.add_input(task.id, "Anything else to do?")
            await sup.requeue(task.id, reason=goes_on, fresh_attempts=True, expect=first.status)
            await _ended_after(hub, task.id, first.last_seq)
        nursery.cancel_scope.cancel()
    return first, await store.get_task(task.id), served / "acme" / "calc.git"


def _pulls_posted(github: FakeGitHubAPI) -> int:
    return sum(1 for r in github.requests if r.method == "POST" and r.path.endswith("/pulls"))


@pytest.mark.parametrize("goes_on", ["retry", "follow-up"])
@pytest.mark.parametrize("github_made_it", [False, True], ids=["not_opened", "reply_lost"])
async def test_a_pushed_branch_without_its_pull_request_gets_it_when_nothing_new_is_pushed(
    store, hub, tmp_path, goes_on, github_made_it
):
    github = FakeGitHubAPI(TOKEN, web_base="http://127.0.0.1")
    github.fail_with(502, times=ATTEMPTS)  # every attempt's pull request: the task fails

    def pushed_but_no_pull_request(first) -> None:
        assert first.status is TaskStatus.FAILED and "GitHub API error 502" in (first.error or ""), (
            first.error
        )
        assert first.pr_url is None and first.branch and first.diff["commit"]
        if github_made_it:  # GitHub opened it, but its answer never came back
            github.add_pull("acme", "calc", head=first.branch, base="main", title="Fix add()")

    first, done, bare = await _run(
        store, hub, tmp_path, github, then=pushed_but_no_pull_request, goes_on=goes_on
    )

    assert done.status is TaskStatus.SUCCEEDED, done.error
    assert done.reason is None  # not "no changes": the task's work reached its pull request now
    (pr,) = github.pulls  # one pull request, whether GitHub had made it already or not
    assert done.pr_url == pr["html_url"] and pr["head"] == first.branch and pr["base"] == "main"
    assert _pulls_posted(github) == ATTEMPTS + 1
    # The branch is as the first attempt pushed it, and that push is announced once.
    assert done.branch == first.branch and done.diff == first.diff
    assert git_out(bare, "rev-parse", first.branch) == first.diff["commit"]
    events = await store.read_events(done.id)
    assert [e.data["commit"] for e in events if e.type == "git.pushed"] == [first.diff["commit"]]
    assert [e.data["url"] for e in events if e.type == "git.pr_opened"] == [pr["html_url"]]


async def test_a_follow_up_that_changes_nothing_keeps_the_pull_request(store, hub, tmp_path):
    """Nothing is pushed nor opened again: the task succeeds with "no changes", its PR kept."""
    github = FakeGitHubAPI(TOKEN, web_base="http://127.0.0.1")

    def opened(first) -> None:
        assert first.status is TaskStatus.SUCCEEDED and first.pr_url, first.error

    first, done, _ = await _run(store, hub, tmp_path, github, then=opened, goes_on="follow-up")

    assert done.status is TaskStatus.SUCCEEDED and done.reason == "no changes", done.error
    assert done.pr_url == first.pr_url and len(github.pulls) == 1 and _pulls_posted(github) == 1
    assert done.diff == first.diff


async def test_a_pushed_branch_deleted_since_gets_no_pull_request(store, hub, tmp_path):
    """The record says pushed, the remote no longer has the branch: nothing to open a PR from."""
    github = FakeGitHubAPI(TOKEN, web_base="http://127.0.0.1")
    github.fail_with(502, times=ATTEMPTS)

    def deleted(first) -> None:
        assert first.status is TaskStatus.FAILED and first.pr_url is None, first.error
        git_out(tmp_path / "served" / "acme" / "calc.git", "branch", "-D", first.branch)

    first, done, _ = await _run(store, hub, tmp_path, github, then=deleted, goes_on="retry")

    assert done.status is TaskStatus.SUCCEEDED and done.reason == "no changes", done.error
    assert done.pr_url is None and github.pulls == [] and _pulls_posted(github) == ATTEMPTS
