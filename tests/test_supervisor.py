"""The supervisor as a specification: retries, cancel, deadlines, fairness, limits, drain.

All time is trio's MockClock (autojump): a 10-minute backoff takes no real time.
"""

from __future__ import annotations

import itertools
import random

import pytest
import trio
import trio.lowlevel

from daemon.errors import InvalidTransition
from daemon.states import TaskStatus
from daemon.supervisor import Backoff

from .conftest import fake_wall
from .helpers import in_one_batch, running_supervisor, submit, wait_status
from .runners import FailPermanently, FailTimes, Hang, MessagedAsItEnds, SucceedAfter


def test_backoff_ceilings_double_then_cap():
    backoff = Backoff(base_s=2, cap_s=30, max_attempts=10)
    assert [backoff.ceiling(a) for a in range(1, 7)] == [2, 4, 8, 16, 30, 30]


def test_backoff_full_jitter_stays_within_bounds_and_spreads():
    backoff = Backoff(base_s=1, cap_s=100, rng=random.Random(7))
    delays = [backoff.delay(4) for _ in range(2000)]
    assert all(0 <= d <= 8 for d in delays)
    # Full jitter spreads over the whole range, not just near the ceiling.
    assert min(delays) < 0.5 and max(delays) > 7.5
    assert 3.5 < sum(delays) / len(delays) < 4.5


def test_backoff_honours_retry_after_as_a_floor_but_not_above_the_cap():
    backoff = Backoff(base_s=1, cap_s=50, rng=random.Random(1))
    assert all(backoff.delay(1, retry_after=20) >= 20 for _ in range(100))
    assert backoff.delay(1, retry_after=500) == 50


async def test_transient_failures_are_retried_after_their_backoff(autojump_clock, store, hub, alice):
    runner = FailTimes(2)
    async with running_supervisor(store, hub, runner, backoff=Backoff(10, 600, 5)) as sup:
        task = await submit(sup, alice)
        assert (
            await wait_status(hub, task.id, TaskStatus.SUCCEEDED, TaskStatus.FAILED) == TaskStatus.SUCCEEDED
        )
    events = await store.read_events(task.id)
    scheduled = [e for e in events if e.type == "task.retry_scheduled"]
    assert [e.data["attempt"] for e in scheduled] == [1, 2]
    assert scheduled[0].data["delay_s"] <= 10 and scheduled[1].data["delay_s"] <= 20
    assert scheduled[0].data["reason"] == "flaky attempt 1"
    # Each new attempt starts no earlier than the delay that was scheduled for it.
    starts = [t for _, t in runner.starts]
    assert len(starts) == 3
    for (before, after), event in zip(itertools.pairwise(starts), scheduled, strict=True):
        assert after - before >= event.data["delay_s"] - 1e-3
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert (await store.get_task(task.id)).attempt == 3


async def test_waiting_retry_is_persisted_with_its_due_time(autojump_clock, store, hub, alice):
    async with running_supervisor(store, hub, FailTimes(1), backoff=Backoff(100, 100, 5)) as sup:
        task = await submit(sup, alice)
        await wait_status(hub, task.id, TaskStatus.WAITING_RETRY)
        waiting = await store.get_task(task.id)
        assert waiting.status is TaskStatus.WAITING_RETRY
        assert fake_wall() <= waiting.due_at <= fake_wall() + 100
        await wait_status(hub, task.id, TaskStatus.SUCCEEDED)
        assert fake_wall() >= waiting.due_at


async def test_retry_after_is_a_floor_for_the_delay(autojump_clock, store, hub, alice):
    async with running_supervisor(
        store, hub, FailTimes(1, retry_after=45), backoff=Backoff(1, 600, 5)
    ) as sup:
        task = await submit(sup, alice)
        await wait_status(hub, task.id, TaskStatus.SUCCEEDED)
    (scheduled,) = [e for e in await store.read_events(task.id) if e.type == "task.retry_scheduled"]
    assert scheduled.data["delay_s"] >= 45


async def test_max_attempts_then_the_task_fails_with_the_last_reason(autojump_clock, store, hub, alice):
    runner = FailTimes(99)
    async with running_supervisor(store, hub, runner, backoff=Backoff(1, 5, max_attempts=3)) as sup:
        task = await submit(sup, alice)
        await wait_status(hub, task.id, TaskStatus.FAILED)
    task = await store.get_task(task.id)
    assert len(runner.starts) == 3 and task.attempt == 3
    assert task.reason == "max_attempts"
    assert task.error == "gave up after 3 attempts: flaky attempt 3"
    finished = (await store.read_events(task.id))[-1]
    assert finished.type == "task.finished" and finished.data["status"] == "failed"


