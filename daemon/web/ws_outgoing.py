"""One WebSocket session's outgoing queue (``session.Session``), without the socket.

The queue is an ``events.Bounded`` in messages (``limit``) and bytes (``max_bytes``):
overflowing either drops the live feed and sends ``resync``. A replay never overflows it: before
each message it waits until the queue is at most half full on both counts (``wait_room``).
What the queue holds is opaque here: ``Fanout.frame`` of the message's JSON text (the WebSocket
frame in the daemon, the text itself in tests). All methods run on the Trio thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from ..events import Bounded, Cursor
from .fanout import encode

Wire = Any  # what ``Fanout.frame`` makes of a message's JSON text


class Subscription(Cursor[Wire]):
    """A cursor (``last``: the last seq put in the queue) plus ``sent``, the last seq the
    socket accepted: what a ``resync`` tells the client."""

    __slots__ = ("sent",)

    def __init__(self, task_id: str, after: int, limit: int, max_bytes: int) -> None:
        super().__init__(task_id, after, Bounded(limit, max_bytes))
        self.sent = after


@dataclass(slots=True)
class _Resync:
    """Resolved when sent, so ``after`` is what the client really holds."""

    task_id: str | None
    sub: Subscription | None


Item = tuple[Subscription | _Resync | None, int, Wire]  # (target, seq, payload)


class Outgoing:
    """The bounded queue (``queue``) the glue writes out in order: it takes each item and its
    bytes with ``take`` and calls ``sent`` once they are written. ``frame`` is
    ``Fanout.frame``; ``wake`` (sync, must not block) is called after each item is queued.
    ``resyncs`` counts the overflows."""

    __slots__ = ("_room", "frame", "limit", "max_bytes", "queue", "resyncs", "wake")

    def __init__(
        self, limit: int, max_bytes: int, frame: Callable[[str], Wire], wake: Callable[[], None]
    ) -> None:
        self.limit, self.max_bytes, self.frame, self.wake = limit, max_bytes, frame, wake
        self.queue: Bounded[Item] = Bounded(limit, max_bytes)
        self.resyncs = 0
        self._room = trio.Event()  # the queue went below half

    def push(self, target: Subscription | None, seq: int, payload: Wire) -> bool:
        """Queue one message and wake the glue (which may write it, and close, right here);
        False if it overflowed the queue: the caller drops its live feed and calls ``resync``."""
        if self.queue.push((target, seq, payload), len(payload)):
            self.wake()
            return True
        return False

    def resync(self, subs: list[Subscription], watching: bool) -> None:
        """After an overflow: empty the queue and tell the client where to pick up each stream
        (``subs``, and the task list if ``watching``)."""
        self.resyncs += 1
        self.queue.reset()
        for sub in subs:
            self.queue.force((_Resync(sub.task_id, sub), 0, ""))
        if watching:
            self.queue.force((_Resync(None, None), 0, ""))
        self._room.set()
        self.wake()

    def close(self) -> None:
        """Drop everything queued and release any waiting replay."""
        self.queue.reset()
        self._room.set()

    def has_room(self) -> bool:
        """At most half full, in messages and in bytes: a replay may push."""
        return len(self.queue) <= self.limit // 2 and self.queue.bytes <= self.max_bytes // 2

    async def wait_room(self, wanted: Callable[[], bool]) -> None:
        """Until the queue has room (or ``wanted`` turns False: the subscription is dropped).
        Several replays share one event.

        Cancellation: nothing to undo."""
        while not self.has_room() and wanted():
            if self._room.is_set():
                self._room = trio.Event()
            await self._room.wait()

    def take(self) -> tuple[Item, Wire]:
        """The next item off the queue (there must be one) and what to write for it; a resync
        is encoded now, with what was sent. A waiting replay may go on below half."""
        item = self.queue.popleft()
        if not self._room.is_set() and self.has_room():
            self._room.set()
        target, _, payload = item
        if isinstance(target, _Resync):
            after = target.sub.sent if target.sub is not None else None
            payload = self.frame(encode({"type": "resync", "task_id": target.task_id, "after": after}))
        return item, payload

    @staticmethod
    def sent(item: Item) -> None:
        target, seq, _ = item
        if isinstance(target, Subscription) and seq > target.sent:
            target.sent = seq
