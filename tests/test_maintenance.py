"""Workspace cleanup policy: kept N days after the task ends, never while it may resume."""

from __future__ import annotations

import trio

from daemon.maintenance import collect_workspaces
from daemon.states import TaskStatus
from daemon.store import Transition

from .conftest import fake_wall

DAY = 86400


async def test_old_finished_and_orphan_workspaces_go_the_rest_stay(
    store, alice, tmp_path, autojump_clock, file_system_on_loop
):
    root = tmp_path / "workspaces"
    old, recent, running = [
        (await store.create_task(user_id=alice.id, repo_url="r", prompt=p))[0]
        for p in ("old", "recent", "running")
    ]
    for task in (old, recent, running):
        await store.transition(Transition(task.id, TaskStatus.RUNNING))
    await store.transition(Transition(old.id, TaskStatus.SUCCEEDED))
    await trio.sleep(8 * DAY)
    await store.transition(Transition(recent.id, TaskStatus.FAILED, reason="x"))
    for name in (old.id, recent.id, running.id, "orphan-dir"):
        (root / name / "src").mkdir(parents=True)
    with file_system_on_loop() as on_loop:  # thousands of workspaces: listing them may wait
        removed = await collect_workspaces(store, root, keep_days=7, now=fake_wall())
    assert on_loop == []
    assert sorted(removed) == sorted([old.id, "orphan-dir"])
    assert sorted(p.name for p in root.iterdir()) == sorted([recent.id, running.id])
