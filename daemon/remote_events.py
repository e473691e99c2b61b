"""Other daemons' events, made live here: notices from the shared store into the ``EventHub``.

A store that other daemons write (``store.shared``) tells each daemon which seqs of which task
another one committed (``store.watch_remote``). ``RemoteEvents`` reads those events back from
the store and publishes them on the hub, only where someone here cares: the task has
subscribers (a WebSocket, a follower), or the batch holds events that daemons act on (status
changes, user messages: notice flag ``s``) and a listener here wants that task's (this daemon
runs it, or someone watches the task list: ``EventHub.wants_remote``), so that a daemon does
not read back every start and end of every other daemon's tasks. Reads go one task at a time in
notice order, so each task's events are published in seq order. Replay-then-live holds as on
one daemon: followers skip seqs they have and go back to the store on a gap.

A revocation another daemon tells (``store.Revoked``: a share link, a token, a user cut off) is
no task event: it is always wanted, never read back, and handed at once to ``on_revoked``, so
that this daemon closes what it opened with it.
"""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import Callable

import trio

from .events import EventHub
from .store import Event, RemoteNotice, Revoked, Store

log = logging.getLogger(__name__)

READ_PAGE = 500


class RemoteEvents:
    """Owns one task (``run``) that reads noticed events back and publishes them."""

    def __init__(
        self,
        store: Store,
        hub: EventHub,
        *,
        on_claimable: Callable[[], None],
        capped: bool = False,
        on_revoked: Callable[[Revoked], None] = lambda revoked: None,
    ) -> None:
        self._store = store
        self._hub = hub
        self._on_claimable = on_claimable
        self._on_revoked = on_revoked  # on the Trio thread; must not block
        # With a per-user cap, a task that stops running elsewhere may let a user's next start.
        self._wake_flags = "qf" if capped else "q"
        # task_id -> (first, last) seqs still to read; insertion order is notice order.
        self._pending: collections.OrderedDict[str, list[int]] = collections.OrderedDict()
        self._wakeup = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen to the store and publish until cancelled; ``started()`` once listening.

        Cancellation: stops listening; notices not yet read are dropped (the store has them).
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publisher)
            await nursery.start(
                functools.partial(self._store.watch_remote, self.on_notices, wanted=self.wanted)
            )
            task_status.started()

    def wanted(self, notice: RemoteNotice | Revoked) -> bool:
        """Whether ``notice`` matters here (see the module docstring; a revocation always does).
        Asked on the store's listening thread: it only reads (membership tests, which the GIL
        keeps whole)."""
        return isinstance(notice, Revoked) or self._wakes(notice) or self._reads(notice)

    def _wakes(self, notice: RemoteNotice) -> bool:
        """A task was queued (or a capped user's task ended) elsewhere: a claim may start one."""
        return any(flag in notice.flags for flag in self._wake_flags)

    def _reads(self, notice: RemoteNotice) -> bool:
        """The task's events are read back: it is followed here, or a listener wants its status."""
        if self._hub.followed(notice.task_id):
            return True
        return "s" in notice.flags and self._hub.wants_remote(notice.task_id)

    def on_notices(self, notices: list[RemoteNotice | Revoked] | None) -> None:
        """Called on the Trio thread by the store with the notices ``wanted`` kept; must not block."""
        if notices is None:  # listening began again: what we follow may have moved meanwhile
            self._catch_up()
            return
        claimable = False
        for notice in notices:
            if isinstance(notice, Revoked):
                self._on_revoked(notice)
                continue
            claimable = claimable or self._wakes(notice)
            if self._reads(notice):
                self._want(notice.task_id, notice.first, notice.last)
        if claimable:
            self._on_claimable()

    def _want(self, task_id: str, first: int, last: int) -> None:
        span = self._pending.get(task_id)
        if span is None:
            self._pending[task_id] = [first, last]
        else:
            span[0], span[1] = min(span[0], first), max(span[1], last)
        self._wakeup.set()

    def _catch_up(self) -> None:
        """Nudge every followed task with its latest event: a follower that missed some sees
        a gap and reads them from the store; one that missed nothing skips it."""
        for task_id in self._hub.followed_tasks():
            self._want(task_id, 0, 0)
        self._on_claimable()

    async def _publisher(self) -> None:
        while True:
            if not self._pending:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            task_id, (first, last) = self._pending.popitem(last=False)
            try:
                events = await self._read(task_id, first, last)
            except Exception:  # a failed read must not stop live delivery of the others
                log.exception("reading task %s's events from the store failed", task_id)
                continue
            if events:
                self._hub.publish_remote(events)

    async def _read(self, task_id: str, first: int, last: int) -> list[Event]:
        if first == 0:  # catch-up: only the newest event
            task = await self._store.get_task(task_id)
            if task is None or task.last_seq == 0:
                return []
            first = last = task.last_seq
        events: list[Event] = []
        while first <= last:
            page = await self._store.read_events(task_id, first - 1, min(READ_PAGE, last - first + 1))
            if not page:
                break
            events.extend(page)
            first = page[-1].seq + 1
        return events
