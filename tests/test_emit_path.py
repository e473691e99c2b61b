"""The emit path's shortcuts: the data's JSON encoded once, a batch's appends published at once.

The store encodes each event's ``data`` for the table and hands the text on with the event
(``Event.data_json``); ``Event.wire_json`` puts the wire message together around it instead of
encoding the data again. The SQLite writer publishes the appends of one batch in one call to
the listeners, in commit order. These tests say that neither shortcut changes what anyone sees.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import trio

from daemon.errors import NotFound
from daemon.metrics import Metrics, render
from daemon.states import TaskStatus
from daemon.store import Event, NewEvent, Transition, sqlite_appends, sqlite_queries as q

from .helpers import in_one_batch

ODD_DATA = [
    {},
    {"text": "plain"},
    {"text": "héllo wörld ✓ 漢字 🚀", "quote": 'say "hi"\\', "ctl": "\x00\x1f\n\t\u2028"},
    {"big": 2**70, "neg": -(2**63), "float": 1e-300, "huge": 1.7976931348623157e308, "zero": -0.0},
    {"nested": {"list": [1, [2, [3, {"deep": None}]]], "bool": True, "none": None}},
    {"1": "a numeric-looking key", "": "an empty key", "k" * 300: "a long key"},
    {"text": "x" * 100_000},
]


def wire_text(event: Event) -> str:
    return json.dumps(event.wire(), separators=(",", ":"))


@pytest.mark.parametrize("data", ODD_DATA)
def test_wire_json_from_the_stored_text_means_what_json_dumps_of_the_wire_means(data):
    stored = q._dumps(data)
    assert stored == json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode(data)
    event = Event("01task", 7, 1712345678.123456, "agent.text", data, stored)
    assert json.loads(event.wire_json()) == json.loads(wire_text(event)) == event.wire()
    # Without the stored text it is exactly json.dumps, ASCII escapes and all.
    assert Event("01task", 7, 1712345678.123456, "agent.text", data).wire_json() == wire_text(event)


@pytest.mark.parametrize("ts", [float("nan"), float("inf"), 12, 0.1])
def test_wire_json_of_an_unusual_timestamp_is_json_dumps(ts):
    event = Event("t", 1, ts, "agent.text", {"a": 1}, '{"a":1}')
    assert event.wire_json() == wire_text(event)


def test_the_stored_text_is_not_part_of_an_events_identity():
    assert Event("t", 1, 1.0, "x", {"a": 1}, '{"a":1}') == Event("t", 1, 1.0, "x", {"a": 1})
    assert "data_json" not in repr(Event("t", 1, 1.0, "x", {"a": 1}, '{"a":1}'))


def test_the_writers_quick_event_is_the_same_as_event():
    """The appends and replays build events without the frozen dataclass's ``__init__``."""
    quick = sqlite_appends._event("t", 3, 1.5, "agent.text", {"a": 1}, '{"a":1}')
    slow = Event("t", 3, 1.5, "agent.text", {"a": 1}, '{"a":1}')
    assert type(quick) is Event
    assert quick == slow and repr(quick) == repr(slow)
    assert quick.__dict__ == slow.__dict__
    assert [f.name for f in dataclasses.fields(Event)] == list(quick.__dict__)
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.seq = 4  # type: ignore[misc]


def test_the_stores_encoder_refuses_what_json_refuses():
    cycle: list = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="Circular"):
        q._dumps({"cycle": cycle})
    with pytest.raises(TypeError):
        q._dumps({"set": {1}})


async def test_events_carry_their_stored_text_out_of_append_and_replay(store, alice):
    task, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    appended = await store.append_events(task.id, [NewEvent("agent.text", d) for d in ODD_DATA])
    replayed = (await store.read_events(task.id, after=appended[0].seq - 1))[: len(ODD_DATA)]
    assert replayed == appended
    for event in [*appended, *replayed]:
        assert json.loads(event.wire_json()) == json.loads(wire_text(event))


