"""One WebSocket connection's protocol (design §6; the messages in ``ws_protocol.py``), without
the socket.

The glue in ``ws.py`` feeds each received message to ``handle``; whenever something is queued
(or the session closes) the session calls the glue's ``wake``, which writes the queue out.
Everything in between lives here: authentication, who may follow what (``usecases.policy.may_see``: a
user their own tasks, any other is ``not_found``, never "forbidden"; an operator any task, and
``subscribe_tasks`` gets every user's; an operator's connection closes with 4403 once its user
is no longer one; a share link's connection: ``share_session.py``), subscriptions, the
bounded outgoing queue with ``resync`` on overflow (``ws_outgoing.py``), ping/pong, errors and
close codes. One user holds at most ``max_user_connections`` authenticated sessions on this
daemon (``Fanout.user_connections``); one more is closed with 4429.

Each subscription is an ``events.Cursor`` (the one replay-then-live merge): attached to the live
feed before its first store read, it replays the store, merges by seq the live events held
meanwhile (bounded as the queue is), then goes live; a live event whose seq is not exactly the
next one sends it back to the store. No gap, no duplicate.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

from pydantic import ValidationError

from ..events import Bounded, Ephemeral, Offer
from ..store import Event, User
from ..usecases.policy import Viewer, may_be_task_id, may_see
from .fanout import Fanout, encode
from .share_session import ResolveShare, ShareAccess
from .ws_outgoing import Item, Outgoing, Subscription, Wire
from .ws_protocol import MAX_SEQ, Auth, CloseCode, Subscribe, Unsubscribe, parsed

CLOSE_GOING_AWAY = CloseCode.GOING_AWAY
CLOSE_POLICY = CloseCode.POLICY
CLOSE_INTERNAL = CloseCode.INTERNAL
CLOSE_AUTH_FAILED = CloseCode.AUTH_FAILED
CLOSE_TOO_MANY = CloseCode.TOO_MANY

REPLAY_PAGE = 200
AUTH_FIRST = 'expected {"type":"auth","token":...} first'


class State(enum.Enum):
    AWAITING_AUTH = "awaiting_auth"
    OPEN = "open"
    CLOSED = "closed"


class Session:
    """The protocol state of one connection. All methods run on the Trio thread.

    ``spawn`` starts a background coroutine for the connection (a replay, a share link's
    expiry); ``authenticate`` maps a token to its user (or None), ``authenticate_share`` a share
    link's token to what it opens (``shares``); ``limiter`` is the per-user subscribe limiter;
    ``wake`` (sync, must not block) is called after each item is queued and when the session
    closes: the glue writes ``queue`` out in order, taking each item and its bytes with
    ``take`` and calling ``sent`` once they are written (``ws_outgoing.Outgoing``).
    ``max_user_connections``: 0 is no cap.
    """

    def __init__(
        self,
        *,
        fanout: Fanout,
        store: Any,
        spawn: Callable[..., None],
        authenticate: Callable[[str | None], Awaitable[User | None]],
        limiter: Any,
        authenticate_share: ResolveShare | None = None,
        wake: Callable[[], None],
        queue_limit: int = 1000,
        max_subscriptions: int = 200,
        queue_max_bytes: int = 1 << 20,
        max_user_connections: int = 0,
    ) -> None:
        self.fanout, self.frame, self.store, self.spawn = fanout, fanout.frame, store, spawn
        self.authenticate, self.limiter, self.wake = authenticate, limiter, wake
        self.shares = ShareAccess(self, authenticate_share, store)
        self.queue_limit, self.queue_max_bytes = queue_limit, queue_max_bytes
        self.max_subscriptions, self.max_user_connections = max_subscriptions, max_user_connections
        self.state = State.AWAITING_AUTH
        self.user: User | None = None
        self.token: str | None = None
        self.viewer: Viewer | None = None  # set once authenticated
        self.account: int | None = None  # the user it counts against in fanout.user_connections
        self.subs: dict[str, Subscription] = {}
        self.watching = False
        self.watch_key: int | None = None  # the user whose status events it gets; None: all
        self.out = Outgoing(queue_limit, queue_max_bytes, self.frame, wake)
        self.queue: Bounded[Item] = self.out.queue
        self.take, self.sent = self.out.take, self.out.sent
        self.close_code: int | None = None
        self.close_reason = ""

    @property
    def resyncs(self) -> int:
        """How many times the queue overflowed."""
        return self.out.resyncs

    @property
    def queued_bytes(self) -> int:
        return self.queue.bytes

    @property
    def max_queued(self) -> int:
        """The most messages the queue ever held (for tests and metrics)."""
        return self.queue.high_water

    @property
    def max_queued_bytes(self) -> int:
        return self.queue.high_water_bytes

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self, token: str | None, share: str | None = None) -> None:
        """Authenticate from the handshake's header (a bearer token, or a share link's
        ``share``); without one, wait for an auth message."""
        if token is not None or share is not None:
            await self._sign_in(token, share)

    def close(self, code: int, reason: str) -> None:
        """Ask the glue to close the socket; drops every subscription and the queue at once."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self.close_code, self.close_reason = code, reason
        self._drop_all()
        self.out.close()
        if self.account is not None:  # once: a closed session is never closed again
            counts = self.fanout.user_connections
            counts[self.account] -= 1
            if counts[self.account] <= 0:
                del counts[self.account]
        self.wake()

    async def _sign_in(self, token: str | None, share: str | None) -> None:
        """As the share link ``share`` alone opens (``ShareAccess.login``), else as ``token``'s
        user; both at once is no valid sign-in."""
        if share is not None and token is None:
            await self.shares.login(share)
        else:
            await self._login(token if share is None else None)

    async def _login(self, token: str | None) -> None:
        user = await self.authenticate(token)
        if user is None:
            self.close(CLOSE_AUTH_FAILED, "invalid, expired or revoked token")
        elif self.enter(user.id, Viewer.of(user)):
            self.user, self.token = user, token

    def enter(self, account: int, viewer: Viewer) -> bool:
        """Open the session as ``viewer``, counted as one more connection of ``account``;
        False if it closed meanwhile, or is closed now (4429) at ``account``'s cap."""
        if self.state is State.CLOSED:
            return False
        counts = self.fanout.user_connections
        cap = self.max_user_connections
        if cap and counts.get(account, 0) >= cap:
            self.close(
                CLOSE_TOO_MANY,
                f"too many WebSocket connections for this user (at most {cap}); close another one first",
            )
            return False
        counts[account] = counts.get(account, 0) + 1
        self.account, self.viewer, self.state = account, viewer, State.OPEN
        return True

    async def recheck(self) -> None:
        """Read the token's user (or the share link: ``ShareAccess.recheck``) again and apply
        ``reauthorized``."""
        if self.state is State.OPEN and not await self.shares.recheck():
            self.reauthorized(await self.authenticate(self.token))

    def reauthorized(self, user: User | None) -> None:
        """The token's user as just read again (here or by the glue's sweep): None (revoked or
        expired) closes with 4401; an operator's connection whose user is no longer one, 4403."""
        if self.state is not State.OPEN:
            return
        assert self.user is not None
        if user is None:
            self.close(CLOSE_AUTH_FAILED, "token expired or revoked")
        elif self.user.is_operator and not user.is_operator:
            self.close(CloseCode.NOT_OPERATOR, "this user is no longer an operator; sign in again")

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
                self.close(CLOSE_POLICY, AUTH_FIRST)
            else:
                self.error("invalid_message", 'expected a JSON object with a "type"')
            return
        kind = message["type"]
        if self.state is State.AWAITING_AUTH:
            if kind != "auth":
                self.close(CLOSE_POLICY, AUTH_FIRST)
                return
            auth = parsed(Auth, message)
            await self._sign_in(auth.token if auth else None, auth.share if auth else None)
            return
        if kind == "ping":
            self._push(None, 0, self.frame('{"type":"pong"}'))
        elif kind == "subscribe":
            await self._subscribe(message)
        elif kind == "unsubscribe":
            request = parsed(Unsubscribe, message)
            if request is not None and request.task_id in self.subs:
                self._drop(self.subs.pop(request.task_id))
        elif kind == "subscribe_tasks":
            if not self.shares.refuses_watch():
                self._watch()
        elif kind == "unsubscribe_tasks":
            self._unwatch()
        elif kind == "auth":
            self.error("already_authenticated", "this connection is already authenticated")
        else:  # cut: the type is the client's, up to a whole message long
            self.error("unknown_type", f"unknown message type {kind[:64]!r}")

    async def _subscribe(self, message: dict[str, Any]) -> None:
        try:
            request = Subscribe.model_validate(message)
        except ValidationError as invalid:
            if any(error["loc"][:1] == ("task_id",) for error in invalid.errors()):
                self.error("invalid_message", "subscribe needs a task_id (1 to 64 characters)")
            else:
                self.error(
                    "invalid_message", f"after must be an integer from 0 to {MAX_SEQ}", message["task_id"]
                )
            return
        task_id, after = request.task_id, request.after or 0
        if self._rate_limited(task_id):
            return
        if task_id not in self.subs and len(self.subs) >= self.max_subscriptions:
            self.error(
                "too_many_subscriptions",
                f"at most {self.max_subscriptions} subscriptions per connection",
                task_id,
            )
            return
        # The token is checked again here, so a revoked one stops new subscriptions at once.
        await self.recheck()
        task = await self.store.get_task(task_id) if may_be_task_id(task_id) else None
        if self.state is not State.OPEN:
            return
        assert self.viewer is not None
        if task is None or not may_see(self.viewer, task):
            self.error("not_found", f"no task {task_id}", task_id)  # never "forbidden"
            return
        old = self.subs.pop(task_id, None)
        if old is not None:
            self._drop(old)
        sub = self.subs[task_id] = Subscription(task_id, after, self.queue_limit, self.queue_max_bytes)
        self.fanout.attach(task_id, self)  # before the first read: nothing can slip between
        self.spawn(self._replay, sub)

    def _watch(self) -> None:
        if self._rate_limited(None) or self.watching:
            return
        assert self.user is not None
        self.watching = True
        self.watch_key = None if self.user.is_operator else self.user.id
        self.fanout.watch(self.watch_key, self)

    def _rate_limited(self, task_id: str | None) -> bool:
        assert self.account is not None
        wait = self.limiter.take(self.account)
        if wait <= 0:
            return False
        seconds = max(1, int(wait + 0.999))
        self.error("rate_limited", f"too many subscribes; retry in {seconds} s", task_id, retry_after=seconds)
        return True

    def error(self, code: str, message: str, task_id: str | None = None, **extra: Any) -> None:
        body: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if task_id is not None:
            body["task_id"] = task_id
        body.update(extra)
        self._push(None, 0, self.frame(encode(body)))

    # -- replay ----------------------------------------------------------------------------------

    async def _replay(self, sub: Subscription) -> None:
        """Catch ``sub`` up into the queue (``Cursor.catch_up``); ends with it live, or once it
        is dropped. Waits for queue room before each message, so a replay never overflows the
        queue itself.

        Cancellation (connection closed): nothing to undo; the subscription is already dropped.
        """
        async with aclosing(sub.catch_up(self.store.read_events, REPLAY_PAGE)) as items:
            async for event, payload in items:
                await self.out.wait_room(lambda: self.subs.get(sub.task_id) is sub)
                if self.subs.get(sub.task_id) is not sub:
                    return
                if isinstance(event, Ephemeral):  # a subscription holds none: they are live-only
                    continue
                self._push(sub, event.seq, self.frame(event.wire_json()) if payload is None else payload)
                if self.subs.get(sub.task_id) is not sub:
                    return  # overflowed: a resync is on its way

    # -- from the fan-out (sync, must not block) -------------------------------------------------

    def live_event(self, event: Event, payload: Wire) -> None:
        sub = self.subs.get(event.task_id)
        if sub is None:
            return
        offer = sub.offer(event, payload, len(payload))
        if offer is Offer.NEXT:
            self._push(sub, event.seq, payload)
        elif offer is Offer.GAP:
            self.spawn(self._replay, sub)

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
        if self.state is not State.CLOSED and not self.out.push(sub, seq, payload):
            self._overflow()

    def _overflow(self) -> None:
        """Drop the whole live feed and tell the client where to pick up each stream."""
        subs, watching = list(self.subs.values()), self.watching
        self._drop_all()
        self.out.resync(subs, watching)

    # -- internals -------------------------------------------------------------------------------

    def _drop(self, sub: Subscription) -> None:
        self.fanout.detach(sub.task_id, self)

    def _drop_all(self) -> None:
        for sub in self.subs.values():
            self._drop(sub)
        self.subs.clear()
        self._unwatch()

    def _unwatch(self) -> None:
        if self.watching:
            self.fanout.unwatch(self.watch_key, self)
        self.watching = False
