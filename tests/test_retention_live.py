"""Retention in a serving daemon: a live task's follower sees no gap while it runs again and
again; on SQLite the file gives the room back, and stays sound. Real daemon, real clock.

The tasks made "old" here are old by a retention age of a fraction of a second (``AGE_DAYS``):
the real clock runs, and everything finished before the run is due.
"""

from __future__ import annotations

import apsw
import pytest
import trio

from daemon.retention import run_retention
from daemon.states import TaskStatus
from daemon.store import NewEvent, SqliteStore, Transition, sqlite_space

from .fakes.phone import running_daemon, send_json
from .helpers import wait_status
from .test_control_cli import agentctl
from .test_ws_live import Pump, read_until_finished, submit

AGE_DAYS = 1e-9  # about 0.1 ms: whatever finished before the run
ROUNDS_MAX = 30


async def _finished_with_events(store, user_id: int, events: int, *, pad: int = 0) -> str:
    """A finished (cancelled) task with ``events`` events of ``pad`` bytes each besides its own.
    Never running: a serving daemon must not be admitting (it would claim it)."""
    task, _ = await store.create_task(user_id=user_id, repo_url="r", prompt="old")
    for start in range(0, events, 500):
        count = min(500, events - start)
        await store.append_events(
            task.id, [NewEvent("agent.text", {"i": start + i, "pad": "x" * pad}) for i in range(count)]
        )
    await store.append_message(task.id, "user", [{"type": "text", "text": "old"}])
    await store.transition(Transition(task.id, TaskStatus.CANCELLED, expect=TaskStatus.QUEUED))
    return task.id


@pytest.mark.slow
async def test_a_live_follower_sees_no_gap_while_retention_runs_again_and_again(tmp_path):
    pump = Pump(600)
    async with running_daemon(tmp_path, pump) as server:
        store = server.store
        user, token = await server.user("alice")
        task_id = await submit(server, token)
        await wait_status(server.daemon.hub, task_id, TaskStatus.RUNNING)
        server.daemon.supervisor.drain()  # the finished tasks made below are never claimed
        for _ in range(6):
            await _finished_with_events(store, user.id, 1200)
        held: list[int] = []
        compacted, rounds, longest = 0, 0, 0.0

        async def retain_until(done: trio.Event) -> None:
            nonlocal compacted, rounds, longest
            while not done.is_set() and rounds < ROUNDS_MAX:
                await _finished_with_events(store, user.id, 300)  # fresh work for every round
                report = await run_retention(store, AGE_DAYS)
                compacted += report.tasks_compacted
                rounds += 1
                longest = max(longest, report.longest_batch_s)

        followed = trio.Event()
        async with server.ws(token) as ws, trio.open_nursery() as nursery:
            await send_json(ws, {"type": "subscribe", "task_id": task_id, "after": 0})
            pump.go.set()
            nursery.start_soon(retain_until, followed)
            await read_until_finished(ws, held)
            followed.set()
        task = await store.get_task(task_id)
        assert held == list(range(1, task.last_seq + 1))  # consecutive, from the first
        assert task.last_seq > 600 and task.compacted_at is None  # it was running: untouched
        assert rounds >= 2 and compacted >= 6 + rounds - 1
        print(f"\nretention beside a live follower: {rounds} runs, {compacted} tasks compacted, "
              f"the longest batch {longest * 1000:.1f} ms")  # fmt: skip
        assert longest < 1.0


