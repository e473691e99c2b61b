"""The store interface: ``StoreBase`` holds every shared method once; backends add only runners.

What the methods do is specified in test_store_events.py and test_supervisor.py, on both
backends. Here: that the backends really are the one interface (nothing public of their own
beyond opening, closing and maintenance), that each queries module offers what the interface
calls with the same parameters, what both backends do with a broken event listener, and that
the task a write returns is the one a read gives back.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from types import SimpleNamespace

import pytest

from daemon.states import TaskStatus
from daemon.store import (
    Claim,
    SqliteStore,
    Store,
    StoreBase,
    Task,
    Transition,
    base,
    cluster_queries,
    cluster_store,
    identity_store,
    open_store,
    postgres_queries,
    sqlite_queries,
)

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
    interface = "".join(inspect.getsource(module) for module in (base, identity_store, cluster_store))
    called = set(re.findall(r"self\.queries\.(\w+)", interface))
    assert {"insert_task", "transition", "read_events", "revoke_user"} <= called
    # One SQL text for nodes, leases and what the nodes agree on; PostgreSQL claims its own way.
    assert type(sqlite_queries.CLUSTER) is cluster_queries.Dialect
    assert isinstance(postgres_queries.CLUSTER, cluster_queries.Dialect)
    own = {name for name in vars(type(postgres_queries.CLUSTER)) if not name.startswith("_")}
    assert own == {"claim_tasks"}
    for name in sorted(called - {"CLUSTER"}):
        lite = inspect.signature(getattr(sqlite_queries, name)).parameters
        pg = inspect.signature(getattr(postgres_queries, name)).parameters
        # The same parameters in the same order; one side may add optional ones (PostgreSQL's
        # ``get_task(..., lock=False)``), which the interface never passes.
        assert [(n, p.kind) for n, p in lite.items() if n in pg] == [
            (n, p.kind) for n, p in pg.items() if n in lite
        ], name
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
    assert [e.type for batch in seen for e in batch] == [e.type for e in await any_store.read_events(task.id)]
    assert "event listener failed" in caplog.text


async def test_what_a_write_returns_is_what_a_read_gives_back(any_store):
    # The SQLite writer builds the returned task from what it wrote instead of reading it back.
    alice = await any_store.upsert_user("alice")
    written, _ = await any_store.create_task(
        user_id=alice.id,
        repo_url="r",
        prompt="p",
        base_branch="dev",
        budget={"max_turns": 3},
        idempotency_key="k1",
    )
    assert written == await any_store.get_task(written.id)
    again, created = await any_store.create_task(
        user_id=alice.id, repo_url="r", prompt="p", idempotency_key="k1"
    )
    assert (again, created) == (written, False)
    running = await any_store.transition(
        Transition(written.id, TaskStatus.RUNNING, attempt_delta=1, node_id="n1")
    )
    assert running == await any_store.get_task(written.id)
    assert (running.status, running.attempt, running.node_id) == (TaskStatus.RUNNING, 1, "n1")
    done = await any_store.transition(
        Transition(written.id, TaskStatus.FAILED, error="boom", claim=Claim("n1", 1))
    )
    assert done == await any_store.get_task(written.id)
    assert done.last_seq == (await any_store.read_events(written.id))[-1].seq


async def test_what_daemons_sharing_a_store_agree_on_is_kept_alike(any_store):
    # A value under a name: the first proposal stays; a swap only from the value expected.
    assert await any_store.cluster_value("check", b"first", node="a") == b"first"
    assert await any_store.cluster_value("check", b"second", node="b") == b"first"
    assert not await any_store.swap_cluster_value("check", b"second", b"third", node="b")
    assert await any_store.swap_cluster_value("check", b"first", b"third", node="b")
    assert await any_store.cluster_value("check", b"fourth", node="a") == b"third"
    # A rate bucket: a burst, then one token each 60 / per_min seconds of the store's clock.
    now = [1000.0]
    any_store.now = lambda: now[0]
    take = functools.partial(any_store.take_rate_token, per_min=30, burst=2)
    assert [await take("u1") for _ in range(2)] == [0.0, 0.0]
    assert await take("u1") == pytest.approx(2.0)  # refused: a token in 2 s
    assert await take("u2") == 0.0
    now[0] += 1.0
    assert await take("u1") == pytest.approx(1.0)  # half a token so far
    now[0] += 1.0
    assert await take("u1") == 0.0
    now[0] -= 30  # a clock behind the bucket's (another node's) refills nothing, takes nothing
    assert await take("u1") == pytest.approx(2.0)


def test_evolve_is_dataclasses_replace():
    task = Task(
        id="t",
        user_id=1,
        repo_url="r",
        prompt="p",
        base_branch=None,
        status=TaskStatus.QUEUED,
        attempt=0,
        created_at=1.0,
        updated_at=1.0,
    )
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


# -- tasks by the start of their id ---------------------------------------------------------

# Ids made up to sit on the edges of a prefix's range: a last character that carries (9 -> a,
# z -> the next place), and an id of z's alone, which has no upper end.
EDGES = {
    "alice": ["01h9zzzzzzzzzzzzzzzzzzzzzz", "01ha000000000000000000000a", "01hzz0000000000000000000zz"],
    "bob": ["01j00000000000000000000000", "zzzzzzzzzzzzzzzzzzzzzzzzzz"],
}


async def test_tasks_are_found_by_the_start_of_their_id(any_store, monkeypatch):
    owners = {}
    for login, ids in EDGES.items():
        owners[login] = (await any_store.upsert_user(login)).id
        for task_id in ids:
            monkeypatch.setattr(base, "new_task_id", lambda now, task_id=task_id: task_id)
            await any_store.create_task(user_id=owners[login], repo_url="r", prompt="p")
    find = any_store.task_ids_with_prefix
    first, second, third = EDGES["alice"]
    assert await find("01h9") == [first]  # not 01ha...: 9 is followed by a
    assert await find("01hz") == [third]  # not 01j0...: the z carries to the place before
    assert await find("01h") == EDGES["alice"]
    assert await find("zzzz") == [EDGES["bob"][1]]  # all z: no upper end
    assert await find(first) == [first]  # a whole id is a prefix of itself
    assert await find("01", limit=2) == [first, second]
    assert await find("01", user_id=owners["bob"]) == [EDGES["bob"][0]]
    assert await find("01h", user_id=owners["bob"]) == []
    # Nothing but digits and lower-case letters is an id: no wildcard or collation trick.
    for other in ("", "01h%", "01h_", "01H9", "01h9 ", "01h9\x00"):
        assert await find(other) == [], other


async def test_a_prefix_is_a_range_of_the_ids_index(any_store):
    sqlite = any_store.backend == "sqlite"

    class Plan:
        """A connection that answers each query with its plan, a line a row."""

        def __init__(self, conn):
            self.conn = conn

        def execute(self, sql, params):
            lines = self.conn.execute(f"EXPLAIN QUERY PLAN {sql}" if sqlite else f"EXPLAIN {sql}", params)
            return SimpleNamespace(fetchall=lambda: [(line[3] if sqlite else line[0],) for line in lines])

    def plan(conn):
        if not sqlite:  # a table this small is cheaper read whole: ask what the index would do
            conn.execute("SET LOCAL enable_seqscan = off")
        return any_store.queries.task_ids_with_prefix(Plan(conn), "01h9abcd", limit=5)

    lines = await any_store._read(plan)
    if sqlite:
        assert lines == ["SEARCH tasks USING COVERING INDEX sqlite_autoindex_tasks_1 (id>? AND id<?)"]
    else:
        assert any(
            "Index Cond: ((id >= '01h9abcd'::text) AND (id < '01h9abce'::text))" in line for line in lines
        ), lines
