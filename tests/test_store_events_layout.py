"""Schema v6: events in commit order behind an index on (task seqno, seq), carried over from v5.

A database written by an agentd before v6 keeps every event, in order and gap-free, with the
same last seq per task; appends go on from there.
"""

from __future__ import annotations

import apsw
import pytest

from daemon.store import NewEvent, SqliteStore
from daemon.store.schema import LATEST
from tests.helpers import sqlite_at_version

pytestmark = pytest.mark.sqlite_only("the SQLite schema")


def _v5_database(path, tasks: dict[str, int]) -> None:
    """A database at schema v5 holding ``tasks`` (id -> number of events), as v5 wrote them."""
    conn = sqlite_at_version(path, 5)
    with conn:
        conn.execute("INSERT INTO users (login, created_at, updated_at) VALUES ('alice', 0, 0)")
        # Ids out of creation order: the copy must follow the events' task, not the id's order.
        for task_id, count in tasks.items():
            conn.execute(
                "INSERT INTO tasks (id, user_id, repo_url, prompt, status, created_at, "
                "updated_at, last_seq) VALUES (?, 1, 'r', 'p', 'succeeded', 0, 0, ?)",
                (task_id, count),
            )
        for task_id, count in reversed(tasks.items()):
            conn.executemany(
                "INSERT INTO events (task_id, seq, ts, type, data) VALUES (?, ?, ?, ?, ?)",
                [(task_id, seq, float(seq), "agent.text", f'{{"n":{seq}}}') for seq in range(1, count + 1)],
            )
        # An event of no task could never be read: the copy leaves it behind.
        conn.execute("INSERT INTO events VALUES ('ghost', 1, 0, 'agent.text', '{}')")
    conn.close()


async def test_v6_carries_every_event_over_in_order(tmp_path):
    tasks = {"t-b": 700, "t-a": 3, "t-c": 1}
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _v5_database(data_dir / "agentd.db", tasks)
    store = await SqliteStore.open(data_dir)
    try:
        for task_id, count in tasks.items():
            events = await store.read_events(task_id, 0, 10_000)
            assert [e.seq for e in events] == list(range(1, count + 1))
            assert [e.data for e in events] == [{"n": seq} for seq in range(1, count + 1)]
            assert [e.ts for e in events] == [float(seq) for seq in range(1, count + 1)]
            assert (await store.get_task(task_id)).last_seq == count
            assert [e.seq for e in await store.read_events(task_id, count - 1, 5)] == [count]
        assert await store.read_events("ghost", 0, 10) == []
        # Appends go on after the carried-over events, merged or not.
        (appended,) = await store.append_events("t-a", [NewEvent("agent.text", {"n": 4})])
        assert appended.seq == 4
        assert (await store.get_task("t-a")).last_seq == 4
    finally:
        await store.aclose()
    conn = apsw.Connection(str(data_dir / "agentd.db"))
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 700 + 3 + 1 + 1
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # v7: the counter v5 kept on the task row is gone (the events say it).
        assert "last_seq" not in {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    finally:
        conn.close()


async def test_a_tasks_last_seq_is_its_last_event(store, alice):
    """Appends move no task row: a task's last seq is read from its events."""
    task, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    for i in range(5):
        await store.append_events(task.id, [NewEvent("agent.text", {"i": i})] * (i + 1))
    assert (await store.get_task(task.id)).last_seq == 2 + 15
    ((_, listed),) = await store.list_tasks(user_id=alice.id)
    assert listed.last_seq == 2 + 15


async def test_an_event_seq_is_unique_per_task(store, alice):
    task, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")

    def duplicate(conn) -> None:
        conn.execute(
            "INSERT INTO events (task_no, seq, ts, type, data) "
            "SELECT seqno, 1, 0, 'x', '{}' FROM tasks WHERE id = ?",
            (task.id,),
        )

    with pytest.raises(apsw.ConstraintError):
        await store._write(duplicate)
    assert [e.seq for e in await store.read_events(task.id)] == [1, 2]
