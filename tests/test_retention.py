"""Retention on the store: what goes after retention_days, what stays, and seqs that go on.

Both backends (tests/backends.py); time is the store's clock following trio's mock clock.
"""

from __future__ import annotations

import functools

import trio

from daemon.retention import BATCH_ROWS, START_DELAY_S, retain_periodically, run_retention
from daemon.states import TaskStatus
from daemon.store import NewEvent, Transition, Usage

from .conftest import EPOCH, fake_wall

DAY = 86400.0


async def _finished_task(store, user, prompt: str, *, events: int = 3, calls: int = 2) -> str:
    """A task that ran (a conversation, tool calls, events, an input taken) and succeeded."""
    task, _ = await store.create_task(user_id=user.id, repo_url="r", prompt=prompt)
    await store.transition(Transition(task.id, TaskStatus.RUNNING, attempt_delta=1))
    await store.append_message(task.id, "user", [{"type": "text", "text": prompt}])
    usage = Usage(input_tokens=100, output_tokens=20, cost_usd=0.25)
    await store.append_message(task.id, "assistant", [{"type": "text", "text": "ok"}], usage=usage)
    for i in range(calls):
        await store.start_tool_call(task.id, f"toolu_{i}", "bash", {"command": "ls"})
        await store.finish_tool_call(task.id, f"toolu_{i}", "out", False)
    await store.append_events(task.id, [NewEvent("agent.text", {"text": f"step {i}"}) for i in range(events)])
    await store.add_input(task.id, "and also this")
    await store.take_inputs(task.id)
    await store.update_task(task.id, branch=f"agentd/{prompt}", pr_url=f"https://example.com/pr/{prompt}")
    await store.transition(Transition(task.id, TaskStatus.SUCCEEDED))
    return task.id


async def _unfinished_task(store, user, target: TaskStatus) -> str:
    task, _ = await store.create_task(user_id=user.id, repo_url="r", prompt=target.value)
    await store.transition(Transition(task.id, TaskStatus.RUNNING, attempt_delta=1))
    await store.append_message(task.id, "user", [{"type": "text", "text": "go"}])
    if target is not TaskStatus.RUNNING:
        await store.transition(Transition(task.id, target, attempt_delta=-1))
    return task.id


async def _detail_counts(store, task_id: str) -> tuple[int, int, int]:
    events = await store.read_events(task_id, 0, 10_000)
    return len(events), len(await store.list_messages(task_id)), len(await store.list_tool_calls(task_id))


async def _add_delivery(store, delivery_id: str, status: str) -> None:
    """An outbox row as the sender leaves it (written here: only its columns matter)."""
    p, now = store.queries.RETENTION.p, fake_wall()
    sql = (
        "INSERT INTO outbox (id, target_id, kind, payload, status, next_at, created_at, "
        f"delivered_at, pending_since) VALUES ({p}, 'wh_x', 'webhook', '{{}}', {p}, {p}, {p}, {p}, {p})"
    )
    delivered = now if status == "delivered" else None
    await store._write(lambda conn: conn.execute(sql, (delivery_id, status, now, now, delivered, now)))


async def _delivery_ids(store) -> set[str]:
    return {
        row[0] for row in await store._read(lambda conn: conn.execute("SELECT id FROM outbox").fetchall())
    }


