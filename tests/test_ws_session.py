"""The WebSocket session without a socket: seam, overflow, coalescing, on trio's mock clock."""

from __future__ import annotations

import json

import pytest
import trio

from daemon.store import NewEvent
from daemon.web.fanout import Fanout
from daemon.web.session import CLOSE_AUTH_FAILED, Session, State

from .helpers import Wakeup


class NoLimit:
    def take(self, key) -> float:
        return 0.0


async def make_session(nursery, store, hub, user, *, queue_limit=1000, fanout=None):
    fanout = fanout or Fanout(hub, store)

    async def authenticate(token):
        return user if token == "good" else None

    wake = Wakeup()
    session = wake.session = Session(
        fanout=fanout,
        store=store,
        spawn=nursery.start_soon,
        authenticate=authenticate,
        limiter=NoLimit(),
        wake=wake,
        queue_limit=queue_limit,
    )
    await session.open("good")
    return session, fanout


async def drain(session, out: list[dict], stop_after_seq: int | None = None) -> None:
    """Play the writer of a slow socket: take one item a turn, 'send' it, record what the
    client gets. Raises AssertionError, rather than wait forever, once ``stop_after_seq`` can no
    longer come: the queue overflowed (a ``resync``: the subscription is dropped) or the
    session closed."""
    while True:
        if not session.queue:
            if session.state is State.CLOSED:
                raise AssertionError(f"the session closed ({session.close_code}) before seq {stop_after_seq}")
            await session.wake.wait()
            continue
        item, payload = session.take()
        out.append(json.loads(payload))
        session.sent(item)
        await trio.lowlevel.checkpoint()
        if stop_after_seq is not None and out[-1].get("seq") == stop_after_seq:
            return
        if stop_after_seq is not None and out[-1]["type"] == "resync":
            raise AssertionError(f"the queue overflowed before seq {stop_after_seq}: {out[-1]}")


async def test_replay_meets_live_without_gap_or_duplicate(store, hub, alice, autojump_clock):
    task, _ = await store.create_task(user_id=alice.id, repo_url="file:///r", prompt="p")
    await store.append_events(task.id, [NewEvent("agent.text", {"i": i}) for i in range(700)])
    received: list[dict] = []
    async with trio.open_nursery() as nursery:
        session, _ = await make_session(nursery, store, hub, alice, queue_limit=64)

        async def produce() -> None:
            for i in range(100):  # appended while the replay pages through the first 702
                # Paced as a client that keeps up: unpaced, 3 events a commit against drain's one
                # message a turn overflow the queue once the replay is live whenever the writer
                # commits within two turns (as under CPU load): a resync, by design, not a seam.
                await session.out.wait_room(lambda: True)
                await store.append_events(task.id, [NewEvent("agent.text", {"j": i})] * 3)

        nursery.start_soon(produce)
        await session.handle(json.dumps({"type": "subscribe", "task_id": task.id, "after": 5}))
        await drain(session, received, stop_after_seq=1002)
        nursery.cancel_scope.cancel()
    assert [m["seq"] for m in received] == list(range(6, 1003))
    assert session.resyncs == 0 and session.max_queued <= 64


async def test_overflow_drops_the_feed_and_resync_says_what_was_sent(store, hub, alice, autojump_clock):
    task, _ = await store.create_task(user_id=alice.id, repo_url="file:///r", prompt="p")
    async with trio.open_nursery() as nursery:
        session, fanout = await make_session(nursery, store, hub, alice, queue_limit=8)
        await session.handle(json.dumps({"type": "subscribe", "task_id": task.id, "after": 0}))
        received: list[dict] = []
        await drain(session, received, stop_after_seq=2)  # the replay: created, status
        await store.append_events(task.id, [NewEvent("agent.text", {"i": i}) for i in range(20)])
        assert session.resyncs == 1 and len(session.queue) == 1 and session.max_queued == 8
        assert task.id not in fanout.channels  # the live feed is dropped, not buffered
        _, payload = session.take()
        assert json.loads(payload) == {"type": "resync", "task_id": task.id, "after": 2}
        nursery.cancel_scope.cancel()


async def test_drain_fails_at_once_when_the_seq_it_waits_for_can_no_longer_come(
    store, hub, alice, autojump_clock
):
    # The writer of a slow socket outpaced by live events: the queue overflows and the
    # subscription is dropped. drain must say so, not wait forever for seq 12 (it once hung
    # until pytest-timeout killed it: test_replay_meets_live_... under CPU load).
    task, _ = await store.create_task(user_id=alice.id, repo_url="file:///r", prompt="p")
    received: list[dict] = []
    async with trio.open_nursery() as nursery:
        session, _ = await make_session(nursery, store, hub, alice, queue_limit=4)
        await session.handle(json.dumps({"type": "subscribe", "task_id": task.id, "after": 0}))
        await drain(session, received, stop_after_seq=2)
        await store.append_events(task.id, [NewEvent("agent.text", {"i": i}) for i in range(10)])
        with trio.fail_after(60), pytest.raises(AssertionError, match="overflowed before seq 12"):
            await drain(session, received, stop_after_seq=12)
        session.close(CLOSE_AUTH_FAILED, "gone")
        with trio.fail_after(60), pytest.raises(AssertionError, match="session closed"):
            await drain(session, received, stop_after_seq=12)
        nursery.cancel_scope.cancel()


