"""The store and the event log on a real SQLite file: seq, replay-then-live, recovery, locking."""

from __future__ import annotations

import apsw
import pytest
import trio
import trio.lowlevel

from daemon.errors import InvalidTransition, NotFound
from daemon.events import EventHub
from daemon.states import TaskStatus
from daemon.store import Claim, DataDirLocked, NewEvent, SqliteStore, Transition, Usage
from daemon.store.schema import LATEST
from daemon.supervisor import Backoff

from .conftest import fake_wall
from .helpers import running_supervisor, submit, wait_status
from .runners import FailTimes, Hang, SucceedAfter


@pytest.mark.sqlite_only("WAL and PRAGMA user_version")
async def test_schema_is_migrated_and_wal_is_on(store):
    conn = apsw.Connection(str(store.path))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"users", "api_tokens", "tasks", "events", "messages", "tool_calls", "schema_migrations"} <= tables
    conn.close()


@pytest.mark.sqlite_only("the data-dir lock")
async def test_a_second_store_on_the_same_data_dir_is_refused(store):
    with pytest.raises(DataDirLocked, match="already using the data dir"):
        await SqliteStore.open(store.data_dir)


async def test_event_seq_is_gap_free_under_concurrent_appends(store, alice):
    task, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    other, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")

    async def append_many(task_id: str, n: int) -> None:
        for i in range(n):
            await store.append_events(task_id, [NewEvent("agent.text", {"text": str(i)})])

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(append_many, task.id, 40)
            nursery.start_soon(append_many, other.id, 40)
    for task_id in (task.id, other.id):
        events = await store.read_events(task_id, 0, 10_000)
        assert [e.seq for e in events] == list(range(1, 203))
        assert (await store.get_task(task_id)).last_seq == 202


async def test_transitions_are_validated_in_one_place(store, alice):
    task, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    with pytest.raises(InvalidTransition, match="a queued task cannot become succeeded"):
        await store.transition(Transition(task.id, TaskStatus.SUCCEEDED))
    with pytest.raises(NotFound):
        await store.transition(Transition("nope", TaskStatus.RUNNING))
    before = await store.read_events(task.id)
    assert (await store.get_task(task.id)).status is TaskStatus.QUEUED
    assert await store.read_events(task.id) == before  # a refused change appends nothing


async def test_idempotency_key_returns_the_first_task(store, alice, bob):
    first, created = await store.create_task(user_id=alice.id, repo_url="r", prompt="p", idempotency_key="k1")
    again, created_again = await store.create_task(
        user_id=alice.id, repo_url="r", prompt="other", idempotency_key="k1"
    )
    bobs, _ = await store.create_task(user_id=bob.id, repo_url="r", prompt="p", idempotency_key="k1")
    assert created and not created_again and again.id == first.id and again.prompt == "p"
    assert bobs.id != first.id


async def test_follow_replays_then_goes_live_without_gap_or_duplicate(store, hub, alice):
    task, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    seen: list[int] = []
    total = 2 + 300

    async def writer() -> None:
        for i in range(300):
            await store.append_events(task.id, [NewEvent("agent.text", {"text": str(i)})])
            if i % 7 == 0:
                await trio.lowlevel.checkpoint()

    async def reader() -> None:
        async for event in hub.follow(task.id, after=0):
            seen.append(event.seq)
            if event.seq == total:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.lowlevel.checkpoint()
        nursery.start_soon(reader)
    assert seen == list(range(1, total + 1))


async def test_follow_from_the_middle_and_after_overflow_loses_nothing(store, alice):
    hub = EventHub(store)
    task, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    await store.append_events(task.id, [NewEvent("agent.text", {"i": i}) for i in range(10)])
    seen: list[int] = []
    follower = hub.follow(task.id, after=5, buffer=4)
    seen.append((await follower.__anext__()).seq)
    # While the reader is away, far more events arrive than its buffer holds.
    for i in range(50):
        await store.append_events(task.id, [NewEvent("agent.text", {"i": i})])
    async for event in follower:
        seen.append(event.seq)
        if event.seq == 62:
            break
    await follower.aclose()
    assert seen == list(range(6, 63))
    assert hub.subscriber_count() == 0