async def test_retention_removes_old_finished_history_and_dead_tokens_only(store, alice, autojump_clock):
    old = await _finished_task(store, alice, "old", events=BATCH_ROWS + 7, calls=3)  # several batches
    running = await _unfinished_task(store, alice, TaskStatus.RUNNING)
    waiting = await _unfinished_task(store, alice, TaskStatus.WAITING_INPUT)
    await store.add_token(alice.id, "revoked-old")
    await store.revoke_token("revoked-old")
    await store.add_token(alice.id, "expired-old", expires_at=fake_wall() + 1)
    await store.add_token(alice.id, "live", expires_at=fake_wall() + 400 * DAY)
    for number, status in enumerate(("delivered", "failed", "pending")):
        await _add_delivery(store, f"dl_{number}", status)
    await store.put_one_time("sign-in", "k", "v", ttl_s=60, limit=10)
    await trio.sleep(40 * DAY)
    young = await _finished_task(store, alice, "young")
    await store.add_token(alice.id, "revoked-young")
    await store.revoke_token("revoked-young")
    await _add_delivery(store, "dl_9", "delivered")
    before = await store.get_task(old)
    events, messages, calls = await _detail_counts(store, old)
    young_before = await _detail_counts(store, young)

    report = await run_retention(store, 30)

    assert report.tasks_compacted == 1
    assert report.removed == {
        "task_history": (events - 1) + calls + messages + 1,  # events but the last; the input
        "api_tokens": 2,
        "share_links": 0,  # tests/test_retention_shares.py
        "outbox_deliveries": 2,
        "one_time_values": 1,
    }
    # The old finished task: its last event (the seq's anchor), its summary, the mark.
    assert await _detail_counts(store, old) == (1, 0, 0)
    (last,) = await store.read_events(old, 0, 10)
    assert last.seq == before.last_seq and last.type == "task.finished"
    after = await store.get_task(old)
    assert after.compacted_at == fake_wall()
    assert after.evolve(compacted_at=None) == before  # status, usage, branch, PR, times: all kept
    assert after.public()["compacted_at"] == fake_wall()
    assert after.usage.cost_usd == 0.25 and after.pr_url == "https://example.com/pr/old"
    # Young, running and waiting tasks keep everything.
    assert await _detail_counts(store, young) == young_before
    for task_id in (running, waiting):
        assert (await store.get_task(task_id)).compacted_at is None
        assert len(await store.list_messages(task_id)) == 1
    # Tokens: the old dead ones went; the live one and the recently revoked one stay.
    assert await store.user_by_token_hash("live") is not None
    assert await _delivery_ids(store) == {"dl_2", "dl_9"}  # the pending one and the young one
    # Run again: nothing left to do.
    again = await run_retention(store, 30)
    assert again.tasks_compacted == 0 and sum(again.removed.values()) == 0


async def test_a_follow_up_on_a_compacted_task_goes_on_after_its_last_seq(store, alice, autojump_clock):
    task_id = await _finished_task(store, alice, "old")
    await trio.sleep(31 * DAY)
    last_seq = (await store.get_task(task_id)).last_seq
    await run_retention(store, 30)
    message = await store.add_input(task_id, "one more thing")
    assert message.seq == last_seq + 1
    queued = await store.transition(Transition(task_id, TaskStatus.QUEUED))
    assert queued.last_seq == last_seq + 2 and queued.compacted_at is not None
    seqs = [event.seq for event in await store.read_events(task_id, 0, 100)]
    assert seqs == [last_seq, last_seq + 1, last_seq + 2]
    # Back at work it is not touched; finished and old again, its new history goes too.
    assert (await run_retention(store, 30)).tasks_compacted == 0
    await trio.sleep(60)
    await store.transition(Transition(task_id, TaskStatus.RUNNING, attempt_delta=1))
    await store.append_message(task_id, "user", [{"type": "text", "text": "one more thing"}])
    await store.transition(Transition(task_id, TaskStatus.SUCCEEDED))
    await trio.sleep(31 * DAY)
    assert (await run_retention(store, 30)).tasks_compacted == 1
    assert await store.list_messages(task_id) == []


async def test_zero_days_keeps_every_history(store, alice, autojump_clock):
    task_id = await _finished_task(store, alice, "old")
    await trio.sleep(400 * DAY)
    counts = await _detail_counts(store, task_id)
    report = await run_retention(store, 0)
    assert report.tasks_compacted == 0 and await _detail_counts(store, task_id) == counts


async def test_the_daemon_runs_it_a_minute_after_the_start_then_every_interval(store, alice, autojump_clock):
    first = await _finished_task(store, alice, "first")
    await trio.sleep(31 * DAY)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(retain_periodically, store, 30, DAY))
        await trio.sleep(START_DELAY_S - 1)
        assert (await store.get_task(first)).compacted_at is None
        await trio.sleep(2)
        assert (await store.get_task(first)).compacted_at == EPOCH + 31 * DAY + START_DELAY_S
        second = await _finished_task(store, alice, "second")
        await trio.sleep(31 * DAY)  # a run a day: the first after 30 days took it
        compacted = (await store.get_task(second)).compacted_at
        assert compacted is not None and (compacted - EPOCH - START_DELAY_S) % DAY == 0
        nursery.cancel_scope.cancel()
