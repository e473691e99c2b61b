"""The one replay-then-live merge (``events.Cursor``) and the bounded buffer (``events.Bounded``)
on their own: a log in a list stands for the store, and a commit during a store read is
offered live as the hub would offer it (after the commit). ``EventHub.follow`` and the
WebSocket subscriptions are tested through it in test_store_events.py and test_ws_session.py.
"""

from __future__ import annotations

from contextlib import aclosing

import trio

from daemon.events import Bounded, Cursor, Offer
from daemon.store import Event

TASK = "t1"


class Log:
    """Committed events in a list; ``during_read`` commits more while a page is being read."""

    def __init__(self, count: int) -> None:
        self.events: list[Event] = []
        self.during_read: list[list[int]] = []  # per read: the seqs committed then (and offered)
        self.lost: set[int] = set()  # committed but never offered live (a missed notification)
        self.cursor: Cursor | None = None
        self.reads = 0
        for _ in range(count):
            self.commit()

    def commit(self) -> Event:
        event = Event(TASK, len(self.events) + 1, 0.0, "agent.text", {})
        self.events.append(event)
        return event

    async def read(self, task_id: str, after: int, limit: int) -> list[Event]:
        self.reads += 1
        await trio.lowlevel.checkpoint()
        page = [e for e in self.events if e.seq > after][:limit]
        for _ in self.during_read.pop(0) if self.during_read else ():
            event = self.commit()
            if event.seq not in self.lost:
                assert self.cursor is not None
                self.cursor.offer(event, f"live {event.seq}")
        return page


async def caught_up(log: Log, cursor: Cursor, page: int = 3) -> list[tuple[int, str | None]]:
    log.cursor = cursor
    async with aclosing(cursor.catch_up(log.read, page)) as items:
        return [(event.seq, payload) async for event, payload in items]


async def test_replay_then_held_events_without_gap_or_duplicate_then_live():
    log = Log(10)
    log.during_read = [[1, 1], [1], [], [1]]  # 4 events arrive while the pages are read
    cursor: Cursor[str] = Cursor(TASK, 2, Bounded(100))
    got = await caught_up(log, cursor)
    assert [seq for seq, _ in got] == list(range(3, 15)) and cursor.live and cursor.last == 14
    # Those read from the store come without a payload; the ones only held, with theirs.
    assert [payload for _, payload in got if payload is not None] == ["live 14"]
    # Live now: the next seq is delivered, an old one dropped, a skipped one is a gap.
    assert cursor.offer(log.commit(), "p") is Offer.NEXT and cursor.last == 15
    assert cursor.offer(log.events[10], "p") is Offer.DUPLICATE
    log.commit()
    assert cursor.offer(log.commit(), "p") is Offer.GAP and not cursor.live
    assert [seq for seq, _ in await caught_up(log, cursor)] == [16, 17]


async def test_a_gap_among_the_held_events_goes_back_to_the_store():
    log = Log(4)
    log.during_read = [[1, 1, 1]]  # 5, 6, 7 committed; 6's live notification is lost
    log.lost = {6}
    cursor: Cursor[str] = Cursor(TASK, 0, Bounded(100))
    got = await caught_up(log, cursor, page=10)
    assert [seq for seq, _ in got] == list(range(1, 8))
    assert log.reads == 2  # the gap (5, then 7) made it read the store again from 5


async def test_an_overflow_of_the_held_events_goes_back_to_the_store_with_bounded_memory():
    log = Log(6)
    log.during_read = [[1] * 5, [1] * 5]  # more than the 2 the cursor may hold, twice
    cursor: Cursor[str] = Cursor(TASK, 0, Bounded(2))
    got = await caught_up(log, cursor, page=100)
    assert [seq for seq, _ in got] == list(range(1, 17)) and cursor.live
    assert cursor.held.high_water <= 2 and log.reads == 3


def test_the_bounded_buffer_drops_everything_and_flags_rather_than_grow():
    buffer: Bounded[str] = Bounded(3, max_bytes=10)
    assert buffer.push("x", 50)  # one item always fits an empty buffer
    assert not buffer.push("y", 1) and buffer.overflowed and len(buffer) == 0 and buffer.bytes == 0
    assert not buffer.push("z")  # refused until reset
    buffer.reset()
    assert buffer.push("ab", 2) and buffer.push("cd", 2) and buffer.push("ef", 2)
    assert not buffer.push("g", 1)  # over the count
    buffer.reset()
    assert buffer.push("abcde", 5) and buffer.push("fghij", 5) and not buffer.push("k", 1)  # bytes
    buffer.reset()
    buffer.push("abc", 3)
    buffer.force("resync", 0)
    assert buffer.popleft() == "abc" and buffer.bytes == 0 and list(buffer) == ["resync"]
    assert (buffer.high_water, buffer.high_water_bytes) == (3, 50)
