"""The PostgreSQL store where it differs from SQLite: several stores ("nodes") on one database.

The shared behaviour (seq, transitions, idempotency, replay-then-live, the supervisor) runs on
both backends through tests/backends.py; here is what only several writers can show. Each test
gets a fresh database on the session's server (tests/pg.py); without one they are skipped.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
import trio

psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL store needs psycopg[binary]")
pytest.importorskip("psycopg_pool", reason="the PostgreSQL store needs psycopg-pool")

from daemon.errors import ConfigError, InvalidTransition, NotFound, PermanentError
from daemon.events import EventHub
from daemon.states import TaskStatus
from daemon.store import NewEvent, SqliteStore, Transition, open_store
from daemon.store.postgres import PostgresStore, StoreUnavailable, redact
from daemon.store.postgres_schema import MIGRATIONS
from daemon.store.schema import LATEST, MIGRATIONS as SHARED_MIGRATIONS
from daemon.supervisor import Backoff

from .conftest import fake_wall
from .helpers import running_supervisor, submit, wait_status
from .runners import Hang, SucceedAfter


async def open_nodes(dsn: str, n: int = 2) -> list[PostgresStore]:
    stores = []
    for _ in range(n):
        store = await PostgresStore.open(dsn)
        store.now = fake_wall
        stores.append(store)
    return stores


async def close_all(stores: list[PostgresStore]) -> None:
    for store in stores:
        await store.aclose()


async def test_the_same_versions_are_applied_once_even_by_nodes_starting_together(pg_dsn):
    assert [(v, d) for v, d, _ in MIGRATIONS] == [(v, d) for v, d, _ in SHARED_MIGRATIONS]
    stores: list[PostgresStore] = []

    async def start() -> None:
        stores.append(await PostgresStore.open(pg_dsn))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(start)
    await close_all(stores)
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT version, description FROM schema_migrations ORDER BY version").fetchall()
        assert rows == [(v, d) for v, d, _ in SHARED_MIGRATIONS]
        conn.execute("INSERT INTO schema_migrations VALUES (%s, 'from the future', 0)", (LATEST + 1,))
    with pytest.raises(RuntimeError, match="newer than this agentd"):
        await PostgresStore.open(pg_dsn)


async def test_two_nodes_appending_to_one_task_stay_gap_free(pg_dsn):
    a, b = await open_nodes(pg_dsn)
    alice = await a.upsert_user("alice")
    task, _ = await a.create_task(user_id=alice.id, repo_url="r", prompt="p")
    published: dict[str, list[int]] = {"a": [], "b": []}
    a.add_listener(lambda events: published["a"].extend(e.seq for e in events))
    b.add_listener(lambda events: published["b"].extend(e.seq for e in events))

    async def append_many(store: PostgresStore, n: int, size: int) -> None:
        for i in range(n):
            await store.append_events(task.id, [NewEvent("agent.text", {"i": i})] * size)

    async with trio.open_nursery() as nursery:
        for size in (1, 2, 3):
            nursery.start_soon(append_many, a, 30, size)
            nursery.start_soon(append_many, b, 30, size)
    total = 2 + 2 * 30 * (1 + 2 + 3)
    events = await b.read_events(task.id, 0, 10_000)
    assert [e.seq for e in events] == list(range(1, total + 1))
    assert (await a.get_task(task.id)).last_seq == total
    # Each node published exactly its own commits, in seq order; together, all of them.
    for seqs in published.values():
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    assert sorted(published["a"] + published["b"]) == list(range(3, total + 1))
    await close_all([a, b])


# One OS process appending to a task from four Trio tasks: run twice at once, as two daemons.
_APPENDER = """
import os, sys, trio
from daemon.store import NewEvent
from daemon.store.postgres import PostgresStore

async def main(dsn, task_id, n):
    store = await PostgresStore.open(dsn)
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            async def append():
                for i in range(n):
                    batch = [NewEvent("agent.text", {"pid": os.getpid()})] * (1 + i % 3)
                    await store.append_events(task_id, batch)
            nursery.start_soon(append)
    await store.aclose()

trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
"""


@pytest.mark.slow
async def test_two_processes_appending_to_one_task_stay_gap_free(pg_dsn):
    (store,) = await open_nodes(pg_dsn, 1)
    alice = await store.upsert_user("alice")
    task, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    # Hold the task row until both processes wait for it, so that their appends really race
    # instead of one process finishing before the other has started.
    holder = await trio.to_thread.run_sync(psycopg.connect, pg_dsn)
    await trio.to_thread.run_sync(holder.execute, "SELECT 1 FROM tasks WHERE id = %s FOR UPDATE", (task.id,))
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(trio.run_process, [sys.executable, "-c", _APPENDER, pg_dsn, task.id, "30"])
        watcher = await trio.to_thread.run_sync(lambda: psycopg.connect(pg_dsn, autocommit=True))
        with watcher:
            query = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            )
            # Another process's progress: there is nothing to wait on but polling.
            while await trio.to_thread.run_sync(lambda: watcher.execute(query).fetchone()[0]) < 2:  # noqa: ASYNC110
                await trio.sleep(0.02)
        await trio.to_thread.run_sync(holder.commit)
    holder.close()
    total = 2 + 2 * 4 * (10 * (1 + 2 + 3))
    events = await store.read_events(task.id, 0, 10_000)
    assert [e.seq for e in events] == list(range(1, total + 1))
    assert (await store.get_task(task.id)).last_seq == total
    writers = [e.data["pid"] for e in events[2:]]
    switches = sum(1 for x, y in itertools.pairwise(writers) if x != y)
    assert switches > 10, "the two processes did not interleave"
    await store.aclose()


async def test_transition_races_between_two_nodes_have_exactly_one_winner(pg_dsn):
    a, b = await open_nodes(pg_dsn)
    alice = await a.upsert_user("alice")
    tasks = [(await a.create_task(user_id=alice.id, repo_url="r", prompt="p"))[0] for _ in range(20)]
    outcomes: dict[str, list[str]] = {task.id: [] for task in tasks}

    async def claim(store: PostgresStore, name: str, task_id: str) -> None:
        try:
            await store.transition(
                Transition(task_id, TaskStatus.RUNNING, expect=TaskStatus.QUEUED, attempt_delta=1)
            )
            outcomes[task_id].append(name)
        except InvalidTransition:
            pass

    async with trio.open_nursery() as nursery:
        for task in tasks:
            nursery.start_soon(claim, a, "a", task.id)
            nursery.start_soon(claim, b, "b", task.id)
    for task in tasks:
        assert len(outcomes[task.id]) == 1
        stored = await b.get_task(task.id)
        assert stored.status is TaskStatus.RUNNING and stored.attempt == 1
        statuses = [e.data["status"] for e in await a.read_events(task.id) if e.type == "task.status"]
        assert statuses == ["queued", "running"]
    await close_all([a, b])


async def test_one_idempotency_key_from_two_nodes_makes_one_task(pg_dsn):
    a, b = await open_nodes(pg_dsn)
    alice = await a.upsert_user("alice")
    results = []

    async def create(store: PostgresStore) -> None:
        results.append(
            await store.create_task(user_id=alice.id, repo_url="r", prompt="p", idempotency_key="k")
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(create, a)
        nursery.start_soon(create, b)
    assert sorted(created for _, created in results) == [False, True]
    assert results[0][0].id == results[1][0].id
    assert len(await a.list_tasks()) == 1
    await close_all([a, b])


async def test_each_user_message_is_taken_by_exactly_one_node(pg_dsn):
    a, b = await open_nodes(pg_dsn)
    alice = await a.upsert_user("alice")
    task, _ = await a.create_task(user_id=alice.id, repo_url="r", prompt="p")
    for i in range(50):
        await (a if i % 2 else b).add_input(task.id, f"m{i}")
    taken: list[str] = []

    async def take(store: PostgresStore) -> None:
        for _ in range(10):
            taken.extend(await store.take_inputs(task.id))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, a)
        nursery.start_soon(take, b)
    assert sorted(taken) == sorted(f"m{i}" for i in range(50))
    assert await a.pending_inputs(task.id) == 0
    await close_all([a, b])


async def test_a_second_node_recovers_the_tasks_of_a_stopped_one(pg_dsn, autojump_clock):
    (first,) = await open_nodes(pg_dsn, 1)
    hub = EventHub(first)
    alice = await first.upsert_user("alice")
    hang = Hang()
    async with running_supervisor(first, hub, hang) as sup:
        stuck = await submit(sup, alice, "stuck")
        await hang.wait_until(lambda: hang.active == 1)
    await first.aclose()  # gone without a drain, as after kill -9: the task is still running

    (second,) = await open_nodes(pg_dsn, 1)
    hub = EventHub(second)
    async with running_supervisor(second, hub, SucceedAfter(1), backoff=Backoff(1, 1, 5)):
        await wait_status(hub, stuck.id, TaskStatus.SUCCEEDED)
    events = await second.read_events(stuck.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    statuses = [e.data["status"] for e in events if e.type == "task.status"]
    assert statuses == ["queued", "running", "queued", "running", "succeeded"]
    await second.aclose()


async def test_maintenance_says_what_postgres_does_differently(pg_dsn, tmp_path):
    (store,) = await open_nodes(pg_dsn, 1)
    assert await store.integrity_check() == "ok"
    assert store.size_bytes() > 0
    assert store.path.startswith("postgresql://postgres@127.0.0.1:")
    with pytest.raises(PermanentError, match="pg_dump"):
        await store.backup(tmp_path / "backup.db")
    assert not (tmp_path / "backup.db").exists()
    with pytest.raises(NotFound):
        await store.append_events("missing", [NewEvent("x")])
    await store.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await store.get_task("anything")


async def test_the_users_and_conversation_round_trip(pg_dsn):
    (store,) = await open_nodes(pg_dsn, 1)
    alice = await store.upsert_user("alice", github_id=7, name="Alice")
    again = await store.upsert_user("alice", is_operator=True)
    assert again.id == alice.id and again.github_id == 7 and again.name == "Alice" and again.is_operator
    assert (await store.upsert_user("alice")).is_operator  # None leaves the flag as it was
    await store.set_github_token(alice.id, b"\x00secret")
    assert await store.github_token_enc(alice.id) == b"\x00secret"
    await store.add_token(alice.id, "h1", expires_at=fake_wall() + 60)
    assert (await store.user_by_token_hash("h1")).login == "alice"
    assert await store.revoke_user("alice") == 1
    assert await store.user_by_token_hash("h1") is None
    task, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p", budget={"turns": 3})
    assert [
        await store.append_message(task.id, r, [{"type": "text", "text": r}]) for r in ("user", "assistant")
    ] == [0, 1]
    await store.append_message(task.id, "assistant", "x", stop_reason="max_tokens")
    assert (await store.list_messages(task.id))[2] == {
        "role": "assistant",
        "content": "x",
        "stop_reason": "max_tokens",
    }
    await store.start_tool_call(task.id, "t1", "bash", {"cmd": "ls"})
    await store.start_tool_call(task.id, "t1", "bash", {"cmd": "ls"})  # a replay is ignored
    await store.finish_tool_call(task.id, "t1", "out\x00put", False)  # PostgreSQL TEXT has no NUL
    assert await store.list_tool_calls(task.id) == [
        {
            "id": "t1",
            "name": "bash",
            "input": {"cmd": "ls"},
            "status": "done",
            "output": "out\ufffdput",
            "is_error": False,
        }
    ]
    updated = await store.update_task(task.id, branch="agentd/x", diff={"files": 1})
    assert updated.branch == "agentd/x" and updated.diff == {"files": 1} and updated.budget == {"turns": 3}
    page = await store.list_tasks(user_id=alice.id, statuses=[TaskStatus.QUEUED])
    assert [t.id for _, t in page] == [task.id]
    assert await store.count_by_status() == {"queued": 1}
    await store.aclose()


async def test_open_store_chooses_the_backend_by_url(pg_dsn, tmp_path):
    store = await open_store(tmp_path / "a", None)
    assert isinstance(store, SqliteStore)
    await store.aclose()
    store = await open_store(tmp_path / "b", pg_dsn)
    assert isinstance(store, PostgresStore)
    await store.aclose()
    with pytest.raises(ConfigError, match="mysql"):
        await open_store(tmp_path / "c", "mysql://db/agentd")


async def test_an_unreachable_server_is_a_clear_startup_error(tmp_path):
    dsn = "postgresql://agentd:hunter2@127.0.0.1:1/agentd"
    with pytest.raises(StoreUnavailable, match=r"postgresql://agentd@127.0.0.1:1/agentd") as info:
        await open_store(Path(tmp_path), dsn)
    assert "hunter2" not in str(info.value) and "hunter2" not in redact(dsn)
