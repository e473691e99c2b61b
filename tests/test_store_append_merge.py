"""The SQLite writer merges the event appends of a batch: seq stays gap-free, order holds.

The writer runs every waiting job in one transaction and turns consecutive appends into one
``INSERT``, with each task's last seq remembered between batches.
These tests build batches on purpose (the writer thread is held up while the jobs queue) so
that appends, transitions and failing jobs share one transaction.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import trio

from daemon.errors import InvalidTransition, NotFound
from daemon.states import TaskStatus
from daemon.store import NewEvent, Transition, sqlite_queries as q

from .helpers import in_one_batch

pytestmark = pytest.mark.sqlite_only("the SQLite writer thread")


def text(i: int) -> list[NewEvent]:
    return [NewEvent("agent.text", {"text": str(i)})]


class Published:
    """Every published event's seq per task, in publication order."""

    def __init__(self, store) -> None:
        self.seqs: dict[str, list[int]] = defaultdict(list)
        store.add_listener(self)

    def __call__(self, events) -> None:
        for event in events:
            self.seqs[event.task_id].append(event.seq)


async def assert_gap_free(store, task_id: str, published: Published | None = None) -> int:
    events = await store.read_events(task_id, 0, 100_000)
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert (await store.get_task(task_id)).last_seq == len(seqs)
    if published is not None:
        assert published.seqs[task_id] == seqs[-len(published.seqs[task_id]) :]
    return len(seqs)


async def test_concurrent_single_appends_with_transitions_stay_gap_free_and_in_order(store, alice):
    published = Published(store)
    tasks = [(await store.create_task(user_id=alice.id, repo_url="r", prompt="p"))[0] for _ in range(6)]

    async def emitter(task_id: str, n: int) -> None:
        for i in range(n):
            await store.append_events(task_id, text(i))

    async def flipper(task_id: str, n: int) -> None:
        for _ in range(n):
            await store.transition(Transition(task_id, TaskStatus.RUNNING))
            await store.append_events(task_id, text(-1))
            await store.transition(Transition(task_id, TaskStatus.QUEUED))

    async with trio.open_nursery() as nursery:
        for task in tasks:
            for _ in range(4):
                nursery.start_soon(emitter, task.id, 60)
            nursery.start_soon(flipper, task.id, 15)
    for task in tasks:
        # 2 created events + 4 x 60 appends + 15 x (2 status events + 1 append)
        assert await assert_gap_free(store, task.id, published) == 2 + 240 + 45
        assert (await store.get_task(task.id)).status is TaskStatus.QUEUED


async def test_a_transition_in_a_merged_batch_sees_the_appends_before_it(store, alice, merged):
    published = Published(store)
    a, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    b, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    outcomes = await in_one_batch(
        store,
        lambda: store.append_events(a.id, text(1)),
        lambda: store.append_events(b.id, text(1)),
        lambda: store.append_events(a.id, text(2)),
        lambda: store.transition(Transition(a.id, TaskStatus.RUNNING)),
        lambda: store.append_events(a.id, text(3)),
        lambda: store.append_events(b.id, text(2)),
    )
    assert [e.seq for e in outcomes[0]] == [3]
    assert [e.seq for e in outcomes[2]] == [4]
    assert outcomes[3].last_seq == 5  # its task.status event follows the two appends
    assert [e.seq for e in outcomes[4]] == [6]
    assert [e.seq for e in outcomes[5]] == [4]
    assert await assert_gap_free(store, a.id, published) == 6
    assert await assert_gap_free(store, b.id, published) == 4
    assert published.seqs[a.id] == [1, 2, 3, 4, 5, 6]
    assert merged == [3, 2]  # the appends before the transition in one call, then the rest


async def test_an_append_to_an_unknown_task_fails_alone_in_a_merged_batch(store, alice, merged):
    published = Published(store)
    a, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    b, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    outcomes = await in_one_batch(
        store,
        lambda: store.append_events(a.id, text(1)),
        lambda: store.append_events("no-such-task", text(1)),
        lambda: store.append_events(b.id, [*text(1), *text(2)]),
        lambda: store.append_events(a.id, text(2)),
    )
    assert isinstance(outcomes[1], NotFound)
    assert merged[0] == 4
    assert [e.seq for e in outcomes[0]] == [3]
    assert [e.seq for e in outcomes[2]] == [3, 4]
    assert [e.seq for e in outcomes[3]] == [4]
    # The remembered counters are still right in the next batches.
    for i in range(3):
        await store.append_events(a.id, text(i))
    assert await assert_gap_free(store, a.id, published) == 7
    assert await assert_gap_free(store, b.id, published) == 4


async def test_a_failing_job_in_a_merged_batch_undoes_only_its_own_appends(store, alice):
    published = Published(store)
    a, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    b, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")

    def append_then_fail(conn):
        q.append_events(conn, a.id, text(99))  # moves a's counter, then is rolled back
        raise RuntimeError("this job fails after appending")

    outcomes = await in_one_batch(
        store,
        lambda: store.append_events(a.id, text(1)),
        lambda: store._write(append_then_fail),
        lambda: store.append_events(a.id, text(2)),
        lambda: store.transition(Transition(b.id, TaskStatus.SUCCEEDED)),  # invalid: fails alone
        lambda: store.append_events(b.id, text(1)),
    )
    assert isinstance(outcomes[1], RuntimeError)
    assert isinstance(outcomes[3], InvalidTransition)
    assert [e.seq for e in outcomes[0]] == [3]
    assert [e.seq for e in outcomes[2]] == [4]
    assert [e.seq for e in outcomes[4]] == [3]
    for i in range(3):
        await store.append_events(a.id, text(i))
        await store.append_events(b.id, text(i))
    assert await assert_gap_free(store, a.id, published) == 7
    assert await assert_gap_free(store, b.id, published) == 6
    texts = [e.data.get("text") for e in await store.read_events(a.id)]
    assert "99" not in texts


async def test_a_wrong_remembered_counter_never_leaves_a_gap(store, alice):
    """Defence in depth: were the writer's memory wrong, the batch is redone from the table."""
    a, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    await store.append_events(a.id, text(0))

    for wrong in (10, 1):  # ahead of the table, then behind it

        def corrupt(conn, wrong=wrong):
            conn.last_seqs[a.id] = wrong

        await store._write(corrupt)
        events = await store.append_events(a.id, text(1))
        assert events[0].seq == (await store.get_task(a.id)).last_seq
    assert await assert_gap_free(store, a.id) == 5
