"""The store interface: ``StoreBase`` holds every shared method once; backends add only runners.

What the methods do is specified in test_store_events.py and test_supervisor.py, on both
backends. Here: that the backends really are the one interface (nothing public of their own
beyond opening, closing and maintenance), that each queries module offers what the interface
calls with the same parameters, what both backends do with a broken event listener, and that
the task a write returns is the one a read gives back.
"""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest

from daemon.states import TaskStatus
from daemon.store import SqliteStore, Store, StoreBase, Task, open_store
from daemon.store import base, postgres_queries, sqlite_queries

# Public names a backend may define itself: opening, closing, maintenance, metrics.
BACKEND_OWN = {"open", "aclose", "backup", "integrity_check", "size_bytes", "observe_writes"}
# Methods a backend overrides because its body really differs (each calls super(), or, for
# SQLite's appends, hands the writer thread the same work in a form it can merge; PostgreSQL
# listens to the other daemons sharing it).
OVERRIDES = {"PostgresStore": {"count_by_status", "watch_remote"}, "SqliteStore": {"append_events"}}


def backends() -> list[type[StoreBase]]:
    classes: list[type[StoreBase]] = [SqliteStore]
    try:
        from daemon.store.postgres import PostgresStore
    except ImportError:  # psycopg not installed: the SQLite backend alone
        return classes
    return [*classes, PostgresStore]


def test_store_is_the_base_interface():
    assert Store is StoreBase
    for cls in backends():
        assert issubclass(cls, StoreBase)
        assert not inspect.isabstract(cls), f"{cls.__name__} lacks {cls.__abstractmethods__}"


@pytest.mark.parametrize("cls", backends(), ids=lambda cls: cls.__name__)
def test_backends_define_no_public_method_of_their_own(cls):
    own = {name for name in vars(cls) if not name.startswith("_")} - {"backend", "queries", "shared"}
    assert own <= BACKEND_OWN | OVERRIDES.get(cls.__name__, set())
    assert own - BACKEND_OWN == OVERRIDES.get(cls.__name__, set())


def test_both_queries_modules_offer_what_the_interface_calls_alike():
    called = set(re.findall(r"self\.queries\.(\w+)", inspect.getsource(base)))
    assert {"insert_task", "transition", "read_events", "revoke_user"} <= called
    assert isinstance(sqlite_queries.CLUSTER, type(postgres_queries.CLUSTER))  # one SQL text
    for name in sorted(called - {"CLUSTER"}):
        lite = inspect.signature(getattr(sqlite_queries, name)).parameters
        pg = inspect.signature(getattr(postgres_queries, name)).parameters
        # The same parameters in the same order; one side may add optional ones (PostgreSQL's
        # ``get_task(..., lock=False)``), which the interface never passes.
        assert [(n, p.kind) for n, p in lite.items() if n in pg] == \
            [(n, p.kind) for n, p in pg.items() if n in lite], name
        only_one = {n: p for n, p in {**lite, **pg}.items() if (n in lite) != (n in pg)}
        assert all(p.default is not p.empty for p in only_one.values()), name


@pytest.fixture(params=["sqlite", "postgres"])
async def any_store(request, tmp_path):
    if request.param == "sqlite":
        store = await open_store(tmp_path / "data")
    else:
        pytest.importorskip("psycopg_pool", reason="the PostgreSQL store needs psycopg-pool")
        store = await open_store(tmp_path, request.getfixturevalue("pg_dsn"))
    try:
        yield store
    finally:
        await store.aclose()


async def test_a_broken_listener_hides_neither_the_result_nor_the_events(any_store, caplog):
    seen = []

    def broken(events):
        raise RuntimeError("listener bug")

    any_store.add_listener(broken)
    any_store.add_listener(seen.append)
    alice = await any_store.upsert_user("alice")
    task, created = await any_store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    assert created
    assert [e.type for batch in seen for e in batch] == [
        e.type for e in await any_store.read_events(task.id)
    ]
    assert "event listener failed" in caplog.text


async def test_what_a_write_returns_is_what_a_read_gives_back(any_store):
    # The SQLite writer builds the returned task from what it wrote instead of reading it back.
    alice = await any_store.upsert_user("alice")
    written, _ = await any_store.create_task(
        user_id=alice.id, repo_url="r", prompt="p", base_branch="dev", budget={"max_turns": 3},
        idempotency_key="k1")
    assert written == await any_store.get_task(written.id)
    again, created = await any_store.create_task(
        user_id=alice.id, repo_url="r", prompt="p", idempotency_key="k1")
    assert (again, created) == (written, False)
    running = await any_store.transition(written.id, TaskStatus.RUNNING, attempt_delta=1, node_id="n1")
    assert running == await any_store.get_task(written.id)
    assert (running.status, running.attempt, running.node_id) == (TaskStatus.RUNNING, 1, "n1")
    done = await any_store.transition(written.id, TaskStatus.FAILED, error="boom", claim=("n1", 1))
    assert done == await any_store.get_task(written.id)
    assert done.last_seq == (await any_store.read_events(written.id))[-1].seq


def test_evolve_is_dataclasses_replace():
    task = Task(id="t", user_id=1, repo_url="r", prompt="p", base_branch=None,
                status=TaskStatus.QUEUED, attempt=0, created_at=1.0, updated_at=1.0)
    changes = {"status": TaskStatus.RUNNING, "attempt": 1, "node_id": "n", "last_seq": 9}
    assert task.evolve(**changes) == dataclasses.replace(task, **changes)
    assert task.status is TaskStatus.QUEUED  # the original is untouched
    with pytest.raises(TypeError, match="no field"):
        task.evolve(colour="red")


def test_task_ids_are_ulids_in_crockford_base32(monkeypatch):
    import daemon.store.models as models

    monkeypatch.setattr(models.secrets, "randbits", lambda bits: (1 << bits) - 2)
    # 2026-01-01T00:00:00Z = 1767225600000 ms; the ULID spec's alphabet, lowercase.
    assert models.new_task_id(1767225600.0) == "01kdvdna00zzzzzzzzzzzzzzzy"
    monkeypatch.undo()
    ids = [models.new_task_id(1767225600.0 + i / 1000) for i in range(300)]
    assert ids == sorted(ids) and len(set(ids)) == 300
    assert all(len(i) == 26 and set(i) <= set("0123456789abcdefghjkmnpqrstvwxyz") for i in ids)
