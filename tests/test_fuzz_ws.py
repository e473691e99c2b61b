"""Fuzzing the WebSocket protocol (design §6): the sans-I/O Session, then a real socket.

The Session gets generated message sequences: any JSON, text that is not JSON, binary frames,
wrong types, unknown types, huge and odd ``after`` values, subscribe / unsubscribe storms, other
users' tasks, auth in the wrong place. Properties:

- no exception escapes ``handle`` or a replay it starts;
- every message gets exactly the answer the protocol documents: an ``error`` with the right code,
  a ``pong``, the events asked for (own task, seq > after, in order, no gap), nothing (unsubscribe,
  subscribe_tasks), or a close with the documented code (1008 before auth or for binary, 4401 for
  a bad token);
- after any garbage, a well-formed subscribe still replays the whole task;
- a closed session leaves nothing behind in the fan-out.

Then the same generator drives a real connection through trio-websocket against the daemon.
"""

from __future__ import annotations

import json
from typing import Any

import trio
from hypothesis import example, given, strategies as st
from trio_websocket import ConnectionClosed

from daemon.store import NewEvent
from daemon.web.fanout import Fanout
from daemon.web.session import CLOSE_AUTH_FAILED, CLOSE_POLICY, Session, State
from daemon.web.ws import MAX_MESSAGE_CHARS

from .fakes.phone import recv_json, running_daemon, send_json
from .fuzz_support import (
    HUGE_INTS,
    TEXT,
    deep_nesting,
    drive,
    dumps,
    fuzz_settings,
    json_values,
    on_loop,
    seeded,
    tally,
)
from .helpers import Wakeup

EVENTS = 30  # alice's task: task.created + 29 more
MAX_SUBS = 4
MAX_SEQ = 2**63 - 1


class NoLimit:
    def take(self, key: Any) -> float:
        return 0.0


# --------------------------------------------------------------------------- messages


def messages(own: str, theirs: str) -> st.SearchStrategy[str | bytes]:
    task_id = st.one_of(
        st.sampled_from([own, theirs, "01m8bz0000000000000000000", "", "a" * 65]), json_values(4), TEXT
    )
    after = st.one_of(st.integers(0, EVENTS + 2), st.integers(-3, -1), HUGE_INTS, json_values(4))
    subscribe = st.fixed_dictionaries(
        {"type": st.just("subscribe")}, optional={"task_id": task_id, "after": after}
    )
    well_formed = st.one_of(
        subscribe,
        subscribe,
        subscribe,
        st.fixed_dictionaries({"type": st.just("unsubscribe")}, optional={"task_id": task_id}),
        st.sampled_from([{"type": t} for t in ("subscribe_tasks", "unsubscribe_tasks", "ping")]),
        st.fixed_dictionaries({"type": st.just("auth")}, optional={"token": json_values(4)}),
    ).map(dumps)
    garbage = st.one_of(
        json_values().map(dumps),  # mostly not an object with a string "type"
        st.dictionaries(st.just("type"), json_values(3)).map(dumps),
        st.fixed_dictionaries({"type": TEXT}).map(dumps),  # unknown types
        TEXT,
        deep_nesting(),
        st.binary(max_size=16),
        st.sampled_from(
            [
                "",
                "{",
                "[]",
                "null",
                '{"type":"ping"',
                "9" * 5000,
                "NaN",
                '{"type":"subscribe","task_id":"x","after":1e400}',
            ]
        ),
    )
    return st.one_of(well_formed, well_formed, garbage)


BINARY = object()


def parse(raw: str | bytes) -> Any:
    if not isinstance(raw, str):
        return BINARY
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def expected(message: Any, state: State, subs: int, own: str, theirs: str) -> str:
    """What the protocol says this message gets, as ``kind`` or ``kind:code``."""
    if message is BINARY:  # a binary frame, even an empty one
        return f"close:{CLOSE_POLICY}"
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return f"close:{CLOSE_POLICY}" if state is State.AWAITING_AUTH else "error:invalid_message"
    kind = message["type"]
    if state is State.AWAITING_AUTH:
        if kind != "auth":
            return f"close:{CLOSE_POLICY}"
        return "silent" if message.get("token") == "good" else f"close:{CLOSE_AUTH_FAILED}"
    if kind == "ping":
        return "pong"
    if kind in ("unsubscribe", "subscribe_tasks", "unsubscribe_tasks"):
        return "silent"
    if kind == "auth":
        return "error:already_authenticated"
    if kind != "subscribe":
        return "error:unknown_type"
    task_id, after = message.get("task_id"), message.get("after", 0)
    if not isinstance(task_id, str) or not task_id or len(task_id) > 64:
        return "error:invalid_message"
    after = 0 if after is None else after
    if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= MAX_SEQ:
        return "error:invalid_message"
    if subs >= MAX_SUBS:
        return "error:too_many_subscriptions"
    if task_id != own:
        return "error:not_found"
    return f"events:{after}"


