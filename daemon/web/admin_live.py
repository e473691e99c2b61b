"""``/admin/ws``: the admin page's live feed (every task's status changes, one task's events).

Why a WebSocket of its own:
- not SSE: a browser's ``EventSource`` cannot send ``Authorization`` (the token would have to go
  in the URL, which it must not), and a fetch-streamed response gets cut by Hypercorn's
  ``read_timeout`` (set for WebSocket dead-peer detection) because the browser sends nothing
  while it listens; a WebSocket is pinged by Hypercorn, so it stays up and dead peers still go.
- not the phone's ``/ws``: its "status of all tasks" feed is keyed by owner inside ``Fanout``;
  seeing everyone's would change the phone protocol's core, whose 404-never-403 rule this
  operator surface deliberately does not follow. Here the same message shapes are reused
  (design §6), so a client of one reads the other.

Protocol (after ``{"type":"auth","token":...}``, or an ``Authorization`` header):
``{"type":"subscribe","task_id","after"}`` replays stored events with seq > after, then live,
via ``EventHub.follow`` (no gap, no duplicate); ``{"type":"unsubscribe","task_id"}``;
``{"type":"subscribe_tasks"}`` sends every task's ``task.created``/``task.status``/
``task.finished`` event (except a followed task's, which its subscription carries, as on
``/ws``); ``{"type":"ping"}``. Close codes: 4401 bad token (also when revoked
later), 4403 not an operator, 1008 protocol misuse, 1001 the daemon stops.

Memory stays bounded for a slow client: the outgoing channel is small and blocks its
producers; a followed task then overflows ``follow``'s bounded buffer, which goes back to the
store (nothing lost); the all-tasks feed drops its buffer and sends ``resync`` (task_id null)
so the page reloads the list.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from quart import Blueprint, websocket

from ..store import Event
from .auth import bearer_token
from .session import MAX_SEQ
from .fanout import STATUS_EVENTS, encode

if TYPE_CHECKING:
    from .app import WebState

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_AUTH_FAILED = 4401
CLOSE_NOT_OPERATOR = 4403

OUT_BUFFER = 64  # messages between producers and the socket writer
FEED_LIMIT = 1000  # status events buffered per connection before a resync
MAX_SUBSCRIPTIONS = 20  # the page follows one task; a little room for other tools


@dataclass(eq=False)
class _FeedBuffer:
    """One connection's share of the all-tasks feed: bounded, flagged on overflow."""

    items: collections.deque[tuple[str, str]] = field(default_factory=collections.deque)
    overflowed: bool = False
    wakeup: trio.Event = field(default_factory=trio.Event)

    def push(self, task_id: str, text: str) -> None:
        if self.overflowed:
            return
        if len(self.items) >= FEED_LIMIT:
            self.items.clear()
            self.overflowed = True
        else:
            self.items.append((task_id, text))
        self.wakeup.set()


class TasksFeed:
    """The hub's one global listener for all admin connections (the hub has no remove)."""

    def __init__(self, hub: Any) -> None:
        self.buffers: dict[_FeedBuffer, None] = {}
        hub.add_global_listener(self._on_commit, remote=True)  # every node's tasks

    def _on_commit(self, events: list[Event]) -> None:
        if not self.buffers:
            return
        for event in events:
            if event.type in STATUS_EVENTS:
                text = event.wire_json()
                for buffer in tuple(self.buffers):
                    buffer.push(event.task_id, text)