async def test_text_deltas_flush_at_most_every_interval(store, hub, alice, autojump_clock):
    task, _ = await store.create_task(user_id=alice.id, repo_url="file:///r", prompt="p")
    async with trio.open_nursery() as nursery:
        fanout = Fanout(hub, store, delta_interval_s=0.05)
        nursery.start_soon(fanout.run)
        session, _ = await make_session(nursery, store, hub, alice, fanout=fanout)
        await session.handle(json.dumps({"type": "subscribe", "task_id": task.id, "after": 2}))
        await trio.sleep(1)  # the empty replay ends; the subscription is live
        start = trio.current_time()
        arrivals: list[tuple[float, str]] = []

        async def consume() -> None:
            while True:
                await session.wake.wait()
                while session.queue:
                    arrivals.append(
                        (trio.current_time() - start, json.loads(session.take()[1])["data"]["text"])
                    )

        nursery.start_soon(consume)
        for i in range(10):  # 10 deltas in 20 ms
            hub.publish_ephemeral(task.id, "agent.text_delta", {"text": str(i)})
            await trio.sleep(0.002)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert arrivals[0] == (0.0, "0")
    assert len(arrivals) == 2 and arrivals[1][1] == "123456789"
    assert abs(arrivals[1][0] - 0.05) < 1e-9


async def test_revoked_token_closes_with_4401_at_the_next_check(store, hub, alice, autojump_clock):
    async with trio.open_nursery() as nursery:
        session, _ = await make_session(nursery, store, hub, alice)
        session.token = "revoked"
        await session.recheck()
        assert session.state is State.CLOSED and session.close_code == CLOSE_AUTH_FAILED
        nursery.cancel_scope.cancel()


async def test_a_live_event_past_the_next_seq_sends_the_subscription_back_to_the_store(
    store, hub, alice, autojump_clock
):
    task, _ = await store.create_task(user_id=alice.id, repo_url="file:///r", prompt="p")
    received: list[dict] = []
    async with trio.open_nursery() as nursery:
        session, fanout = await make_session(nursery, store, hub, alice)
        await session.handle(json.dumps({"type": "subscribe", "task_id": task.id, "after": 0}))
        await drain(session, received, stop_after_seq=2)
        await trio.testing.wait_all_tasks_blocked()  # the replay ended: the subscription is live
        assert session.subs[task.id].live
        channel = fanout.channels[task.id]
        hub.remove(task.id, channel)  # two commits whose live delivery is missed...
        await store.append_events(task.id, [NewEvent("agent.text", {"i": i}) for i in range(2)])
        hub.add(task.id, channel)
        await store.append_events(task.id, [NewEvent("agent.text", {"i": 2})])  # ...then seq 5
        await drain(session, received, stop_after_seq=5)
        nursery.cancel_scope.cancel()
    assert [m["seq"] for m in received] == [1, 2, 3, 4, 5]


async def test_an_operators_tasks_feed_overflows_into_a_resync_and_is_taken_again(
    store, hub, alice, bob, autojump_clock
):
    root = await store.upsert_user("root", is_operator=True)
    async with trio.open_nursery() as nursery:
        session, fanout = await make_session(nursery, store, hub, root, queue_limit=4)
        await session.handle(json.dumps({"type": "subscribe_tasks"}))
        for user in (alice, bob, alice):  # 6 status events of other users' tasks, unread
            await store.create_task(user_id=user.id, repo_url="file:///r", prompt="p")
        assert session.resyncs == 1 and not session.watching and not fanout.watchers
        received: list[dict] = []
        while session.queue:
            received.append(json.loads(session.take()[1]))
        assert received == [{"type": "resync", "task_id": None, "after": None}]
        await session.handle(json.dumps({"type": "subscribe_tasks"}))  # as the page does
        task, _ = await store.create_task(user_id=bob.id, repo_url="file:///r", prompt="p")
        await drain(session, received, stop_after_seq=2)
        nursery.cancel_scope.cancel()
    assert [(m["task_id"], m["event"], m["data"]["user_id"]) for m in received[1:]] == [
        (task.id, "task.created", bob.id),
        (task.id, "task.status", bob.id),
    ]


class Watcher:
    """A session as the fan-out sees one: what ``notify`` handed it."""

    def __init__(self) -> None:
        self.got: list[tuple[str, int | None]] = []
        self.notified = trio.Event()

    def notify(self, task_id: str, payload: str) -> None:
        message = json.loads(payload)
        self.got.append((message["event"], message["data"].get("user_id")))
        self.notified.set()


async def test_status_events_go_by_the_owner_they_carry_and_an_ownerless_ones_is_looked_up(
    store, hub, alice, bob, autojump_clock
):
    fanout = Fanout(hub, store)  # its background task is not running: no lookup can happen
    alices, bobs, everyone = Watcher(), Watcher(), Watcher()
    fanout.watch(alice.id, alices)
    fanout.watch(bob.id, bobs)
    fanout.watch(None, everyone)
    task, _ = await store.create_task(user_id=alice.id, repo_url="file:///r", prompt="p")
    assert alices.got == everyone.got == [("task.created", alice.id), ("task.status", alice.id)]
    assert bobs.got == []
    # A status event without its owner (written by an older agentd sharing the store): the
    # operator's feed gets it at once, the owner's once the store says whose task it is.
    (old,) = await store.read_events(task.id, 1, 1)
    ownerless = type(old)(old.task_id, 3, old.ts, "task.status", {"status": "queued", "attempt": 0})
    hub.publish_remote([ownerless])
    assert everyone.got[-1] == ("task.status", None) and len(alices.got) == 2
    alices.notified = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fanout.run)
        with trio.fail_after(5):
            await alices.notified.wait()
        nursery.cancel_scope.cancel()
    assert alices.got[-1] == ("task.status", None) and bobs.got == []
