"""The event log's live side: fan-out of committed events and replay-then-live following.

The store is the truth; live delivery is only a shortcut. A follower that falls behind (its
bounded buffer overflowed) or sees a gap goes back to the store from the last seq it delivered,
so it never loses an event and never repeats one.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Protocol

import trio

from .store import Event, Store

DEFAULT_BUFFER = 1024
REPLAY_PAGE = 500


@dataclass(frozen=True)
class Ephemeral:
    """A live-only event (``agent.text_delta``): never stored, no seq."""

    task_id: str
    type: str
    data: dict[str, Any]

    def wire(self) -> dict[str, Any]:
        return {"type": "event", "task_id": self.task_id, "seq": None, "event": self.type,
                "ts": None, "data": self.data}


class Subscriber(Protocol):
    def deliver(self, item: Event | Ephemeral) -> None:
        """Called on the Trio thread for each live item; must not block."""


@dataclass(eq=False)
class Follower:
    """A bounded live buffer; overflow drops the buffer and raises a flag instead of growing."""

    limit: int = DEFAULT_BUFFER
    items: collections.deque[Event | Ephemeral] = field(default_factory=collections.deque)
    overflowed: bool = False
    wakeup: trio.Event = field(default_factory=trio.Event)

    def deliver(self, item: Event | Ephemeral) -> None:
        if self.overflowed:
            return
        if len(self.items) >= self.limit:
            self.items.clear()
            self.overflowed = True
        else:
            self.items.append(item)
        self.wakeup.set()


class EventHub:
    """Routes every committed event to the subscribers of its task and to global listeners."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._by_task: dict[str, set[Subscriber]] = collections.defaultdict(set)
        self._global: list[Callable[[list[Event]], None]] = []
        self._global_remote: list[Callable[[list[Event]], None]] = []
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

    def add_global_listener(self, listener: Callable[[list[Event]], None], *, remote: bool = False) -> None:
        """Have ``listener`` see every committed batch of this daemon (and, with ``remote``, of
        the others sharing the store)."""
        self._global.append(listener)
        if remote:
            self._global_remote.append(listener)

    def followed(self, task_id: str) -> bool:
        return task_id in self._by_task

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
        """Every stored event with seq > ``after`` in order, then live ones, forever.

        No gap and no duplicate at the seam: the live buffer is registered before the replay
        reads the store, and anything at or below the last delivered seq is skipped.

        Cancellation: unregisters the follower; nothing else to undo.
        """
        follower = Follower(limit=buffer)
        self.add(task_id, follower)
        last = after
        try:
            while True:
                # Buffer live items from before the replay's first read: none can slip between.
                follower.overflowed = False
                follower.items.clear()
                # Replay from the store until it has nothing newer than what we delivered.
                while True:
                    page = await self._store.read_events(task_id, last, REPLAY_PAGE)
                    for event in page:
                        yield event
                        last = event.seq
                    if len(page) < REPLAY_PAGE:
                        break
                # Live, until the buffer overflows or shows a gap: then back to the store.
                while not follower.overflowed:
                    if not follower.items:
                        follower.wakeup = trio.Event()
                        await follower.wakeup.wait()
                        continue
                    item = follower.items.popleft()
                    if isinstance(item, Ephemeral):
                        if ephemeral:
                            yield item
                        continue
                    if item.seq <= last:
                        continue
                    if item.seq != last + 1:
                        follower.items.clear()
                        break
                    yield item
                    last = item.seq
        finally:
            self.remove(task_id, follower)
