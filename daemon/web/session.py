"""One WebSocket connection's protocol (design §6), without the socket.

The glue in ``ws.py`` feeds each received message to ``handle``; whenever something is queued
(or the session closes) the session calls the glue's ``wake``, which writes the queue out.
Everything in between lives here: authentication, subscriptions with replay-then-live, the
bounded outgoing queue with ``resync`` on overflow, ping/pong, errors and close codes. What the
queue holds is opaque here: ``Fanout.frame`` of the message's JSON text (the WebSocket frame in
the daemon, the text itself in tests).

The queue is bounded twice: in messages (``queue_limit``) and in bytes (``queue_max_bytes``,
counted as ``len`` of what is queued; one message is always let into an empty queue, however
large). Either bound overflowing drops the live feed and sends ``resync`` (design §6). A replay
never overflows the queue itself: it waits, before each message, until the queue is at most
half full on both counts. One user holds at most ``max_user_connections`` authenticated
sessions at once on this daemon (counted in ``Fanout.user_connections``); one more is closed
with 4429.

Replay and live meet without gap or duplicate: a subscription is attached to the live feed
*before* its first store read; while it replays, live events wait in a bounded side buffer;
once the store has nothing newer, the buffer is merged by ``seq`` on the Trio thread with no
checkpoint in between, and only then does the subscription go live. A live event whose seq is
not exactly the next one sends the subscription back to the store.
"""

from __future__ import annotations

import collections
import enum
import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import trio

from ..store import Event, User
from .fanout import Fanout, encode

# Close codes (RFC 6455 + the 4000-4999 private range).
CLOSE_GOING_AWAY = 1001  # the daemon drains or stops: reconnect later
CLOSE_POLICY = 1008  # binary frames, a message before auth, a malformed auth
CLOSE_INTERNAL = 1011
CLOSE_AUTH_FAILED = 4401  # no valid token, auth timeout, token revoked or expired
CLOSE_TOO_MANY = 4429  # the user has ``max_user_connections`` WebSockets open already

REPLAY_PAGE = 200
MAX_SEQ = 2**63 - 1  # seq is a 64-bit integer in the store: no event is beyond it
Wire = Any  # what ``Fanout.frame`` makes of a message's JSON text


class State(enum.Enum):
    AWAITING_AUTH = "awaiting_auth"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(eq=False)
class Subscription:
    task_id: str
    after: int  # last seq put in the queue
    sent: int  # last seq the socket accepted
    live: bool = False
    pending: list[tuple[Event, Wire]] = field(default_factory=list)
    pending_bytes: int = 0
    pending_overflow: bool = False


@dataclass(eq=False)
class _Resync:
    """Resolved when sent, so ``after`` is what the client really holds."""

    task_id: str | None
    sub: Subscription | None


Item = tuple[Subscription | _Resync | None, int, Wire]  # (target, seq, payload)