async def test_permanent_failure_fails_at_once_with_its_reason(autojump_clock, store, hub, alice):
    runner = FailPermanently()
    async with running_supervisor(store, hub, runner) as sup:
        task = await submit(sup, alice)
        await wait_status(hub, task.id, TaskStatus.FAILED)
    task = await store.get_task(task.id)
    assert len(runner.starts) == 1
    assert task.error == "repository not found: example/missing"
    assert not [e for e in await store.read_events(task.id) if e.type == "task.retry_scheduled"]


async def test_cancel_a_running_task_cancels_its_runner(autojump_clock, store, hub, alice):
    runner = Hang()
    async with running_supervisor(store, hub, runner) as sup:
        task = await submit(sup, alice)
        await runner.wait_until(lambda: runner.active == 1)
        cancelled = await sup.cancel(task.id)
        assert cancelled.status is TaskStatus.CANCELLED
        assert runner.cancelled == [task.id]
        with pytest.raises(InvalidTransition):
            await sup.cancel(task.id)


async def test_cancel_a_queued_task_means_it_never_starts(autojump_clock, store, hub, alice):
    runner = Hang()
    async with running_supervisor(store, hub, runner, concurrency=1) as sup:
        first = await submit(sup, alice)
        second = await submit(sup, alice)
        await runner.wait_until(lambda: runner.active == 1)
        assert (await sup.cancel(second.id)).status is TaskStatus.CANCELLED
        runner.release.set()
        await wait_status(hub, first.id, TaskStatus.SUCCEEDED)
        await trio.sleep(10)
    assert [task_id for task_id, _ in runner.starts] == [first.id]


async def test_cancel_a_waiting_retry_task_stops_its_timer(autojump_clock, store, hub, alice):
    runner = FailTimes(1)
    async with running_supervisor(store, hub, runner, backoff=Backoff(50, 50, 5)) as sup:
        task = await submit(sup, alice)
        await wait_status(hub, task.id, TaskStatus.WAITING_RETRY)
        assert (await sup.cancel(task.id)).status is TaskStatus.CANCELLED
        await trio.sleep(500)
    assert len(runner.starts) == 1
    assert (await store.get_task(task.id)).status is TaskStatus.CANCELLED


async def test_a_task_longer_than_its_max_duration_fails(autojump_clock, store, hub, alice):
    runner = Hang()
    async with running_supervisor(store, hub, runner, max_duration_s=90) as sup:
        task = await submit(sup, alice)
        await wait_status(hub, task.id, TaskStatus.FAILED)
        ((_, started),) = runner.starts
        assert trio.current_time() - started >= 90
    task = await store.get_task(task.id)
    assert task.reason == "max_duration_exceeded"
    assert runner.cancelled == [task.id]


async def test_admission_is_round_robin_across_users_and_fifo_within_one(
    autojump_clock, store, hub, alice, bob
):
    runner = SucceedAfter(1)
    async with running_supervisor(store, hub, runner, concurrency=1) as sup:
        sup.drain()
        a = [await submit(sup, alice, f"a{i}") for i in range(3)]
        b = [await submit(sup, bob, f"b{i}") for i in range(2)]
        sup.resume()
        await wait_status(hub, a[2].id, TaskStatus.SUCCEEDED)
    order = [task_id for task_id, _ in runner.starts]
    assert order == [a[0].id, b[0].id, a[1].id, b[1].id, a[2].id]


async def test_concurrency_limit_changes_live_both_ways(autojump_clock, store, hub, alice):
    runner = Hang()
    async with running_supervisor(store, hub, runner, concurrency=2) as sup:
        tasks = [await submit(sup, alice) for _ in range(12)]
        await runner.wait_until(lambda: runner.active == 2)
        await trio.sleep(5)
        assert runner.active == 2 and (await store.count_by_status())["queued"] == 10
        sup.set_concurrency(5)
        await runner.wait_until(lambda: runner.active == 5)
        sup.set_concurrency(1)
        await trio.sleep(5)
        assert runner.active == 5  # lowering cancels nothing
        runner.max_active = 0
        runner.release.set()
        for task in tasks:
            await wait_status(hub, task.id, TaskStatus.SUCCEEDED)
        # Once the five had finished, one at a time.
        assert runner.max_active <= 5
        assert len(runner.starts) == 12
    starts_after_lowering = [t for _, t in runner.starts[5:]]
    assert len(starts_after_lowering) == 7


