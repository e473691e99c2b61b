"""How the SQLite writer forms its batches and hands them back to Trio.

- After a large batch the writer lingers for more while the Trio thread is busy (the jobs of
  tasks that emit as they go join the batch), and commits at once when Trio goes to sleep
  with nothing due (every writer waits on it: nothing more can come).
- A writer alone (batches of one) never lingers.
- Batches that commit while the Trio thread has yet to take an earlier one are handed over
  together, in commit order, with one wake-up.
"""

from __future__ import annotations

import threading
import time

import apsw
import pytest
import trio

from daemon.store import NewEvent, sqlite_io

from .helpers import in_one_batch

pytestmark = pytest.mark.sqlite_only("the SQLite writer thread")


def text(i: int) -> list[NewEvent]:
    return [NewEvent("agent.text", {"text": str(i)})]


@pytest.fixture
def lingers(store, monkeypatch) -> list[float]:
    """The writer's waits while lingering (each one's timeout)."""
    idle = store._writer._trio_idle
    steps: list[float] = []
    wait = idle.woken.wait

    def counted(timeout):
        steps.append(timeout)
        return wait(timeout)

    monkeypatch.setattr(idle.woken, "wait", counted)
    return steps


async def test_a_writer_alone_never_lingers(store, alice, lingers, merged):
    task, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    for i in range(50):
        await store.append_events(task.id, text(i))
    assert merged == [1] * 50
    assert lingers == []


async def test_while_trio_is_busy_the_writer_lingers_for_the_jobs_that_come(store, alice, lingers, merged):
    writer = store._writer
    writer.linger_after, writer.linger_s = 3, 30.0
    tasks = [(await store.create_task(user_id=alice.id, repo_url="r", prompt="p"))[0] for _ in range(6)]
    # A batch of three: the writer will linger before the next one.
    await in_one_batch(store, *[lambda t=t: store.append_events(t.id, text(0)) for t in tasks[:3]])
    assert merged == [3]

    busy = trio.CancelScope()

    async def keep_trio_busy() -> None:
        with busy:
            while True:
                await trio.lowlevel.checkpoint()

    async def emit_one_by_one() -> None:
        for task in tasks:
            while not writer._trio_idle.lingering:  # the first append starts the lingering
                if task is tasks[0]:
                    break
                await trio.lowlevel.checkpoint()
            nursery.start_soon(store.append_events, task.id, text(1))
            await trio.lowlevel.checkpoint()
        # Everything is queued; once Trio has nothing to do, the writer commits at once.
        busy.cancel()

    began = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_trio_busy)
        nursery.start_soon(emit_one_by_one)
    assert merged == [3, 6]
    assert writer._trio_idle.watching  # after large batches
    assert lingers == [30.0]  # it waited for them ...
    assert time.monotonic() - began < 10  # ... and no longer once Trio had nothing to do


async def test_when_every_writer_waits_the_writer_commits_without_lingering_out(store, alice, merged):
    writer = store._writer
    writer.linger_after, writer.linger_s = 3, 30.0
    tasks = [(await store.create_task(user_id=alice.id, repo_url="r", prompt="p"))[0] for _ in range(3)]
    await in_one_batch(store, *[lambda t=t: store.append_events(t.id, text(0)) for t in tasks])
    began = time.monotonic()
    # The one next append: Trio then sleeps with nothing due, the writer stops lingering.
    await store.append_events(tasks[0].id, text(1))
    assert time.monotonic() - began < 10  # well under linger_s
    assert merged == [3, 1]
    # Batches of one again: Trio's loop is no longer watched (it costs each of its turns).
    assert not writer._trio_idle.watching


async def test_batches_committed_before_trio_takes_them_come_back_with_one_wake_up(store, alice, monkeypatch):
    writer = store._writer
    deliveries: list[int] = []
    deliver = writer._deliver

    def counted(jobs):
        deliveries.append(len(jobs))
        deliver(jobs)

    monkeypatch.setattr(writer, "_deliver", counted)
    first_running, release_first = threading.Event(), threading.Event()

    def first(conn) -> str:
        first_running.set()
        release_first.wait(10)
        return "first"

    committed: list[str] = []

    async def write(fn) -> None:
        await writer.run(fn, on_commit=committed.append)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, first)
        await trio.to_thread.run_sync(first_running.wait, 10)
        nursery.start_soon(write, lambda conn: "second")
        await trio.testing.wait_all_tasks_blocked()
        # The Trio thread is held up while both batches commit, one after the other.
        release_first.set()
        deadline = time.monotonic() + 10
        while len(writer._done) < 2 and time.monotonic() < deadline:
            time.sleep(0.001)  # noqa: ASYNC251 - holding the Trio thread is the point
    assert committed == ["first", "second"]  # on_commit in commit order
    assert deliveries == [2]


async def test_a_batch_the_writer_cannot_even_roll_back_fails_its_callers_and_the_writer_goes_on(
    store, monkeypatch
):
    alice = await store.upsert_user("alice")
    real = sqlite_io.WriterThread._run_batch
    batches = []

    def breaks_once(conn, jobs):
        batches.append(len(jobs))
        if len(batches) == 1:
            raise apsw.IOError("disk I/O error")
        return real(conn, jobs)

    monkeypatch.setattr(sqlite_io.WriterThread, "_run_batch", staticmethod(breaks_once))
    with pytest.raises(apsw.IOError, match="disk I/O error"):
        await store.create_task(user_id=alice.id, repo_url="r", prompt="lost")
    task, created = await store.create_task(user_id=alice.id, repo_url="r", prompt="kept")
    assert created and [t.prompt for _, t in await store.list_tasks()] == ["kept"]