class Session:
    """The protocol state of one connection. All methods run on the Trio thread.

    ``spawn`` starts a background coroutine for the connection (a replay); ``authenticate``
    maps a token to its user (or None); ``limiter`` is the per-user subscribe rate limiter;
    ``wake`` (sync, must not block) is called after each item is queued and when the session
    closes: the glue writes ``queue`` out in order, taking each item with ``queue.popleft()``
    and then calling ``popped``, ``payload_of`` (exactly once: it also gives the item's bytes
    back to ``queue_max_bytes``) and, once written, ``sent``. ``max_user_connections``: 0 is
    no cap.
    """

    def __init__(self, *, fanout: Fanout, store: Any, spawn: Callable[..., None],
                 authenticate: Callable[[str | None], Awaitable[User | None]],
                 limiter: Any, wake: Callable[[], None], queue_limit: int = 1000,
                 max_subscriptions: int = 200, queue_max_bytes: int = 1 << 20,
                 max_user_connections: int = 0) -> None:
        self.fanout = fanout
        self.frame = fanout.frame
        self.store = store
        self.spawn = spawn
        self.authenticate = authenticate
        self.limiter = limiter
        self.wake = wake
        self.queue_limit = queue_limit
        self.queue_max_bytes = queue_max_bytes
        self.max_subscriptions = max_subscriptions
        self.max_user_connections = max_user_connections
        self.counted = False  # this session counts in fanout.user_connections
        self.state = State.AWAITING_AUTH
        self.user: User | None = None
        self.token: str | None = None
        self.subs: dict[str, Subscription] = {}
        self.watching = False
        self.queue: collections.deque[Item] = collections.deque()
        self.queued_bytes = 0  # len() of the payloads in ``queue``
        self.max_queued = 0  # high-water marks, for tests and metrics
        self.max_queued_bytes = 0
        self.resyncs = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self._room = trio.Event()  # the queue went below half

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self, token: str | None) -> None:
        """Authenticate from the handshake's header; without one, wait for an auth message."""
        if token is not None:
            await self._login(token)

    def close(self, code: int, reason: str) -> None:
        """Ask the glue to close the socket; drops every subscription and the queue at once."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self.close_code, self.close_reason = code, reason
        self._drop_all()
        self.queue.clear()
        self.queued_bytes = 0
        if self.counted and self.user is not None:
            self.counted = False
            counts = self.fanout.user_connections
            counts[self.user.id] -= 1
            if counts[self.user.id] <= 0:
                del counts[self.user.id]
        self._room.set()
        self.wake()

    async def _login(self, token: Any) -> None:
        user = await self.authenticate(token if isinstance(token, str) else None)
        if self.state is State.CLOSED:
            return
        if user is None:
            self.close(CLOSE_AUTH_FAILED, "invalid, expired or revoked token")
            return
        counts = self.fanout.user_connections
        cap = self.max_user_connections
        if cap and counts.get(user.id, 0) >= cap:
            self.close(CLOSE_TOO_MANY, f"too many WebSocket connections for this user (at most "
                                       f"{cap}); close another one first")
            return
        counts[user.id] = counts.get(user.id, 0) + 1
        self.counted = True
        self.user, self.token, self.state = user, token, State.OPEN

    async def recheck(self) -> None:
        """Close with 4401 if the token was revoked or expired since it was checked."""
        if self.state is State.OPEN and await self.authenticate(self.token) is None:
            self.expire()

    def expire(self) -> None:
        """The token was found revoked or expired (here or by the glue's sweep): close, 4401."""
        if self.state is State.OPEN:
            self.close(CLOSE_AUTH_FAILED, "token expired or revoked")

    # -- from the client -----------------------------------------------------------------------

    async def handle(self, raw: str | bytes) -> None:
        if self.state is State.CLOSED:
            return
        if not isinstance(raw, str):
            self.close(CLOSE_POLICY, "binary messages are not part of the protocol")
            return
        try:
            message = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            if self.state is State.AWAITING_AUTH:
                self.close(CLOSE_POLICY, "expected {\"type\":\"auth\",\"token\":...} first")
            else:
                self.error("invalid_message", "expected a JSON object with a \"type\"")
            return
        kind = message["type"]
        if self.state is State.AWAITING_AUTH:
            if kind != "auth":
                self.close(CLOSE_POLICY, "expected {\"type\":\"auth\",\"token\":...} first")
                return
            await self._login(message.get("token"))
            return
        if kind == "ping":
            self._push(None, 0, self.frame('{"type":"pong"}'))
        elif kind == "subscribe":
            await self._subscribe(message)
        elif kind == "unsubscribe":
            task_id = message.get("task_id")
            if isinstance(task_id, str) and task_id in self.subs:
                self._drop(self.subs.pop(task_id))
        elif kind == "subscribe_tasks":
            if self._rate_limited(None):
                return
            if not self.watching:
                assert self.user is not None
                self.watching = True
                self.fanout.watch(self.user.id, self)
        elif kind == "unsubscribe_tasks":
            self._unwatch()
        elif kind == "auth":
            self.error("already_authenticated", "this connection is already authenticated")
        else:  # cut: the type is the client's, up to a whole message long
            self.error("unknown_type", f"unknown message type {kind[:64]!r}")

    async def _subscribe(self, message: dict[str, Any]) -> None:
        task_id, after = message.get("task_id"), message.get("after", 0)
        if not isinstance(task_id, str) or not task_id or len(task_id) > 64:
            self.error("invalid_message", "subscribe needs a task_id")
            return
        if after is None:
            after = 0
        if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= MAX_SEQ:
            self.error("invalid_message", "after must be a non-negative integer", task_id)
            return
        if self._rate_limited(task_id):
            return
        if task_id not in self.subs and len(self.subs) >= self.max_subscriptions:
            self.error("too_many_subscriptions",
                       f"at most {self.max_subscriptions} subscriptions per connection", task_id)
            return
        # The token is checked again here, so a revoked one stops new subscriptions at once.
        await self.recheck()
        task = await self.store.get_task(task_id)
        if self.state is not State.OPEN:
            return
        assert self.user is not None
        if task is None or task.user_id != self.user.id:
            self.error("not_found", f"no task {task_id}", task_id)  # never "forbidden"
            return
        self.fanout.remember_owner(task.id, task.user_id)
        old = self.subs.pop(task_id, None)
        if old is not None:
            self._drop(old)
        sub = self.subs[task_id] = Subscription(task_id, after, after)
        self.fanout.attach(task_id, self)  # before the first read: nothing can slip between
        self.spawn(self._replay, sub)

    def _rate_limited(self, task_id: str | None) -> bool:
        assert self.user is not None
        wait = self.limiter.take(self.user.id)
        if wait <= 0:
            return False
        seconds = max(1, int(wait + 0.999))
        self.error("rate_limited", f"too many subscribes; retry in {seconds} s", task_id,
                   retry_after=seconds)
        return True

    def error(self, code: str, message: str, task_id: str | None = None, **extra: Any) -> None:
        body: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if task_id is not None:
            body["task_id"] = task_id
        body.update(extra)
        self._push(None, 0, self.frame(encode(body)))

    # -- replay ----------------------------------------------------------------------------------

    async def _replay(self, sub: Subscription) -> None:
        """Store pages, then merge the live side buffer; ends with ``sub`` live.

        Waits for queue room before each page, so a replay never overflows the queue itself.
        Cancellation (connection closed): nothing to undo; the subscription is already dropped.
        """
        while True:
            sub.pending.clear()
            sub.pending_bytes = 0
            sub.pending_overflow = False
            while True:
                await self._wait_room(sub)
                if self.subs.get(sub.task_id) is not sub:
                    return
                page = await self.store.read_events(sub.task_id, sub.after,
                                                    min(REPLAY_PAGE, self.queue_limit // 2))
                if self.subs.get(sub.task_id) is not sub:
                    return
                for event in page:
                    if event.seq > sub.after:
                        if not self._has_room():  # big events: a page may exceed the bytes
                            await self._wait_room(sub)
                            if self.subs.get(sub.task_id) is not sub:
                                return
                        self._push(sub, event.seq, self.frame(event.wire_json()))
                        sub.after = event.seq
                        if self.subs.get(sub.task_id) is not sub:
                            return  # overflowed: a resync is on its way
                if len(page) < min(REPLAY_PAGE, self.queue_limit // 2):
                    break
            if sub.pending_overflow:
                continue
            if self._merge_pending(sub):
                return

    def _has_room(self) -> bool:
        """At most half full, in messages and in bytes: a replay may push."""
        return (len(self.queue) <= self.queue_limit // 2
                and self.queued_bytes <= self.queue_max_bytes // 2)

    async def _wait_room(self, sub: Subscription) -> None:
        """Until the queue has room (or ``sub`` is dropped). Several replays share one event."""
        while not self._has_room() and self.subs.get(sub.task_id) is sub:
            if self._room.is_set():
                self._room = trio.Event()
            await self._room.wait()

    def _merge_pending(self, sub: Subscription) -> bool:
        for event, payload in sub.pending:
            if event.seq <= sub.after:
                continue
            if event.seq != sub.after + 1:
                return False  # a gap: read the store again
            self._push(sub, event.seq, payload)
            sub.after = event.seq
        sub.pending.clear()
        sub.live = True
        return True

    # -- from the fan-out (sync, must not block) -------------------------------------------------

    def live_event(self, event: Event, payload: Wire) -> None:
        sub = self.subs.get(event.task_id)
        if sub is None:
            return
        if not sub.live:
            if (len(sub.pending) < self.queue_limit
                    and sub.pending_bytes + len(payload) <= self.queue_max_bytes):
                sub.pending.append((event, payload))
                sub.pending_bytes += len(payload)
            else:
                sub.pending_overflow = True
            return
        if event.seq <= sub.after:
            return
        if event.seq != sub.after + 1:
            sub.live = False
            self.spawn(self._replay, sub)
            return
        self._push(sub, event.seq, payload)
        sub.after = event.seq

    def live_ephemeral(self, task_id: str, payload: Wire) -> None:
        sub = self.subs.get(task_id)
        if sub is not None and sub.live:
            self._push(None, 0, payload)

    def notify(self, task_id: str, payload: Wire) -> None:
        # The task's own subscription already carries its status events: no duplicate.
        if self.watching and task_id not in self.subs:
            self._push(None, 0, payload)

    # -- the outgoing queue ----------------------------------------------------------------------

    def _push(self, sub: Subscription | None, seq: int, payload: Wire) -> None:
        """Queue one message and wake the glue; the glue may write it (and close) right here."""
        if self.state is State.CLOSED:
            return
        queue, size = self.queue, self.queued_bytes + len(payload)
        if len(queue) >= self.queue_limit or (size > self.queue_max_bytes and queue):
            self._overflow()
            return
        queue.append((sub, seq, payload))
        self.queued_bytes = size
        if len(queue) > self.max_queued:
            self.max_queued = len(queue)
        if size > self.max_queued_bytes:
            self.max_queued_bytes = size
        self.wake()

    def _overflow(self) -> None:
        """Drop the whole live feed and tell the client where to pick up each stream."""
        self.resyncs += 1
        self.queue.clear()
        self.queued_bytes = 0
        subs = list(self.subs.values())
        self._drop_all()
        for sub in subs:
            self.queue.append((_Resync(sub.task_id, sub), 0, ""))
        if self.watching:
            self._unwatch()
            self.queue.append((_Resync(None, None), 0, ""))
        self._room.set()
        self.wake()

    def popped(self) -> None:
        """The writer took an item off the queue: a waiting replay may go on below half."""
        if self._has_room():
            self._room.set()

    def payload_of(self, item: Item) -> Wire:
        """What to write for an item taken off the queue (call once per item: its bytes leave
        the queue's count here); a resync is encoded now, with what was sent."""
        target, _, payload = item
        if isinstance(target, _Resync):
            after = target.sub.sent if target.sub is not None else None
            return self.frame(encode({"type": "resync", "task_id": target.task_id, "after": after}))
        self.queued_bytes -= len(payload)
        if not self._room.is_set() and self._has_room():
            self._room.set()
        return payload

    @staticmethod
    def sent(item: Item) -> None:
        target, seq, _ = item
        if isinstance(target, Subscription) and seq > target.sent:
            target.sent = seq

    # -- internals -------------------------------------------------------------------------------

    def _drop(self, sub: Subscription) -> None:
        self.fanout.detach(sub.task_id, self)

    def _drop_all(self) -> None:
        for sub in self.subs.values():
            self._drop(sub)
        self.subs.clear()
        self._unwatch()

    def _unwatch(self) -> None:
        if self.watching and self.user is not None:
            self.fanout.unwatch(self.user.id, self)
        self.watching = False