async def test_ephemeral_events_are_live_only(store, hub, alice):
    task, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    follower = hub.follow(task.id, after=2, ephemeral=True)
    got = []

    async def read() -> None:
        async for item in follower:
            got.append(item)
            if len(got) == 2:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        hub.publish_ephemeral(task.id, "agent.text_delta", {"text": "he"})
        await store.append_events(task.id, [NewEvent("agent.text", {"text": "hello"})])
    assert sorted(item.type for item in got) == ["agent.text", "agent.text_delta"]
    assert [e.type for e in await store.read_events(task.id)] == ["task.created", "task.status", "agent.text"]


async def test_recovery_after_a_crash_requeues_running_and_keeps_retry_due_times(tmp_path, autojump_clock):
    data = tmp_path / "data"
    store = await SqliteStore.open(data)
    store.now = fake_wall
    hub = EventHub(store)
    alice = await store.upsert_user("alice")
    hang = Hang()
    async with running_supervisor(store, hub, hang) as sup:
        stuck = await submit(sup, alice, "stuck")
        await hang.wait_until(lambda: hang.active == 1)
    # The supervisor was torn down without a drain: as after kill -9, the task is still running.
    assert (await store.get_task(stuck.id)).status is TaskStatus.RUNNING
    async with running_supervisor(store, hub, FailTimes(1), backoff=Backoff(1000, 1000, 5)) as sup:
        flaky = await submit(sup, alice, "flaky")
        await wait_status(hub, flaky.id, TaskStatus.WAITING_RETRY)
        # The stuck task, recovered here, must not be cut off mid-attempt by this teardown.
        await wait_status(hub, stuck.id, TaskStatus.SUCCEEDED)
    due_at = (await store.get_task(flaky.id)).due_at
    await store.aclose()

    # A second daemon opens the same file.
    store = await SqliteStore.open(data)
    store.now = fake_wall
    hub = EventHub(store)
    runner = SucceedAfter(1)
    async with running_supervisor(store, hub, runner) as sup:
        await wait_status(hub, stuck.id, TaskStatus.SUCCEEDED)
        recovered = await store.get_task(stuck.id)
        assert recovered.attempt == 2  # the interrupted attempt counts
        assert (await store.get_task(flaky.id)).status is TaskStatus.WAITING_RETRY
        await wait_status(hub, flaky.id, TaskStatus.SUCCEEDED)
        assert fake_wall() >= due_at
    events = await store.read_events(stuck.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    statuses = [e.data["status"] for e in events if e.type == "task.status"]
    assert statuses == ["queued", "running", "queued", "running", "succeeded"]
    assert await store.integrity_check() == "ok"
    await store.aclose()


async def test_a_crashed_task_on_its_last_attempt_fails_as_interrupted(store, hub, alice, autojump_clock):
    hang = Hang()
    async with running_supervisor(store, hub, hang, backoff=Backoff(1, 1, max_attempts=1)) as sup:
        task = await submit(sup, alice)
        await hang.wait_until(lambda: hang.active == 1)
    async with running_supervisor(store, hub, SucceedAfter(0), backoff=Backoff(1, 1, max_attempts=1)):
        await wait_status(hub, task.id, TaskStatus.FAILED)
    assert (await store.get_task(task.id)).reason == "interrupted"


@pytest.mark.sqlite_only("agentctl backup copies the SQLite file")
async def test_backup_is_a_consistent_copy(store, alice, tmp_path):
    await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    target = tmp_path / "backup.db"
    await store.backup(target)
    conn = apsw.Connection(str(target))
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 1
    conn.close()
    with pytest.raises(FileExistsError):
        await store.backup(target)


async def test_an_agent_turn_its_usage_and_its_events_commit_together(store, alice):
    task, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    writes: list[float] = []
    store.observe_writes(writes.append)
    usage = Usage(input_tokens=10, output_tokens=5, cost_usd=0.01)
    await store.append_message(
        task.id,
        "assistant",
        [{"type": "text", "text": "hi"}],
        stop_reason="tool_use",
        usage=usage,
        events=[NewEvent("agent.text", {"text": "hi"}), NewEvent("agent.usage", {"input_tokens": 10})],
    )
    await store.start_tool_call(
        task.id, "t1", "view", {"path": "x"}, events=[NewEvent("agent.tool_call", {"id": "t1"})]
    )
    await store.finish_tool_call(
        task.id, "t1", "ok", False, events=[NewEvent("agent.tool_result", {"id": "t1"})]
    )
    assert len(writes) == 3  # one commit each
    assert (await store.get_task(task.id)).usage == usage
    assert [m["role"] for m in await store.list_messages(task.id)] == ["assistant"]
    assert [(c["status"], c["output"]) for c in await store.list_tool_calls(task.id)] == [("done", "ok")]
    events = await store.read_events(task.id)
    assert [e.type for e in events[-4:]] == [
        "agent.text",
        "agent.usage",
        "agent.tool_call",
        "agent.tool_result",
    ]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    # All or nothing: the turn of a task that does not exist leaves no message behind.
    with pytest.raises(NotFound):
        await store.append_message(
            "nope",
            "assistant",
            [{"type": "text", "text": "x"}],
            events=[NewEvent("agent.text", {"text": "x"})],
        )
    assert await store.list_messages("nope") == []


async def test_inbox_keeps_user_messages_until_taken(store, alice):
    task, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    event = await store.add_input(task.id, "use tabs")
    await store.add_input(task.id, "and add a test")
    assert event.type == "user.message" and event.data == {"text": "use tabs"}
    assert await store.take_inputs(task.id) == ["use tabs", "and add a test"]
    assert await store.take_inputs(task.id) == []
    with pytest.raises(NotFound):
        await store.add_input("missing", "hello")


async def test_claims_take_users_in_turn_and_hold_a_users_cap(store, alice, bob):
    async def create(user, prompt):
        task, _ = await store.create_task(user_id=user.id, repo_url="r", prompt=prompt)
        return task.id

    a = [await create(alice, f"a{i}") for i in range(3)]
    b = await create(bob, "b0")
    claimed = await store.claim_tasks("n1", 3, user_limit=2)
    assert [t.id for t in claimed] == [a[0], b, a[1]]
    assert all(t.status is TaskStatus.RUNNING and t.node_id == "n1" and t.attempt == 1 for t in claimed)
    assert await store.claim_tasks("n2", 5, user_limit=2) == []  # alice is at her cap
    await store.transition(Transition(a[0], TaskStatus.SUCCEEDED, claim=Claim("n1", 1)))
    (third,) = await store.claim_tasks("n2", 5, user_limit=2)
    assert third.id == a[2] and third.node_id == "n2"
    running = [e.data for e in await store.read_events(a[2]) if e.type == "task.status"][-1]
    assert running == {"status": "running", "attempt": 1, "node": "n2", "user_id": alice.id}


async def test_a_result_and_its_event_are_written_together(store, alice):
    """``update_task(..., events=...)``: both or neither (a delivered push recorded but never
    announced would stay unannounced: the resumed task sees it recorded)."""
    task, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    seen: list[str] = []
    store.add_listener(lambda events: seen.extend(e.type for e in events))
    pushed = NewEvent("git.pushed", {"branch": "agentd/x", "commit": "c1"})
    updated = await store.update_task(task.id, branch="agentd/x", diff={"commit": "c1"}, events=[pushed])
    events = await store.read_events(task.id)
    assert updated.branch == "agentd/x" and events[-1].type == "git.pushed"
    assert updated.last_seq == events[-1].seq and seen == ["git.pushed"]

    unencodable = NewEvent("git.pr_opened", {"url": object()})
    with pytest.raises(TypeError):
        await store.update_task(task.id, pr_url="https://example.test/pr/1", events=[unencodable])
    after = await store.get_task(task.id)
    assert after.pr_url is None and after.last_seq == events[-1].seq
