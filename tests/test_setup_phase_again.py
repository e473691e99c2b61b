"""When the setup phase runs again: after a fresh clone (the workspace collected, then a
follow-up: what the setup installed went with the old workspace), and not on a later attempt in
the same workspace (a follow-up while it is kept, a restart in the middle of a tool call).
Real tasks (scripted model, local bare repo holding ``.agentd/setup.sh``) in the real sandbox."""

from __future__ import annotations

import pytest
import trio

from daemon.agent.tools.sandbox import probe_sandbox
from daemon.maintenance import collect_workspaces
from daemon.states import TaskStatus
from daemon.store import Event

from .agent_env import agent_supervisor, bare_repo, text, tool_use

pytestmark = pytest.mark.slow

# What it prints says which workspace it ran in: the file the task pushed is there or not.
SETUP = 'echo "setup ran"; ls a.txt 2>&1\n'
FILES = {"README.md": "# app\n", ".agentd/setup.sh": SETUP}


@pytest.fixture(autouse=True)
async def sandbox_usable():
    if not (await probe_sandbox()).usable:
        pytest.skip("bubblewrap is not usable here")


def _setups(events: list[Event], after: int = 0, upto: float = float("inf")) -> list[str]:
    """The output of each setup run between seqs ``after`` (excluded) and ``upto``, in order."""
    runs: list[str] = []
    for e in events:
        if not after < e.seq <= upto:
            continue
        if e.type == "setup.started":
            runs.append("")
        elif e.type == "setup.output":
            runs[-1] += e.data["text"]
    return runs


async def _ended_after(hub, task_id: str, after: int) -> None:
    with trio.fail_after(60):
        async for event in hub.follow(task_id, after):
            if event.type == "task.status" and event.data["status"] in ("succeeded", "failed"):
                return


WRITE_A = tool_use("a", "str_replace_based_edit_tool", command="create", path="a.txt", file_text="A\n")
SCRIPT = {
    "turns": [
        {"content": [WRITE_A]},
        {"content": [text("Wrote a.txt.")]},
        {"content": [text("Nothing to change.")]},  # the follow-up while the workspace is kept
        {"content": [text("Still nothing to change.")]},  # the follow-up after it was collected
    ]
}


async def test_the_setup_runs_again_after_a_fresh_clone_and_not_in_the_same_workspace(store, hub, tmp_path):
    bare = bare_repo(tmp_path, FILES)
    root = tmp_path / "workspaces"
    async with agent_supervisor(store, hub, tmp_path, script=SCRIPT) as sup:
        alice = await store.upsert_user("alice")
        task, _ = await sup.submit(user_id=alice.id, repo_url=str(bare), prompt="Write a")
        await _ended_after(hub, task.id, 0)
        first = await store.get_task(task.id)
        assert first.status is TaskStatus.SUCCEEDED and first.diff, first.error

        # A follow-up in the workspace it still has: no setup.
        await store.add_input(task.id, "Anything else?")
        await sup.requeue(task.id, reason="follow-up", fresh_attempts=True, expect=TaskStatus.SUCCEEDED)
        await _ended_after(hub, task.id, first.last_seq)
        kept = await store.get_task(task.id)
        assert kept.status is TaskStatus.SUCCEEDED, kept.error

        # Collected, then a follow-up: a fresh clone of the pushed branch, set up again.
        assert await collect_workspaces(store, root, keep_days=0, now=store.now() + 1) == [task.id]
        await store.add_input(task.id, "And now?")
        await sup.requeue(task.id, reason="follow-up", fresh_attempts=True, expect=TaskStatus.SUCCEEDED)
        await _ended_after(hub, task.id, kept.last_seq)
    done = await store.get_task(task.id)
    assert done.status is TaskStatus.SUCCEEDED, done.error

    events = await store.read_events(task.id)
    (first_run,) = _setups(events, upto=first.last_seq)
    assert "setup ran" in first_run and "No such file" in first_run  # a clone of main: no a.txt yet
    assert _setups(events, first.last_seq, kept.last_seq) == []  # the same workspace: not again
    (again,) = _setups(events, kept.last_seq)
    assert "setup ran" in again and "a.txt" in again and "No such file" not in again  # the pushed branch
    kinds = [e.type for e in events if e.seq > kept.last_seq]
    assert kinds.index("workspace.reset") < kinds.index("setup.started") < kinds.index("setup.finished")
    assert kinds.index("setup.finished") < kinds.index("agent.text")  # before the model's turn


SLOW_THEN_DONE = {
    "turns": [
        {"content": [tool_use("slow", "bash", command="sleep 30")]},
        {"content": [text("The slow step was interrupted; not repeating it.")]},
    ]
}


async def test_a_restart_in_the_same_workspace_does_not_run_the_setup_again(store, hub, tmp_path):
    bare = bare_repo(tmp_path, FILES)
    async with agent_supervisor(store, hub, tmp_path, script=SLOW_THEN_DONE) as sup:
        alice = await store.upsert_user("alice")
        task, _ = await sup.submit(user_id=alice.id, repo_url=str(bare), prompt="Run the slow step")
        with trio.fail_after(60):
            async for event in hub.follow(task.id):
                if event.type == "agent.tool_call":
                    break
    # Left without shutting down, as a crash leaves it: the next daemon goes on in the same
    # workspace (the model was reached: its turn is in the task's usage).
    assert (await store.get_task(task.id)).usage.output_tokens > 0
    async with agent_supervisor(store, hub, tmp_path, script=SLOW_THEN_DONE):
        await _ended_after(hub, task.id, event.seq)
    done = await store.get_task(task.id)
    assert done.status is TaskStatus.SUCCEEDED and done.attempt == 2, done.error
    events = await store.read_events(task.id)
    assert len(_setups(events)) == 1 and "setup ran" in _setups(events)[0]
    assert [e.type for e in events].count("workspace.reset") == 0
    running = [e for e in events if e.type == "task.status" and e.data["status"] == "running"]
    assert len(running) == 2
    assert not [e for e in events if e.seq > running[1].seq and e.type.startswith("setup.")]
