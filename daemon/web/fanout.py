"""Live WebSocket delivery: one hub subscriber per task, each event serialized once.

``Fanout`` keeps a ``TaskChannel`` per task that has WebSocket subscribers. The hub calls the
channel's ``deliver`` (sync, on the Trio thread) once per committed event; the channel encodes it
(``Event.wire_json``: around the data text the store already wrote, not encoding it again) and
frames it once (``frame``: the WebSocket frame, the same bytes for every subscriber since
server frames are unmasked) and hands it to each session (a sync, non-blocking append to its
bounded queue, which the glue may write to the socket right away). ``agent.text_delta`` is
coalesced per task to one message per ``delta_interval_s``. Status events (``subscribe_tasks``)
come from one global listener and go by the owner each carries (``data["user_id"]``) to that
user's watching sessions, and to every operator's watching all users.
"""

from __future__ import annotations

import collections
import heapq
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ..events import Ephemeral, EventHub
from ..store import Event

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)

STATUS_EVENTS = frozenset({"task.created", "task.status", "task.finished"})
DELTA = "agent.text_delta"


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


class TaskChannel:
    """The sessions following one task; the hub's single subscriber for it."""

    def __init__(self, task_id: str, fanout: Fanout) -> None:
        self.task_id = task_id
        self.sessions: dict[Session, None] = {}  # ordered set
        self._fanout = fanout
        self._delta: dict[str, Any] | None = None  # pending coalesced agent.text_delta data
        self._next_delta_at = -float("inf")
        self.scheduled = False

    def deliver(self, item: Event | Ephemeral) -> None:
        if isinstance(item, Ephemeral):
            if item.type == DELTA:
                self._add_delta(item.data)
            else:
                self._send_ephemeral(self._fanout.frame(encode(item.wire())))
            return
        # A stored event after deltas ends their block: flush first so order is kept.
        self.flush_delta()
        payload = self._fanout.frame(item.wire_json())  # the store's data text, not encoded again
        for session in tuple(self.sessions):
            session.live_event(item, payload)

    def _add_delta(self, data: dict[str, Any]) -> None:
        pending = self._delta
        if pending is not None and _same_block(pending, data):
            pending["text"] = pending.get("text", "") + data.get("text", "")
        else:
            self.flush_delta()
            self._delta = dict(data)
        now = self._fanout.clock()
        if now >= self._next_delta_at:
            self.flush_delta()
        elif not self.scheduled:
            self._fanout.schedule(self, self._next_delta_at)

    def flush_delta(self) -> None:
        if self._delta is None:
            return
        data, self._delta = self._delta, None
        self._next_delta_at = self._fanout.clock() + self._fanout.delta_interval_s
        self._send_ephemeral(self._fanout.frame(encode(Ephemeral(self.task_id, DELTA, data).wire())))

    def _send_ephemeral(self, payload: Any) -> None:
        for session in tuple(self.sessions):
            session.live_ephemeral(self.task_id, payload)


