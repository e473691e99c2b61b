"""A task going on after its last attempt: from its pushed branch after workspace gc, and the
true cause of an interrupted call (real git, real store, the scripted model)."""

from __future__ import annotations

import pytest

from daemon.agent.conversation import Interruption, interrupted_note
from daemon.agent.resume import interruption_of
from daemon.errors import PermanentError
from daemon.git.pushed import PushedBranch
from daemon.git.workspace import ClonePolicy, CloneRequest, prepare_workspace
from daemon.maintenance import collect_workspaces
from daemon.states import TaskStatus
from daemon.store import Event

from .agent_env import (
    WRITE_A_THEN_B,
    agent_supervisor,
    bare_repo,
    branch_file,
    someone_pushes,
    text,
    tool_use,
)
from .fakes.git_http import git_out
from .helpers import wait_status

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("remote_branch", ["as_pushed", "moved", "deleted"])
async def test_a_follow_up_after_workspace_gc_goes_on_from_the_pushed_branch(
    store, hub, tmp_path, remote_branch
):
    bare = bare_repo(tmp_path)
    root = tmp_path / "workspaces"
    async with agent_supervisor(store, hub, tmp_path, script=WRITE_A_THEN_B) as sup:
        alice = await store.upsert_user("alice")
        task, _ = await sup.submit(user_id=alice.id, repo_url=str(bare), prompt="Write a")
        await wait_status(hub, task.id, TaskStatus.SUCCEEDED, TaskStatus.FAILED)
        first = await store.get_task(task.id)
        assert first.status is TaskStatus.SUCCEEDED, first.error
        branch, commit = first.branch, first.diff["commit"]

        assert await collect_workspaces(store, root, keep_days=0, now=store.now() + 1) == [task.id]
        assert not (root / task.id).exists()
        someone = None
        if remote_branch == "moved":
            someone = someone_pushes(tmp_path, bare, branch, "c.txt", body="C\n")
        elif remote_branch == "deleted":
            git_out(bare, "branch", "-D", branch)

        await store.add_input(task.id, "Now write b")
        await sup.requeue(task.id, reason="follow-up", fresh_attempts=True, expect=TaskStatus.SUCCEEDED)
        async for event in hub.follow(task.id, first.last_seq):
            if event.type == "task.status" and event.data["status"] in ("succeeded", "failed"):
                break

    done = await store.get_task(task.id)
    assert done.status is TaskStatus.SUCCEEDED, done.error
    assert done.branch == branch and done.workspace_branch == branch  # the same branch, pushed again
    assert branch_file(bare, branch, "b.txt") == "B\n"
    parent = git_out(bare, "rev-parse", f"{done.diff['commit']}^")
    turns = await store.list_messages(task.id)
    follow_up = [b["text"] for b in turns[4]["content"]]
    assert follow_up[-1] == "Now write b"
    note = follow_up[0]
    assert note.startswith("[agentd] The workspace was removed")
    if remote_branch == "as_pushed":
        assert f"re-created from your pushed branch {branch} at commit {commit}" in note
        assert "Uncommitted files from before are gone" in note
        assert branch_file(bare, branch, "a.txt") == "A\n" and parent == commit  # the earlier commit kept
    elif remote_branch == "moved":
        assert f"now at commit {someone}, not at {commit}" in note
        assert branch_file(bare, branch, "c.txt") == "C\n" and parent == someone  # theirs kept too
        assert branch_file(bare, branch, "a.txt") == "A\n"
    else:
        assert f"your pushed branch {branch} is no longer on the remote" in note
        assert parent == git_out(bare, "rev-parse", "main")  # a fresh start from the base
    events = await store.read_events(task.id)
    reset = [e.data for e in events if e.type == "workspace.reset"]
    assert len(reset) == 1 and reset[0]["restored_from"] == commit


# -- the interrupted-call note says why the call has no result ---------------------------------

SLOW_THEN_DONE = {
    "turns": [
        {"content": [tool_use("slow", "bash", command="sleep 30")]},
        {"content": [text("The slow step was interrupted; not repeating it.")]},
    ]
}


async def _started(hub, task_id: str) -> int:
    """The seq of the task's first tool call's start (the call is running from then on)."""
    async for event in hub.follow(task_id):
        if event.type == "agent.tool_call":
            return event.seq
    raise AssertionError("unreachable")