async def test_drain_stops_admission_and_resume_restarts_it(autojump_clock, store, hub, alice):
    runner = SucceedAfter(0)
    async with running_supervisor(store, hub, runner) as sup:
        sup.drain()
        task = await submit(sup, alice)
        await trio.sleep(60)
        assert runner.starts == [] and (await store.get_task(task.id)).status is TaskStatus.QUEUED
        sup.resume()
        await wait_status(hub, task.id, TaskStatus.SUCCEEDED)


async def test_shutdown_waits_for_the_grace_period_then_requeues_without_counting(
    autojump_clock, store, hub, alice
):
    runner = Hang()
    async with running_supervisor(store, hub, runner) as sup:
        task = await submit(sup, alice)
        await runner.wait_until(lambda: runner.active == 1)
        began = trio.current_time()
        await sup.shutdown(grace_s=30)
        assert trio.current_time() - began >= 30
    task = await store.get_task(task.id)
    assert task.status is TaskStatus.QUEUED and task.attempt == 0
    assert task.reason == "daemon shutdown"


async def test_shutdown_returns_early_when_tasks_finish_within_grace(autojump_clock, store, hub, alice):
    runner = SucceedAfter(5)
    async with running_supervisor(store, hub, runner) as sup:
        task = await submit(sup, alice)
        await runner.wait_until(lambda: runner.active == 1)
        began = trio.current_time()
        await sup.shutdown(grace_s=300)
        assert trio.current_time() - began < 300
    assert (await store.get_task(task.id)).status is TaskStatus.SUCCEEDED


async def test_requeue_a_failed_task_gives_it_fresh_attempts(autojump_clock, store, hub, alice):
    async with running_supervisor(store, hub, FailPermanently()) as sup:
        task = await submit(sup, alice)
        await wait_status(hub, task.id, TaskStatus.FAILED)
        again = await sup.requeue(task.id, reason="retried by operator", fresh_attempts=True)
        assert again.status is TaskStatus.QUEUED and again.attempt == 0


async def test_follow_ups_racing_cancels_never_crash_the_supervisor(store, hub, alice, autojump_clock):
    """What the phone does: send a follow-up, then cancel, again and again (found by fuzzing)."""
    runner = SucceedAfter(0)
    async with running_supervisor(store, hub, runner) as sup:
        task = await submit(sup, alice)
        for round_no in range(300):
            await store.add_input(task.id, f"more {round_no}")
            current = await store.get_task(task.id)
            if current.status.is_terminal:
                try:
                    await sup.requeue(task.id, reason="follow-up", fresh_attempts=True)
                except InvalidTransition:
                    pass
            if round_no % 3:
                await trio.lowlevel.checkpoint()
            try:
                cancelled = await sup.cancel(task.id)
            except InvalidTransition:
                continue
            assert cancelled.status is TaskStatus.CANCELLED
        assert sup.stats()["running"] in (0, 1)
    events = await store.read_events(task.id, 0, 100_000)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_one_users_cap_leaves_room_for_the_others(autojump_clock, store, hub, alice, bob):
    runner = Hang()
    async with running_supervisor(store, hub, runner, concurrency=4, user_concurrency=2) as sup:
        mine = [await submit(sup, alice, f"a{i}") for i in range(5)]
        theirs = await submit(sup, bob, "b")
        await runner.wait_until(lambda: runner.active == 3)
        await trio.sleep(10)
        started = [task_id for task_id, _ in runner.starts]
        assert runner.active == 3 and sorted(started) == sorted([mine[0].id, mine[1].id, theirs.id])
        runner.release.set()
        for task in mine:
            await wait_status(hub, task.id, TaskStatus.SUCCEEDED)
        assert runner.max_active == 3  # alice never had more than 2 at once; a slot stayed free


