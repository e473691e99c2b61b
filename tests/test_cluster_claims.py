"""Claims and status changes on PostgreSQL with several stores ("nodes") writing at once.

A claim round is one set-based statement (``postgres_claims``) without a lock all claims share;
the per-user cap is kept by locking the user's row. Here: that what a claim writes is what any
other start writes, that concurrent claims from three stores start each task once and never put
a user over the cap (checked while they run and at the end), and that a status change decided
on a row that another writer changed meanwhile is decided again on the current row.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
import trio

pytest.importorskip("psycopg_pool", reason="the PostgreSQL store needs psycopg-pool")

from daemon.errors import InvalidTransition
from daemon.states import TaskStatus
from daemon.store import (
    Claim,
    NewEvent,
    Transition,
    postgres,
    postgres_batches,
    postgres_changes,
    postgres_claims,
)
from daemon.store.lifecycle import plan_transition
from daemon.store.postgres import PostgresStore

from .test_store_pg import close_all, open_nodes


async def queue(store: PostgresStore, logins: list[str], per_user: int) -> dict[int, list[str]]:
    """``per_user`` queued tasks for each login, created in turns; their ids by user id."""
    users = [await store.upsert_user(login) for login in logins]
    made: dict[int, list[str]] = {user.id: [] for user in users}
    for i in range(per_user):
        for user in users:
            task, _ = await store.create_task(user_id=user.id, repo_url="r", prompt=f"{i}")
            made[user.id].append(task.id)
    return made


async def test_a_claim_writes_what_any_start_writes_and_publishes_what_it_stored(pg_dsn):
    (store,) = await open_nodes(pg_dsn, 1)
    made = await queue(store, ["alice", "bob"], 3)
    before = {task_id: await store.get_task(task_id) for ids in made.values() for task_id in ids}
    published = []
    store.add_listener(published.extend)
    claimed = await store.claim_tasks("n1", 4)
    assert [t.user_id for t in claimed] == [*made][:2] * 2  # round-robin across users
    start = Transition("", TaskStatus.RUNNING, expect=TaskStatus.QUEUED, attempt_delta=1, node_id="n1")
    for task, event in zip(claimed, published, strict=True):
        planned, (status,) = plan_transition(before[task.id], start, now=task.started_at)
        assert task == planned == await store.get_task(task.id)
        (stored,) = await store.read_events(task.id, after=task.last_seq - 1)
        assert stored == event and (event.type, event.data) == (status.type, status.data)
        assert event.data_json == postgres_changes.dumps(status.data)  # byte for byte
    await close_all([store])


# In the capped claim's second statement, between its snapshot and its count: a pause that lets
# other claims run into the same moment (without the user's row lock the cap would not hold).
_COUNT = "WHERE status = 'running' AND user_id IN (SELECT user_id FROM picked) GROUP BY user_id"
_SLOW_COUNT = _COUNT.replace("WHERE", "WHERE (SELECT pg_sleep(0.003)) IS NOT NULL AND", 1)


async def test_claims_from_three_nodes_keep_every_users_cap(pg_dsn, monkeypatch):
    """Three stores claim at once (each with its own pool, so really at once in the database)
    and end their tasks; meanwhile finished tasks are queued again (a follow-up), where they go
    to the front: another claim's view of the queue's head is then out of date. A watcher reads
    the running counts all along."""
    assert _COUNT in postgres_claims._START_CAPPED
    monkeypatch.setattr(
        postgres_claims, "_START_CAPPED", postgres_claims._START_CAPPED.replace(_COUNT, _SLOW_COUNT)
    )
    cap, per_user, follow_ups = 2, 15, 40
    stores = await open_nodes(pg_dsn, 3)
    made = await queue(stores[0], ["alice", "bob"], per_user)
    everything = [task_id for ids in made.values() for task_id in ids]
    seen_over_cap: list[dict[int, int]] = []
    starts = Counter[str]()
    rng = random.Random(7)

    done = trio.Event()  # once every start there will be has happened
    target = [len(everything) + follow_ups]  # how many starts: lowered once known

    def count_start(task_id: str) -> None:
        starts[task_id] += 1
        if starts.total() >= target[0]:
            done.set()

    async def node(index: int) -> None:
        store = stores[index]
        while not done.is_set():
            for task in await store.claim_tasks(f"n{index}", rng.randint(1, 3), user_limit=cap):
                count_start(task.id)
                await store.transition(Transition(task.id, TaskStatus.SUCCEEDED, claim=Claim.of(task)))

    async def follow_up() -> None:
        queued_again = 0
        for _ in range(follow_ups):
            task = await stores[0].get_task(rng.choice(everything))
            again = Transition(
                task.id, TaskStatus.QUEUED, expect=TaskStatus.SUCCEEDED, attempt_delta=-task.attempt
            )
            try:
                await stores[0].transition(again)
                queued_again += 1
            except InvalidTransition:
                pass  # not finished (yet)
            await trio.sleep(0.001)
        target[0] = len(everything) + queued_again
        if starts.total() >= target[0]:
            done.set()

    async def watch() -> None:
        while not done.is_set():
            rows = await stores[2]._read(
                lambda conn: conn.execute(
                    "SELECT user_id, count(*) FROM tasks WHERE status = 'running' GROUP BY user_id"
                ).fetchall()
            )
            over = {user: n for user, n in rows if n > cap}
            if over:
                seen_over_cap.append(over)

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            nursery.start_soon(follow_up)
            for index in range(3):
                nursery.start_soon(node, index)
    assert seen_over_cap == []
    assert set(starts) == set(everything)
    await close_all(stores)


async def test_without_a_cap_concurrent_claims_share_out_one_users_queue(pg_dsn):
    stores = await open_nodes(pg_dsn, 3)
    made = await queue(stores[0], ["alice"], 90)
    taken: list[list[str]] = [[], [], []]

    async def node(index: int) -> None:
        while sum(map(len, taken)) < 90:
            claimed = await stores[index].claim_tasks(f"n{index}", 5)
            taken[index].extend(task.id for task in claimed)
            await trio.lowlevel.checkpoint()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for index in range(3):
                nursery.start_soon(node, index)
    everything = [task_id for share in taken for task_id in share]
    assert sorted(everything) == sorted(made[next(iter(made))])
    for task_id in everything[:10]:
        statuses = [e.data["status"] for e in await stores[1].read_events(task_id) if e.type == "task.status"]
        assert statuses == ["queued", "running"]
    await close_all(stores)


async def test_a_capped_claim_counts_starts_made_by_other_means(pg_dsn):
    (store,) = await open_nodes(pg_dsn, 1)
    made = await queue(store, ["alice"], 4)
    (alice,) = made
    first, second, *_ = made[alice]
    for task_id in (first, second):  # started one by one, as a single daemon would
        await store.transition(
            Transition(task_id, TaskStatus.RUNNING, expect=TaskStatus.QUEUED, attempt_delta=1)
        )
    assert await store.claim_tasks("n1", 5, user_limit=2) == []
    assert len(await store.claim_tasks("n1", 5, user_limit=3)) == 1
    await close_all([store])


async def test_a_change_decided_on_a_row_changed_meanwhile_is_decided_again(pg_dsn, monkeypatch):
    a, b = await open_nodes(pg_dsn)
    alice = await a.upsert_user("alice")
    await a.create_task(user_id=alice.id, repo_url="r", prompt="p")
    (task,) = await a.claim_tasks("n1", 1)
    plan = postgres_changes.plan_transition
    calls = []

    def plan_then_interfere(current, change, *, now):
        calls.append(current.last_seq)
        if len(calls) == 1:  # another node appends between the read and the write
            trio.from_thread.run(b.append_events, task.id, [NewEvent("agent.text", {"text": "late"})])
        return plan(current, change, now=now)

    monkeypatch.setattr(postgres_changes, "plan_transition", plan_then_interfere)
    done = await a.transition(Transition(task.id, TaskStatus.SUCCEEDED, claim=Claim.of(task)))
    assert calls == [task.last_seq, task.last_seq + 1]  # read, then again on the locked row
    events = await b.read_events(task.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.type for e in events][-3:] == ["agent.text", "task.status", "task.finished"]
    assert done == await b.get_task(task.id) and done.last_seq == events[-1].seq
    monkeypatch.undo()
    # And a change the current row refuses is refused, with nothing written.
    with pytest.raises(InvalidTransition, match="no longer holds"):
        await b.transition(Transition(task.id, TaskStatus.FAILED, claim=Claim.of(task)))
    assert len(await b.read_events(task.id)) == len(events)
    await close_all([a, b])


async def test_status_changes_asked_together_are_written_together_and_fail_alone(pg_dsn, monkeypatch):
    a, b = await open_nodes(pg_dsn)
    await queue(a, ["alice"], 8)
    claimed = await a.claim_tasks("n1", 8)
    published: list = []
    a.add_listener(published.extend)
    batches: list[int] = []
    write = postgres_batches.write_batch

    def counting(conn, items):
        batches.append(len(items))
        return write(conn, items)

    plan = postgres_batches.plan_transition
    moved = claimed[3]

    def plan_then_interfere(current, change, *, now):  # another node writes to one task meanwhile
        if current.id == moved.id and current.last_seq == moved.last_seq:
            trio.from_thread.run(b.append_events, moved.id, [NewEvent("agent.text", {"text": "late"})])
        return plan(current, change, now=now)

    monkeypatch.setattr(postgres, "write_batch", counting)
    monkeypatch.setattr(postgres_batches, "plan_transition", plan_then_interfere)
    results: dict[str, object] = {}

    async def end(task, change: Transition) -> None:
        try:
            results[task.id] = await a.transition(change)
        except InvalidTransition as exc:
            results[task.id] = exc

    async with trio.open_nursery() as nursery:
        for i, task in enumerate(claimed):
            if i == 5:  # a change its row refuses: the attempt's claim is not the task's
                change = Transition(task.id, TaskStatus.SUCCEEDED, claim=Claim("n2", task.attempt))
            else:
                change = Transition(task.id, TaskStatus.SUCCEEDED, claim=Claim.of(task))
            nursery.start_soon(end, task, change)
    assert max(batches) >= 3 and sum(batches) >= len(claimed)  # written together, a batch at a time
    assert isinstance(results[claimed[5].id], InvalidTransition)
    for i, task in enumerate(claimed):
        events = await b.read_events(task.id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        if i == 5:
            assert (await b.get_task(task.id)).status is TaskStatus.RUNNING
            continue
        assert results[task.id] == await b.get_task(task.id)
        assert [e.type for e in events][-2:] == ["task.status", "task.finished"]
        mine = [e for e in published if e.task_id == task.id]
        assert mine == events[-2:]  # published as stored, once
    assert "agent.text" in [e.type for e in await b.read_events(moved.id)]
    await close_all([a, b])