class _Link:
    """One operator connection: its subscriptions, its outgoing channel, how it ends."""

    def __init__(self, state: "WebState", feed: TasksFeed, nursery: trio.Nursery, token: str) -> None:
        self.state = state
        self.feed_source = feed
        self.nursery = nursery
        self.token = token
        self.out_send, self.out_recv = trio.open_memory_channel[str](OUT_BUFFER)
        self.subs: dict[str, trio.CancelScope] = {}
        self.feed: trio.CancelScope | None = None
        self.close_code = CLOSE_GOING_AWAY
        self.close_reason = ""

    def close(self, code: int, reason: str) -> None:
        self.close_code, self.close_reason = code, reason
        self.nursery.cancel_scope.cancel()

    async def send(self, message: dict[str, Any]) -> None:
        await self.out_send.send(encode(message))

    async def handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "ping":
            await self.send({"type": "pong"})
        elif kind == "subscribe":
            await self._subscribe(message.get("task_id"), message.get("after", 0))
        elif kind == "unsubscribe":
            scope = self.subs.pop(message.get("task_id"), None)  # type: ignore[arg-type]
            if scope is not None:
                scope.cancel()
        elif kind == "subscribe_tasks":
            if self.feed is None:
                self.feed = trio.CancelScope()
                self.nursery.start_soon(self._pump_feed, self.feed)
        elif kind == "unsubscribe_tasks":
            if self.feed is not None:
                self.feed.cancel()
                self.feed = None
        elif kind == "auth":
            await self.error("already_authenticated", "this connection is already authenticated")
        else:
            await self.error("unknown_type", f"unknown message type {kind!r}")

    async def error(self, code: str, message: str, task_id: str | None = None) -> None:
        body: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if task_id is not None:
            body["task_id"] = task_id
        await self.send(body)

    async def _subscribe(self, task_id: Any, after: Any) -> None:
        if not isinstance(task_id, str) or not task_id or len(task_id) > 64:
            await self.error("invalid_message", "subscribe needs a task_id")
            return
        if after is None:
            after = 0
        if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= MAX_SEQ:
            await self.error("invalid_message", f"after must be an integer from 0 to {MAX_SEQ}", task_id)
            return
        if task_id not in self.subs and len(self.subs) >= MAX_SUBSCRIPTIONS:
            await self.error("too_many_subscriptions",
                             f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection", task_id)
            return
        if await self.state.store.get_task(task_id) is None:
            await self.error("not_found", f"no task {task_id}", task_id)
            return
        old = self.subs.pop(task_id, None)
        if old is not None:
            old.cancel()  # a re-subscribe restarts from the new ``after``
        scope = self.subs[task_id] = trio.CancelScope()
        self.nursery.start_soon(self._follow, task_id, after, scope)

    async def _follow(self, task_id: str, after: int, scope: trio.CancelScope) -> None:
        """Replay then live for one task, until unsubscribed or the connection ends.

        Cancellation: ``follow`` unregisters its buffer; nothing else is held.
        """
        with scope:
            async for event in self.state.fanout.hub.follow(task_id, after):
                await self.out_send.send(event.wire_json())

    async def _pump_feed(self, scope: trio.CancelScope) -> None:
        """Move the all-tasks feed to the socket. Cancellation: the buffer is unregistered."""
        buffer = _FeedBuffer()
        feed = self.feed_source
        feed.buffers[buffer] = None
        try:
            with scope:
                while True:
                    if buffer.overflowed:
                        buffer.overflowed = False
                        await self.send({"type": "resync", "task_id": None, "after": None})
                    elif buffer.items:
                        task_id, text = buffer.items.popleft()
                        # A followed task's subscription carries its status events already,
                        # in seq order with the rest: no duplicate from the feed (as §6's /ws).
                        if task_id not in self.subs:
                            await self.out_send.send(text)
                    else:
                        buffer.wakeup = trio.Event()
                        await buffer.wakeup.wait()
        finally:
            feed.buffers.pop(buffer, None)

    async def write(self) -> None:
        async for text in self.out_recv:
            await websocket.send(text)

    async def read(self) -> None:
        while True:
            raw = await websocket.receive()
            message = _parse(raw)
            if message is None:
                self.close(CLOSE_POLICY, "expected JSON text messages with a \"type\"")
                return
            await self.handle(message)

    async def recheck(self, interval: float) -> None:
        """A revoked or expired token, or a lost operator flag, ends the connection."""
        while True:
            await trio.sleep(interval)
            user = await self.state.auth.user_for(self.token)
            if user is None:
                self.close(CLOSE_AUTH_FAILED, "token expired or revoked")
            elif not user.is_operator:
                self.close(CLOSE_NOT_OPERATOR, "not an operator")


def _parse(raw: str | bytes) -> dict[str, Any] | None:
    if isinstance(raw, bytes):
        return None
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return None
    return message


async def _first_token(timeout: float) -> str | None:
    """The ``Authorization`` header's token, else the first message's (``auth``) in time."""
    token = bearer_token(websocket.headers.get("Authorization"))
    if token is not None:
        return token
    with trio.move_on_after(timeout):
        message = _parse(await websocket.receive())
        if message is not None and message.get("type") == "auth" and isinstance(message.get("token"), str):
            return message["token"]
    return None


def register_admin_ws(bp: Blueprint, state: "WebState", stop_requested: Any) -> None:
    settings = state.settings
    # One global hub listener for the app's lifetime, shared by every admin connection.
    feed = TasksFeed(state.fanout.hub)

    @bp.websocket("/admin/ws")
    async def admin_ws() -> None:
        """One operator connection.

        Cancellation (the browser went away, or the server stops): the nursery ends every
        follower and the feed buffer, each unregistering itself; nothing else is held.
        """
        await websocket.accept()
        token = await _first_token(settings.ws_auth_timeout_s)
        user = await state.auth.user_for(token)
        if user is None or token is None:
            await _close(CLOSE_AUTH_FAILED, "missing, invalid, expired or revoked token", settings)
            return
        if not user.is_operator:
            await _close(CLOSE_NOT_OPERATOR, "not an operator: the admin page needs an operator's token",
                         settings)
            return
        async with trio.open_nursery() as nursery:
            link = _Link(state, feed, nursery, token)
            nursery.start_soon(link.write)
            nursery.start_soon(link.read)
            nursery.start_soon(link.recheck, settings.ws_reauth_interval_s)
            await link.send({"type": "welcome", "login": user.login})
            await stop_requested.wait()
            link.close(CLOSE_GOING_AWAY, "server draining")
        await _close(link.close_code, link.close_reason, settings)


async def _close(code: int, reason: str, settings: Any) -> None:
    # A peer that stopped reading must not hold us here: the close frame gets a deadline.
    with trio.move_on_after(settings.ws_ping_timeout_s):
        await websocket.close(code, reason)
