"""The event log's live side: fan-out of committed events, and the one replay-then-live merge.

The store is the truth; live delivery is only a shortcut. Every reader of a task's log (``follow``
for ``agentctl tail``, each WebSocket subscription in ``web/session.py``) is a ``Cursor``: it is
registered for live events *before* its first store read, replays the store from the last seq
it delivered, then takes the live events held meanwhile in seq order. So there is no gap and no
duplicate at the seam; memory is bounded (``Bounded``: on overflow the held items are dropped
and a flag raised, never grown); an overflow, or a live event whose seq is not the next one,
sends the cursor back to the store from the last seq it delivered.
"""

from __future__ import annotations

import collections
import enum
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import trio

from .store import Event, Store

DEFAULT_BUFFER = 1024
REPLAY_PAGE = 500

T = TypeVar("T")
P = TypeVar("P")
ReadEvents = Callable[[str, int, int], Awaitable[list[Event]]]  # (task_id, after, limit)


@dataclass(frozen=True)
class Ephemeral:
    """A live-only event (``agent.text_delta``): never stored, no seq."""

    task_id: str
    type: str
    data: dict[str, Any]

    def wire(self) -> dict[str, Any]:
        return {
            "type": "event",
            "task_id": self.task_id,
            "seq": None,
            "event": self.type,
            "ts": None,
            "data": self.data,
        }


class Subscriber(Protocol):
    def deliver(self, item: Event | Ephemeral) -> None:
        """Called on the Trio thread for each live item; must not block."""


class Bounded(collections.deque[T]):
    """A FIFO bounded in items (``limit``) and in bytes (``max_bytes``: the sum of the sizes
    given to ``push``) that, rather than grow, drops what it holds and raises ``overflowed``.

    Add with ``push`` (or ``force``), take with ``popleft``: those keep ``bytes``; the rest is
    a ``deque``'s. One item always fits an empty buffer, however large. While ``overflowed``
    every ``push`` is refused; ``reset`` empties it and lowers the flag. ``high_water`` and
    ``high_water_bytes`` are the most it ever held. Sync and non-blocking, on the Trio thread,
    except ``wait``.
    """

    __slots__ = (
        "_sizes",
        "_wakeup",
        "bytes",
        "high_water",
        "high_water_bytes",
        "limit",
        "max_bytes",
        "overflowed",
    )

    def __init__(self, limit: int, max_bytes: float = math.inf) -> None:
        super().__init__()
        self.limit, self.max_bytes = limit, max_bytes
        self._sizes: collections.deque[int] = collections.deque()
        self.bytes = 0
        self.overflowed = False
        self.high_water = self.high_water_bytes = 0
        self._wakeup: trio.Event | None = None

    def push(self, item: T, size: int = 0) -> bool:
        """Append ``item`` of ``size`` bytes; False (and everything held dropped,
        ``overflowed`` set) if it does not fit, or if the buffer overflowed already."""
        if self.overflowed:
            return False
        held, total = len(self), self.bytes + size
        if held >= self.limit or (total > self.max_bytes and held):
            self.reset()
            self.overflowed = True
        else:
            self.append(item)
            self._sizes.append(size)
            self.bytes = total
            if held >= self.high_water:
                self.high_water = held + 1
            if total > self.high_water_bytes:
                self.high_water_bytes = total
        if self._wakeup is not None:
            self._wakeup.set()
        return not self.overflowed

    def force(self, item: T, size: int = 0) -> None:
        """Append ``item`` whatever the bounds (a control message after an overflow)."""
        self.append(item)
        self._sizes.append(size)
        self.bytes += size
        self.high_water = max(self.high_water, len(self))
        self.high_water_bytes = max(self.high_water_bytes, self.bytes)

    def popleft(self) -> T:
        self.bytes -= self._sizes.popleft()
        return collections.deque.popleft(self)  # not super(): this is every message's path

    def reset(self) -> None:
        self.clear()
        self._sizes.clear()
        self.bytes = 0
        self.overflowed = False

    async def wait(self) -> None:
        """Until an item is held or the buffer overflowed. Cancellation: nothing to undo."""
        while not self and not self.overflowed:
            self._wakeup = trio.Event()
            await self._wakeup.wait()


class Offer(enum.Enum):
    """What a cursor makes of a live event (``Cursor.offer``)."""

    HELD = "held"  # catching up: the event waits in ``held`` for the merge
    DUPLICATE = "duplicate"  # at or below the last seq delivered: drop it
    NEXT = "next"  # exactly the next seq: deliver it now (``last`` already points at it)
    GAP = "gap"  # a seq was missed: the cursor left live; catch it up again