async def test_a_refused_event_fails_alone_and_leaves_no_gap(store, alice):
    task, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    outcomes: list = [None] * 3

    async def append(i: int, data: dict) -> None:
        try:
            outcomes[i] = await store.append_events(task.id, [NewEvent("agent.text", data)])
        except Exception as exc:  # noqa: BLE001 - compared below
            outcomes[i] = exc

    async with trio.open_nursery() as nursery:  # likely one batch; alone it must hold too
        nursery.start_soon(append, 0, {"text": "before"})
        nursery.start_soon(append, 1, {"text": "a lone surrogate \ud800"})
        nursery.start_soon(append, 2, {"text": "after"})
    assert isinstance(outcomes[1], UnicodeEncodeError)
    seqs = [e.seq for e in await store.read_events(task.id)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [outcomes[0][0].data, outcomes[2][0].data] == [{"text": "before"}, {"text": "after"}]


# -- the SQLite writer: one publication per batch -------------------------------------------

sqlite_only = pytest.mark.sqlite_only("the SQLite writer thread")


@sqlite_only
async def test_a_batchs_appends_reach_the_listeners_in_one_call_in_commit_order(store, alice):
    tasks = [(await store.create_task(user_id=alice.id, repo_url="r", prompt="p"))[0] for _ in range(3)]
    calls: list[list[tuple[str, int]]] = []
    store.add_listener(lambda events: calls.append([(e.task_id, e.seq) for e in events]))
    one, two, three = (t.id for t in tasks)

    def append(task_id: str, n: int = 1):
        return lambda: store.append_events(task_id, [NewEvent("agent.text", {"i": i}) for i in range(n)])

    outcomes = await in_one_batch(
        store,
        append(one),
        append(two, 3),
        append(one),
        append("missing"),
        append(three),
        lambda: store.transition(Transition(one, TaskStatus.RUNNING)),
        append(two),
        append(one),
    )
    assert isinstance(outcomes[3], NotFound)
    # The appends before the transition in one call, the transition's own, then the rest.
    assert calls == [
        [(one, 3), (two, 3), (two, 4), (two, 5), (one, 4), (three, 3)],
        [(one, 5)],
        [(two, 6), (one, 6)],
    ]
    for task in tasks:
        seqs = [e.seq for e in await store.read_events(task.id)]
        assert seqs == list(range(1, len(seqs) + 1))


@sqlite_only
async def test_a_broken_listener_does_not_stop_the_others_or_the_writers(store, alice):
    task, _ = await store.create_task(user_id=alice.id, repo_url="r", prompt="p")
    seen: list[int] = []

    def broken(events) -> None:
        raise RuntimeError("listener bug")

    store.add_listener(broken)
    store.add_listener(lambda events: seen.extend(e.seq for e in events))
    outcomes = await in_one_batch(
        store, *[(lambda: store.append_events(task.id, [NewEvent("agent.text", {})])) for _ in range(4)]
    )
    assert [o[0].seq for o in outcomes] == seen == [3, 4, 5, 6]


@sqlite_only
async def test_many_events_of_many_tasks_in_one_batch_stay_gap_free(store, alice):
    # More rows than one statement takes (256), in odd counts: several chunks of each size.
    tasks = [(await store.create_task(user_id=alice.id, repo_url="r", prompt="p"))[0] for _ in range(13)]
    calls = [
        (lambda t=t, n=n: store.append_events(t.id, [NewEvent("agent.text", {"n": k}) for k in range(n)]))
        for n in (1, 37, 300)
        for t in tasks
    ]
    await in_one_batch(store, *calls)
    for task in tasks:
        events = await store.read_events(task.id, 0, 10_000)
        assert [e.seq for e in events] == list(range(1, 2 + 1 + 1 + 37 + 300))
        assert (await store.get_task(task.id)).last_seq == events[-1].seq


async def test_the_write_latency_histogram_counts_each_write_in_its_bucket():
    metrics = Metrics()
    for seconds in (0.0001, 0.0005, 0.003, 0.003, 9.0):
        metrics.store_write_seconds.observe(seconds)
    text = render(metrics.registry)[0].decode()
    lines = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("agentd_store_write_seconds")
    )
    assert lines['agentd_store_write_seconds_bucket{le="0.0005"}'] == "2.0"  # le: at most
    assert lines['agentd_store_write_seconds_bucket{le="0.001"}'] == "2.0"
    assert lines['agentd_store_write_seconds_bucket{le="0.005"}'] == "4.0"
    assert lines['agentd_store_write_seconds_bucket{le="2.5"}'] == "4.0"
    assert lines['agentd_store_write_seconds_bucket{le="+Inf"}'] == "5.0"
    assert lines["agentd_store_write_seconds_count"] == "5.0"
    assert float(lines["agentd_store_write_seconds_sum"]) == pytest.approx(9.0066)