async def test_a_task_submitted_to_a_free_slot_is_created_running_in_one_commit(
    autojump_clock, store, hub, alice
):
    if store.shared:
        pytest.skip("on a shared store tasks start by claims")
    batches = []
    store.add_listener(lambda events: batches.append([(e.type, e.data.get("status")) for e in events]))
    runner = Hang()
    async with running_supervisor(store, hub, runner, concurrency=1) as sup:
        first = await submit(sup, alice)
        assert (first.status, first.attempt, first.node_id) == (TaskStatus.RUNNING, 1, sup.node.id)
        second = await submit(sup, alice)  # no slot left: it waits its turn
        assert second.status is TaskStatus.QUEUED
        await runner.wait_until(lambda: runner.active == 1)
        await trio.sleep(5)
        assert [task_id for task_id, _ in runner.starts] == [first.id]
        runner.release.set()
        await wait_status(hub, second.id, TaskStatus.SUCCEEDED)
    created = [("task.created", None), ("task.status", "queued")]
    assert batches[:2] == [[*created, ("task.status", "running")], created]
    assert (await store.get_task(first.id)).status is TaskStatus.SUCCEEDED


async def test_a_task_created_running_as_the_node_drains_goes_back_to_the_queue(
    autojump_clock, store, hub, alice
):
    if store.shared:
        pytest.skip("on a shared store tasks start by claims")
    runner = SucceedAfter(1)
    async with running_supervisor(store, hub, runner, concurrency=1) as sup:

        async def drain() -> None:
            sup.drain()

        # The drain comes while the task is being written (already as running).
        task, _ = await in_one_batch(store, lambda: submit(sup, alice), drain)
        assert (task.status, task.attempt, task.reason) == (TaskStatus.QUEUED, 0, "node draining")
        await trio.sleep(5)
        assert runner.starts == []
        sup.resume()
        await wait_status(hub, task.id, TaskStatus.SUCCEEDED)
    assert (await store.get_task(task.id)).attempt == 1
    statuses = [e.data["status"] for e in await store.read_events(task.id) if e.type == "task.status"]
    assert statuses == ["queued", "running", "queued", "running", "succeeded"]


async def test_a_task_submitted_as_the_previous_outcome_commits_starts_in_its_slot(
    autojump_clock, store, hub, alice
):
    # The phone's pattern (and the one-by-one benchmark's): the next task is sent the moment
    # the last one finished. The finished attempt still winds down in that moment; its slot is
    # free once its outcome committed, so each next task is created running in one commit.
    if store.shared:
        pytest.skip("on a shared store tasks start by claims")
    finished = trio.Event()
    hub.add_global_listener(lambda events: any(e.type == "task.finished" for e in events) and finished.set())
    async with running_supervisor(store, hub, SucceedAfter(0), concurrency=1) as sup:
        for _ in range(20):
            finished = trio.Event()
            task = await submit(sup, alice)
            assert task.status is TaskStatus.RUNNING
            await finished.wait()


async def test_a_task_queued_again_while_its_attempt_winds_down_runs_once_at_a_time(
    autojump_clock, store, hub, alice, monkeypatch
):
    # The outcome has committed and the ending attempt looks for the user's message when a
    # follow-up queues the task again. On a shared store a claim may take it at once: the next
    # attempt waits for the last one to be gone, and the ending attempt leaves the task to it.
    runner = MessagedAsItEnds()
    looking, go_on = trio.Event(), trio.Event()
    pending_inputs = store.pending_inputs

    async def held_pending_inputs(task_id):
        looking.set()
        await go_on.wait()
        return await pending_inputs(task_id)

    monkeypatch.setattr(store, "pending_inputs", held_pending_inputs)
    async with running_supervisor(store, hub, runner, concurrency=1) as sup:
        task = await submit(sup, alice)
        await looking.wait()
        first = sup._running.get(task.id)
        await sup.requeue(task.id, reason="follow-up", fresh_attempts=True)
        await trio.sleep(5)  # claim polls on a shared store
        go_on.set()
        await first.done.wait()
        await runner.wait_until(lambda: len(runner.starts) == 2)
        assert runner.max_active == 1
        assert (await store.get_task(task.id)).status is TaskStatus.RUNNING
        runner.release.set()
        await wait_status(hub, task.id, TaskStatus.SUCCEEDED)
        await sup.wait_idle()
        assert sup.stats()["running"] == 0 and sup._running.holding() == 0 and not sup._running
    statuses = [e.data["status"] for e in await store.read_events(task.id) if e.type == "task.status"]
    assert statuses == ["queued", "running", "succeeded", "queued", "running", "succeeded"]