class Cursor(Generic[P]):
    """One reader's position in one task's event log, and the replay-then-live merge.

    ``last``: the last seq delivered. ``held``: live items (with the reader's ``P`` payload,
    e.g. an encoded frame) that arrive while the cursor catches up. ``live``: caught up; a live
    event is delivered by the caller as ``offer`` says. As a hub ``Subscriber`` (``deliver``)
    a cursor holds every live item, for a reader that pulls (``catch_up(stay=True)``).
    """

    __slots__ = ("ephemeral", "held", "last", "live", "task_id")

    def __init__(
        self,
        task_id: str,
        after: int,
        held: Bounded[tuple[Event | Ephemeral, P | None]],
        *,
        ephemeral: bool = False,
    ) -> None:
        self.task_id, self.last, self.held = task_id, after, held
        self.ephemeral = ephemeral  # ``deliver`` holds ephemeral items too
        self.live = False

    def deliver(self, item: Event | Ephemeral) -> None:
        if self.ephemeral or not isinstance(item, Ephemeral):
            self.held.push((item, None))

    def offer(self, event: Event, payload: P, size: int = 0) -> Offer:
        """A live event for this task (sync, on the Trio thread), its payload of ``size``
        bytes held if the cursor is catching up. ``NEXT`` advances ``last``."""
        seq = event.seq
        if self.live and seq == self.last + 1:  # the common case first
            self.last = seq
            return Offer.NEXT
        if not self.live:
            self.held.push((event, payload), size)
            return Offer.HELD
        if seq <= self.last:
            return Offer.DUPLICATE
        self.live = False
        return Offer.GAP

    async def catch_up(
        self, read: ReadEvents, page: int, *, stay: bool = False
    ) -> AsyncGenerator[tuple[Event | Ephemeral, P | None], None]:
        """Stored events with seq > ``last`` in order (payload None), then the items held
        meanwhile, merged by seq; ``last`` follows what the consumer took.

        The cursor must already receive live events (so none slips between the store's last
        page and the held ones). Ends, with ``live`` set, once nothing is held: there is no
        checkpoint between that check and the flag. With ``stay`` it never ends: it waits for
        more held items instead. An overflow of ``held``, or a gap among the held events, sends
        it back to the store. Use it under ``contextlib.aclosing``.

        Cancellation: nothing to undo; the caller unregisters the cursor.
        """
        held = self.held
        while True:
            self.live = False
            held.reset()  # what arrives from here on is merged; what came before is stored
            while True:
                events = await read(self.task_id, self.last, page)
                for event in events:
                    if event.seq > self.last:
                        yield event, None
                        self.last = event.seq
                if len(events) < page:
                    break
            while not held.overflowed:
                if not held:
                    if not stay:
                        self.live = True
                        return
                    await held.wait()
                    continue
                item, payload = held.popleft()
                if isinstance(item, Ephemeral):
                    yield item, payload
                    continue
                if item.seq <= self.last:
                    continue
                if item.seq != self.last + 1:
                    break  # a gap: back to the store
                yield item, payload
                self.last = item.seq


class EventHub:
    """Routes every committed event to the subscribers of its task and to global listeners."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._by_task: dict[str, set[Subscriber]] = collections.defaultdict(set)
        self._global: list[Callable[[list[Event]], None]] = []
        self._global_remote: list[Callable[[list[Event]], None]] = []
        # What the remote listeners want read back of a task's status changes (None: all).
        self._remote_wants: list[Callable[[str], bool] | None] = []
        store.add_listener(self._on_commit)

    def _on_commit(self, events: list[Event]) -> None:
        for listener in self._global:
            listener(events)
        self._to_subscribers(events)

    def _to_subscribers(self, events: list[Event]) -> None:
        for event in events:
            for subscriber in tuple(self._by_task.get(event.task_id, ())):
                subscriber.deliver(event)

    def publish_remote(self, events: list[Event]) -> None:
        """Events another daemon committed (read back from the shared store), seq-ordered per task.

        They reach the task's subscribers and the global listeners added with ``remote=True``
        (not, say, the metrics, which count what this daemon did). A subscriber may get an event
        twice or out of order across daemons; followers skip what they have and go back to the
        store on a gap.
        """
        for listener in self._global_remote:
            listener(events)
        self._to_subscribers(events)

    def add_global_listener(
        self,
        listener: Callable[[list[Event]], None],
        *,
        remote: bool = False,
        wants: Callable[[str], bool] | None = None,
    ) -> None:
        """Have ``listener`` see every committed batch of this daemon (and, with ``remote``, of
        the others sharing the store). ``wants(task_id)``: whether another daemon's status
        changes and user messages of that task concern the listener at all (None: every task's);
        those nobody here wants are not read back from the store (``wants_remote``)."""
        self._global.append(listener)
        if remote:
            self._global_remote.append(listener)
            self._remote_wants.append(wants)

    def followed(self, task_id: str) -> bool:
        return task_id in self._by_task

    def wants_remote(self, task_id: str) -> bool:
        """Whether another daemon's status changes and user messages of ``task_id`` matter here:
        someone follows the task, or a remote listener wants it."""
        if task_id in self._by_task:
            return True
        return any(wants is None or wants(task_id) for wants in self._remote_wants)

    def followed_tasks(self) -> list[str]:
        return list(self._by_task)

    def publish_ephemeral(self, task_id: str, type: str, data: dict[str, Any]) -> None:
        item = Ephemeral(task_id, type, data)
        for subscriber in tuple(self._by_task.get(task_id, ())):
            subscriber.deliver(item)

    def add(self, task_id: str, subscriber: Subscriber) -> None:
        self._by_task[task_id].add(subscriber)

    def remove(self, task_id: str, subscriber: Subscriber) -> None:
        subscribers = self._by_task.get(task_id)
        if subscribers is not None:
            subscribers.discard(subscriber)
            if not subscribers:
                del self._by_task[task_id]

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._by_task.values())

    async def follow(
        self, task_id: str, after: int = 0, *, buffer: int = DEFAULT_BUFFER, ephemeral: bool = False
    ) -> AsyncIterator[Event | Ephemeral]:
        """Every stored event with seq > ``after`` in order, then live ones, forever (a
        ``Cursor`` holding at most ``buffer`` live items; ephemeral ones too with ``ephemeral``).

        Cancellation: unregisters the cursor; nothing else to undo.
        """
        cursor: Cursor[None] = Cursor(task_id, after, Bounded(buffer), ephemeral=ephemeral)
        self.add(task_id, cursor)
        try:
            async with aclosing(cursor.catch_up(self._store.read_events, REPLAY_PAGE, stay=True)) as items:
                async for item, _ in items:
                    yield item
        finally:
            self.remove(task_id, cursor)