# -------------------------------------------------------------------------- the harness


class Spawner:
    """The session's ``spawn``: starts replays in a nursery and counts the running ones."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.running = 0
        self.changed = trio.Event()

    def __call__(self, fn: Any, *args: Any) -> None:
        self.running += 1

        async def tracked() -> None:
            try:
                await fn(*args)
            finally:
                self.running -= 1
                self.changed.set()

        self.nursery.start_soon(tracked)

    async def wait_changed(self) -> None:
        self.changed = trio.Event()
        await self.changed.wait()


async def first_of(*waits: Any) -> None:
    async with trio.open_nursery() as nursery:

        async def one(wait: Any) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(one, wait)


async def settle(session: Session, spawner: Spawner) -> list[dict[str, Any]]:
    """Play the writer until no replay runs and nothing is queued; what the client got."""
    out: list[dict[str, Any]] = []
    while True:
        while session.queue:
            item, payload = session.take()
            out.append(json.loads(payload))
            session.sent(item)
        if spawner.running == 0 or session.state is State.CLOSED:
            return out
        await first_of(session.wake.wait, spawner.wait_changed)


async def play(
    store: Any, hub: Any, user: Any, tasks: tuple[str, str], authed: bool, sequence: list[str | bytes]
) -> None:
    own, theirs = tasks
    fanout = Fanout(hub, store)

    async def authenticate(token: Any) -> Any:
        return user if token == "good" else None

    async with trio.open_nursery() as nursery:
        spawner = Spawner(nursery)
        wake = Wakeup()
        session = wake.session = Session(
            fanout=fanout,
            store=store,
            spawn=spawner,
            authenticate=authenticate,
            limiter=NoLimit(),
            wake=wake,
            queue_limit=16,
            max_subscriptions=MAX_SUBS,
        )
        if authed:
            await session.open("good")
        for raw in sequence:
            want = expected(parse(raw), session.state, len(session.subs), own, theirs)
            await session.handle(raw)
            got = await settle(session, spawner)
            tally("ws-session", want.split(":")[0], want.split(":")[1] if ":" in want else "")
            check(want, got, session, own)
            if session.state is State.CLOSED:
                break
        if session.state is State.OPEN:  # garbage changed nothing: a subscribe still works
            await session.handle(json.dumps({"type": "subscribe", "task_id": own}))
            check("events:0", await settle(session, spawner), session, own)
        session.close(1000, "done")
        nursery.cancel_scope.cancel()
    assert not any(session in channel.sessions for channel in fanout.channels.values())
    assert not any(session in watchers for watchers in fanout.watchers.values())


def check(want: str, got: list[dict[str, Any]], session: Session, own: str) -> None:
    kind, _, detail = want.partition(":")
    if kind == "close":
        assert session.state is State.CLOSED and session.close_code == int(detail), (
            want,
            session.close_code,
            session.close_reason,
        )
        return
    assert session.state is State.OPEN, (want, session.close_code, session.close_reason)
    if kind == "silent":
        assert got == [], (want, got)
    elif kind == "pong":
        assert got == [{"type": "pong"}], (want, got)
    elif kind == "error":
        assert len(got) == 1 and got[0]["type"] == "error", (want, got)
        assert got[0]["code"] == detail and got[0]["message"], (want, got)
    else:  # a replay: resync when the small queue overflowed, else every event after `after`
        after = int(detail)
        if any(m["type"] == "resync" for m in got):
            assert got[-1] == {"type": "resync", "task_id": own, "after": got[-1]["after"]}
            return
        assert all(m["type"] == "event" and m["task_id"] == own for m in got), got
        assert [m["seq"] for m in got] == list(range(after + 1, EVENTS + 1)), (want, got)


# ---------------------------------------------------------------------------- properties


async def make_tasks(store: Any, alice: Any, bob: Any) -> tuple[str, str]:
    own, _ = await store.create_task(user_id=alice.id, repo_url="file:///r", prompt="p")
    theirs, _ = await store.create_task(user_id=bob.id, repo_url="file:///r", prompt="bob's")
    last = (await store.get_task(own.id)).last_seq
    await store.append_events(own.id, [NewEvent("agent.text", {"i": i}) for i in range(EVENTS - last)])
    return own.id, theirs.id


async def test_any_message_sequence_gets_documented_answers(store, hub, alice, bob):
    tasks = await make_tasks(store, alice, bob)

    @fuzz_settings(120)
    @seeded
    @given(authed=st.booleans(), sequence=st.lists(messages(*tasks), max_size=25))
    @example(authed=True, sequence=['{"type":"unsubscribe","task_id":[]}'])  # found by a full run
    @example(authed=True, sequence=[b""])  # an empty binary frame
    def prop(authed, sequence):
        on_loop(play, store, hub, alice, tasks, authed, sequence)

    await drive(prop)


async def test_subscribe_storms_leave_nothing_behind(store, hub, alice, bob):
    tasks = await make_tasks(store, alice, bob)
    storm = st.lists(
        st.sampled_from(
            [
                json.dumps({"type": "subscribe", "task_id": tasks[0], "after": EVENTS - 1}),
                json.dumps({"type": "unsubscribe", "task_id": tasks[0]}),
                json.dumps({"type": "subscribe", "task_id": tasks[1]}),
                json.dumps({"type": "subscribe_tasks"}),
                json.dumps({"type": "unsubscribe_tasks"}),
            ]
        ),
        min_size=20,
        max_size=200,
    )

    @fuzz_settings(30)
    @seeded
    @given(sequence=storm)
    def prop(sequence):
        on_loop(play, store, hub, alice, tasks, True, sequence)

    await drive(prop)


# -------------------------------------------------------------------- a real connection


async def test_a_real_socket_survives_any_messages(tmp_path):
    async with running_daemon(tmp_path, rate_subscribes_burst=10**9) as server:
        server.daemon.supervisor.drain()
        _, token = await server.user("alice")
        _, bob_token = await server.user("bob")
        async with server.client() as http:
            own = (
                await http.post(
                    "/api/tasks",
                    json={"repo_url": "file:///r", "prompt": "p"},
                    headers={"Authorization": f"Bearer {token}"},
                )
            ).json()["id"]
            theirs = (
                await http.post(
                    "/api/tasks",
                    json={"repo_url": "file:///r", "prompt": "q"},
                    headers={"Authorization": f"Bearer {bob_token}"},
                )
            ).json()["id"]

            async def converse(sequence: list[str | bytes]) -> None:
                tally("ws-socket", "connection")
                async with server.ws(token) as ws:
                    await send_json(ws, {"type": "ping"})
                    assert await recv_json(ws) == {"type": "pong"}
                    try:
                        for raw in sequence:
                            await ws.send_message(raw)
                            await send_json(ws, {"type": "ping"})
                            while (reply := await recv_json(ws))["type"] != "pong":
                                assert reply["type"] in ("event", "error", "resync"), reply
                                if reply["type"] != "error":
                                    assert reply["task_id"] == own, reply
                                tally("ws-socket", reply["type"], reply.get("code", ""))
                    except ConnectionClosed as closed:  # only binary frames may close it
                        assert closed.reason.code == CLOSE_POLICY, closed.reason
                        assert any(isinstance(raw, bytes) for raw in sequence)
                        tally("ws-socket", "close", closed.reason.code)
                health = await http.get("/healthz")
                assert health.status_code == 200

            # Within the message size (past it: close 1009, tested in test_ws_listener.py).
            small = messages(own, theirs).filter(lambda raw: len(raw) <= MAX_MESSAGE_CHARS)

            @fuzz_settings(25)
            @seeded
            @given(sequence=st.lists(small, max_size=8))
            @example(sequence=[b""])  # found by a full run: an empty binary frame
            def prop(sequence):
                on_loop(converse, sequence)

            await drive(prop)
        async with server.ws(token) as ws:  # and a fresh connection works as on day one
            await send_json(ws, {"type": "subscribe", "task_id": own, "after": 0})
            assert (await recv_json(ws))["seq"] == 1