async def _ended(hub, task_id: str, after: int) -> None:
    async for event in hub.follow(task_id, after):
        if event.type == "task.status" and event.data["status"] in ("succeeded", "failed"):
            return


async def _interrupted_result(store, task_id: str) -> dict:
    done = await store.get_task(task_id)
    assert done.status is TaskStatus.SUCCEEDED, done.error
    result = (await store.list_messages(task_id))[2]["content"][0]
    assert result["tool_use_id"] == "slow" and result["is_error"] is True
    return result


async def test_a_call_cut_by_a_restart_is_said_to_be_so(store, hub, tmp_path):
    bare = bare_repo(tmp_path)
    async with agent_supervisor(store, hub, tmp_path, script=SLOW_THEN_DONE) as sup:
        alice = await store.upsert_user("alice")
        task, _ = await sup.submit(user_id=alice.id, repo_url=str(bare), prompt="Run the slow step")
        seq = await _started(hub, task.id)
    # Left without shutting down, as a crash leaves it: the next daemon recovers the task.
    async with agent_supervisor(store, hub, tmp_path, script=SLOW_THEN_DONE):
        await _ended(hub, task.id, seq)
    result = await _interrupted_result(store, task.id)
    assert result["content"] == interrupted_note(Interruption.RESTART)
    assert "interrupted by a restart of agentd" in result["content"]


async def test_a_call_cut_by_a_cancel_is_said_to_be_so(store, hub, tmp_path):
    bare = bare_repo(tmp_path)
    async with agent_supervisor(store, hub, tmp_path, script=SLOW_THEN_DONE) as sup:
        alice = await store.upsert_user("alice")
        task, _ = await sup.submit(user_id=alice.id, repo_url=str(bare), prompt="Run the slow step")
        seq = await _started(hub, task.id)
        await sup.cancel(task.id)
        await wait_status(hub, task.id, TaskStatus.CANCELLED)
        await sup.requeue(task.id, reason="retry", fresh_attempts=True, expect=TaskStatus.CANCELLED)
        await _ended(hub, task.id, seq)
    result = await _interrupted_result(store, task.id)
    assert result["content"] == interrupted_note(Interruption.CANCEL)
    assert "interrupted when the task was cancelled" in result["content"]


def _status(seq: int, status: str, reason: str | None = None) -> Event:
    data = {"status": status, **({"reason": reason} if reason else {})}
    return Event("t", seq, 0.0, "task.status", data)


@pytest.mark.parametrize(
    ("ended", "cause"),
    [
        ([_status(3, "queued", "taken over from node n1")], Interruption.TAKEOVER),
        ([_status(3, "queued", "this node lost its lease")], Interruption.TAKEOVER),
        (
            [_status(3, "failed", "max_duration_exceeded"), _status(4, "queued", "retry")],
            Interruption.TIMEOUT,
        ),
        (
            [_status(3, "cancelled", "cancelled by request"), _status(4, "queued", "follow-up")],
            Interruption.CANCEL,
        ),
        ([_status(3, "queued", "recovered after restart")], Interruption.RESTART),
        ([_status(3, "queued", "daemon shutdown")], Interruption.RESTART),
        ([], Interruption.RESTART),  # an end never recorded: the daemon died
    ],
)
def test_the_cause_is_the_end_of_the_attempt_before(ended, cause):
    events = [_status(1, "queued"), _status(2, "running"), *ended, _status(9, "running")]
    assert interruption_of(events) is cause


@pytest.mark.parametrize(
    "pushed",
    [
        PushedBranch("agentd/x", "--upload-pack=touch /tmp/owned"),
        PushedBranch("agentd/x", "HEAD"),
        PushedBranch("--upload-pack=x", "0" * 40),
        PushedBranch("a..b", "0" * 40),
    ],
)
async def test_a_pushed_branch_or_commit_that_is_not_one_is_refused_before_any_git(tmp_path, pushed):
    """The record comes from agent output: only a valid branch name and a full commit id pass."""
    policy = ClonePolicy(tmp_path / "ws", ("t", "t@example.invalid"), 50_000_000, 0, allow_local=True)
    request = CloneRequest(
        "t1", str(bare_repo(tmp_path)), None, title="x", known_branch="agentd/x", pushed=pushed
    )
    with pytest.raises(PermanentError) as raised:
        await prepare_workspace(request, policy)
    assert raised.value.code == "invalid_branch"
    assert not (tmp_path / "ws").exists()