@pytest.mark.slow
@pytest.mark.sqlite_only("the file's size and PRAGMA integrity_check are SQLite's")
async def test_compact_gives_the_room_back_and_the_file_stays_sound(tmp_path):
    store = await SqliteStore.open(tmp_path / "data")
    try:
        user = await store.upsert_user("alice")
        tasks = [await _finished_with_events(store, user.id, 1000, pad=400) for _ in range(24)]
        # A task followed up again keeps its events: the file cannot shrink below them.
        await store.transition(Transition(tasks[0], TaskStatus.QUEUED))
        await trio.to_thread.run_sync(sqlite_space.checkpoint, store.path)
        full = store.path.stat().st_size
        report = await run_retention(store, AGE_DAYS)
        after = store.path.stat().st_size
        assert report.tasks_compacted == 23
        assert report.bytes_reclaimed > 0.8 * (full - after) > 0
        assert after < full * 0.15  # one task of 24 kept, plus the tables' own pages
        assert await store.reclaimable_bytes() == 0
        assert await store.integrity_check() == "ok"
        print(f"\ncompact: {full >> 20} MiB -> {after / 1048576:.1f} MiB, {report.bytes_reclaimed >> 20} MiB "
              f"given back in {report.batches} batches, the longest {report.longest_batch_s * 1000:.1f} ms, "
              f"{report.seconds:.2f} s in all")  # fmt: skip
    finally:
        await store.aclose()


def _auto_vacuum(path) -> int:
    conn = apsw.Connection(str(path))
    try:
        return int(conn.execute("PRAGMA auto_vacuum").fetchone()[0])
    finally:
        conn.close()


def _make_it_old(path) -> None:
    """The file as a database made before incremental vacuum was chosen."""
    conn = apsw.Connection(str(path))
    try:
        conn.execute("PRAGMA auto_vacuum = NONE")
        conn.execute("VACUUM")
    finally:
        conn.close()


@pytest.mark.sqlite_only("incremental vacuum is SQLite's")
async def test_an_older_database_is_converted_at_open_small_at_once_large_when_asked(tmp_path, monkeypatch):
    data = tmp_path / "data"
    store = await SqliteStore.open(data)
    await store.aclose()
    assert await trio.to_thread.run_sync(_auto_vacuum, store.path) == sqlite_space.INCREMENTAL  # new: at once
    await trio.to_thread.run_sync(_make_it_old, store.path)
    store = await SqliteStore.open(data)  # small: converted at open
    await store.aclose()
    assert await trio.to_thread.run_sync(_auto_vacuum, store.path) == sqlite_space.INCREMENTAL
    await trio.to_thread.run_sync(_make_it_old, store.path)
    monkeypatch.setattr(sqlite_space, "CONVERT_AT_OPEN_MAX_BYTES", 0)  # every file is "large"
    store = await SqliteStore.open(data)
    try:
        assert await trio.to_thread.run_sync(_auto_vacuum, store.path) == 0  # not without being asked
        assert await store.request_full_compaction() is True
    finally:
        await store.aclose()
    store = await SqliteStore.open(data)
    try:
        assert await trio.to_thread.run_sync(_auto_vacuum, store.path) == sqlite_space.INCREMENTAL
        assert await store.request_full_compaction() is False  # done, the request gone
        assert await store.integrity_check() == "ok"
    finally:
        await store.aclose()


async def test_agentctl_compact_prints_what_went_and_the_api_says_the_history_was_removed(tmp_path):
    async with running_daemon(tmp_path, retention_days=AGE_DAYS) as server:
        user, token = await server.user("alice")
        server.daemon.supervisor.drain()
        task_id = await _finished_with_events(server.store, user.id, 700)
        done = await agentctl("--socket", str(server.daemon.settings.control_socket_path), "compact")
        out = done.stdout.decode()
        assert done.returncode == 0, done.stderr
        assert "tasks compacted: 1 (history older than 1e-09 days)" in out
        assert "removed task_history: 70" in out and "space given back:" in out
        async with server.client(token) as http:
            task = (await http.get(f"/api/tasks/{task_id}")).json()
            spec = (await http.get("/openapi.json")).json()
            metrics = (await http.get("/metrics")).text
        assert task["compacted_at"] >= task["finished_at"] and task["status"] == "cancelled"
        assert 'agentd_retention_rows_removed_total{kind="task_history"} 70' in metrics
        assert (
            "retention removed its history"
            in spec["components"]["schemas"]["TaskOut"]["properties"]["compacted_at"]["description"]
        )