def _same_block(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Deltas merge when everything but their text is equal (same content block, same turn)."""
    return all(a.get(k) == b.get(k) for k in (a.keys() | b.keys()) - {"text"})


def _text(text: str) -> str:
    return text


class Fanout:
    """All live WebSocket routing of one daemon. ``run`` must run while sessions exist.

    ``frame`` turns a message's JSON text into what sessions queue (the glue's WebSocket frame;
    by default the text itself, which tests read). ``store`` is read only for the owner of a
    status event written without one (by an older agentd sharing the store).
    """

    def __init__(
        self,
        hub: EventHub,
        store: Any,
        *,
        delta_interval_s: float = 0.05,
        clock: Callable[[], float] = trio.current_time,
        frame: Callable[[str], Any] = _text,
    ) -> None:
        self.hub = hub
        self.frame = frame
        self.store = store
        self.delta_interval_s = delta_interval_s
        self.clock = clock
        self.channels: dict[str, TaskChannel] = {}
        # Watching sessions by the user whose status events they get; None: every user's.
        self.watchers: dict[int | None, dict[Session, None]] = collections.defaultdict(dict)
        self.sessions: dict[Session, None] = {}
        self.user_connections: dict[int, int] = {}  # authenticated sessions per user (session.py)
        self._ownerless: dict[str, list[Event]] = {}  # by task, waiting for the owner's lookup
        self._due: list[tuple[float, int, TaskChannel]] = []
        self._counter = 0
        self._wakeup = trio.Event()
        # Tasks on any node; another node's are read back only while someone watches the feed.
        hub.add_global_listener(self._on_commit, remote=True, wants=lambda task_id: bool(self.watchers))

    # -- per-task channels ----------------------------------------------------------------------

    def attach(self, task_id: str, session: Session) -> None:
        channel = self.channels.get(task_id)
        if channel is None:
            channel = self.channels[task_id] = TaskChannel(task_id, self)
            self.hub.add(task_id, channel)
        channel.sessions[session] = None

    def detach(self, task_id: str, session: Session) -> None:
        channel = self.channels.get(task_id)
        if channel is None:
            return
        channel.sessions.pop(session, None)
        if not channel.sessions:
            channel.flush_delta()
            del self.channels[task_id]
            self.hub.remove(task_id, channel)

    def schedule(self, channel: TaskChannel, when: float) -> None:
        channel.scheduled = True
        self._counter += 1
        heapq.heappush(self._due, (when, self._counter, channel))
        self._wakeup.set()

    # -- the tasks feed ------------------------------------------------------------------------

    def watch(self, user_id: int | None, session: Session) -> None:
        """Send ``session`` the status events of ``user_id``'s tasks (None: every user's)."""
        self.watchers[user_id][session] = None

    def unwatch(self, user_id: int | None, session: Session) -> None:
        watchers = self.watchers.get(user_id)
        if watchers is not None:
            watchers.pop(session, None)
            if not watchers:
                del self.watchers[user_id]

    def _on_commit(self, events: list[Event]) -> None:
        if not self.watchers:
            return
        for event in events:
            if event.type not in STATUS_EVENTS:
                continue
            payload = self._notify(None, event)  # operators watching every user: at once
            owner = event.data.get("user_id")
            pending = self._ownerless.get(event.task_id)
            if pending is not None:  # behind one whose owner is being looked up: keep the order
                pending.append(event)
            elif type(owner) is int:
                self._notify(owner, event, payload)
            elif any(user_id is not None for user_id in self.watchers):
                self._ownerless[event.task_id] = [event]
                self._wakeup.set()

    def _notify(self, user_id: int | None, event: Event, payload: Any = None) -> Any:
        """Hand ``event`` to the sessions watching ``user_id``; its payload, framed when needed."""
        watchers = self.watchers.get(user_id)
        if watchers:
            if payload is None:
                payload = self.frame(event.wire_json())
            for session in tuple(watchers):
                session.notify(event.task_id, payload)
        return payload

    # -- the background task ---------------------------------------------------------------------

    async def run(self) -> None:
        """Flush coalesced deltas when due and look up owners; runs until cancelled.

        Cancellation: pending deltas are dropped (they are ephemeral); nothing else is held.
        """
        while True:
            if self._ownerless:
                await self._resolve_one()
                continue
            if self._due:
                when = self._due[0][0]
                if self.clock() >= when:
                    _, _, channel = heapq.heappop(self._due)
                    channel.scheduled = False
                    channel.flush_delta()
                    continue
                self._wakeup = trio.Event()
                with trio.move_on_at(when):
                    await self._wakeup.wait()
                continue
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    async def _resolve_one(self) -> None:
        task_id = next(iter(self._ownerless))
        try:
            task = await self.store.get_task(task_id)
        except Exception:  # the store closing under us: drop the notifications
            log.exception("looking up the owner of task %s", task_id)
            task = None
        events = self._ownerless.pop(task_id, [])
        if task is not None:
            for event in events:
                self._notify(task.user_id, event)
