"""``/ws``: WebSocket connections on the raw socket, each driving one ``session.Session``.

``listener.py`` hands every ``/ws`` upgrade over with its socket. Per connection there is one
Trio task, the reader: it parses frames (wsproto) and feeds ``Session.handle``. Writing needs no
task of its own: the fan-out frames each event once (``frame_text``; server frames are not
masked, so every subscriber gets the same bytes) and the session's ``wake`` writes its queue
with a non-blocking ``send`` there and then. Only when the kernel's buffer is full does a writer
task wait for room; it ends once everything is written.

Two sweeps serve all connections (``ws_sweeps``): keep-alive pings that drop a dead peer, and
token (and share link) re-checks. Without an Authorization header the first message must be
``auth`` within ``ws_auth_timeout_s``. A message longer than ``MAX_MESSAGE_CHARS``
closes the connection with 1009. After a close frame, either side's, the peer gets
``ws_ping_timeout_s`` to answer before the socket is closed.

Under abuse: what waits to be written besides the session's (bounded) queue is bounded too. Only
the latest of a client's pings is answered (RFC 6455 §5.5.3): one pong waits at a time, written
once per read; our own ping waits at most once; the 101 and the close frame are written once
each. A read is handled in slices of ``EVENTS_PER_SLICE`` frames with a checkpoint between them,
so a burst of tiny frames shares the event loop. Each connection has a frame budget
(``FRAME_BURST``, refilled at ``FRAMES_PER_S``): a client past it is read no faster than the
budget refills, a read at a time no larger than the frames it may still send, the rest waiting
in the kernel while TCP slows the client down; a ping flood costs the daemon no more CPU than
any other connection.
"""

from __future__ import annotations

import logging
import math
import socket
from typing import TYPE_CHECKING, Any

import trio
from wsproto.connection import Connection as WsProtocol, ConnectionState as WsState
from wsproto.events import AcceptConnection, CloseConnection, Message, Ping, Request, TextMessage
from wsproto.handshake import H11Handshake

from .auth import bearer_token, share_token, shared_for
from .session import CLOSE_AUTH_FAILED, CLOSE_GOING_AWAY, CLOSE_INTERNAL, Session, State
from .ws_protocol import MAX_MESSAGE_CHARS, CloseCode

if TYPE_CHECKING:
    from .app import WebState

log = logging.getLogger(__name__)

WS_PATH = "/ws"
RECV_BYTES = 65536
EVENTS_PER_SLICE = 64  # frames handled between checkpoints (about 0.4 ms of wsproto's parsing)
FRAME_BURST = 1024  # frames a client may send at once (200 subscribes after a reconnect fit)...
FRAMES_PER_S = 256  # ...and then per second, on average
MIN_FRAME_BYTES = 6  # a client's frame is masked: 2 bytes of header and 4 of mask at least
_PING = b"\x89\x00"  # FIN + ping, unmasked, empty


def frame_pong(payload: bytes) -> bytes:
    """A pong echoing ``payload`` (at most 125 bytes: wsproto refuses longer pings)."""
    return bytes((0x8A, len(payload))) + payload


def frame_text(text: str) -> bytes:
    """``text`` as one unmasked, unfragmented text frame (RFC 6455 §5.2)."""
    data = text.encode()
    n = len(data)
    if n < 126:
        return bytes((0x81, n)) + data
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + data
    return b"\x81\x7f" + n.to_bytes(8, "big") + data


async def serve_websocket(
    sock: socket.socket, handshake: H11Handshake, request: Request, leftover: bytes, state: WebState
) -> None:
    """Accept the upgrade ``request`` received on ``sock`` and serve the connection to its end.

    ``leftover``: what arrived after the request head. The caller closes ``sock`` afterwards.
    Cancellation: the connection ends at once, without a close frame; its subscriptions are
    dropped from the fan-out.
    """
    greeting = handshake.send(AcceptConnection())
    assert handshake.connection is not None
    header = next((v for k, v in request.extra_headers if k.lower() == b"authorization"), None)
    text = header.decode("latin-1") if header is not None else None
    await Connection(sock, handshake.connection, state).run(
        greeting, leftover, bearer_token(text), share_token(text)
    )


class Connection:
    """One client: the reader's state and the synchronous write path. Runs on the Trio thread."""

    __slots__ = (
        "auth_at",
        "close_at",
        "closing",
        "control",
        "done",
        "drained",
        "frames",
        "frames_at",
        "item",
        "last_heard",
        "nursery",
        "out",
        "parts",
        "ping_due",
        "pong",
        "protocol",
        "session",
        "size",
        "sock",
        "state",
        "wait",
        "writing",
    )

    def __init__(self, sock: socket.socket, protocol: WsProtocol, state: WebState) -> None:
        self.sock, self.protocol, self.state = sock, protocol, state
        self.session: Session | None = None
        self.nursery: trio.Nursery | None = None  # open while the reader runs
        self.control = b""  # the 101 answer, then our close frame: each written once
        self.pong: bytes | None = None  # the latest ping's payload, to echo (one pong waits)
        self.ping_due = False  # our ping waits to be written
        self.out: Any = None  # the rest of a frame the socket took only part of
        self.item: Any = None  # the queue item ``out`` belongs to
        self.writing = False  # a writer task waits for room
        self.drained: trio.Event | None = None
        self.closing = False  # our close frame is queued or sent
        self.close_at = math.inf
        self.auth_at = math.inf
        self.wait: trio.CancelScope | None = None  # the reader's wait for data
        self.done = False
        self.last_heard = trio.current_time()
        self.parts: list[Any] = []
        self.size = 0
        self.frames = float(FRAME_BURST)  # the frame budget left, as of ``frames_at``
        self.frames_at = trio.current_time()

    async def run(
        self, greeting: bytes, leftover: bytes, token: str | None, share: str | None = None
    ) -> None:
        """Send ``greeting`` (the 101), then serve the session until the connection ends;
        ``token`` or ``share``: the upgrade's ``Authorization`` (bearer, or a share link's).

        Cancellation: as ``serve_websocket``. An unexpected error is logged and closes this
        connection alone (1011).
        """
        state, settings = self.state, self.state.settings
        self.control = greeting
        self.auth_at = trio.current_time() + settings.ws_auth_timeout_s
        session = None
        try:
            try:
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    session = self.session = Session(
                        fanout=state.fanout,
                        store=state.store,
                        spawn=nursery.start_soon,
                        authenticate=state.auth.user_for,
                        authenticate_share=lambda share: shared_for(state.services, share),
                        limiter=state.subscribe_limiter,
                        wake=self.wake,
                        queue_limit=settings.ws_queue_limit,
                        max_subscriptions=settings.ws_max_subscriptions,
                        queue_max_bytes=settings.ws_queue_max_bytes,
                        max_user_connections=settings.ws_max_connections_per_user,
                    )
                    state.sessions[session] = self
                    self.flush()
                    if state.going_away:
                        session.close(CLOSE_GOING_AWAY, "server draining")
                    elif token is not None or share is not None:  # before any message is read
                        await session.open(token, share)
                    self.protocol.receive_data(leftover)  # frames sent right after the head
                    if not await self._received():
                        await self._read()
                    if self.writing and self.closing:  # a close frame still on its way
                        self.drained = trio.Event()
                        with trio.move_on_at(self.close_at):
                            await self.drained.wait()
                    nursery.cancel_scope.cancel()
            finally:
                self.nursery = None
        except Exception:
            log.exception("WebSocket connection failed")
            if session is not None:
                session.close(CLOSE_INTERNAL, "internal error")  # written if the socket takes it
        finally:
            self.done = True
            if session is not None:
                state.sessions.pop(session, None)
                session.close(session.close_code or CLOSE_GOING_AWAY, session.close_reason)

    # -- reading -------------------------------------------------------------------------------

    async def _read(self) -> None:
        """Read and handle frames until the peer goes, or the close handshake ends or times out."""
        sock, session = self.sock, self.session
        assert session is not None
        while True:
            if self.closing:
                deadline = self.close_at
            elif session.state is State.AWAITING_AUTH:
                deadline = self.auth_at
            else:
                deadline = math.inf
            wait = self.wait = trio.CancelScope(deadline=deadline)
            with wait:
                await self._refill()
                await trio.lowlevel.wait_readable(sock)
            self.wait = None
            if wait.cancelled_caught:
                if session.state is State.AWAITING_AUTH:
                    session.close(CLOSE_AUTH_FAILED, "no auth message in time")
                    continue
                return  # our close frame went unanswered
            try:  # no more bytes than the frames the budget allows could fill
                data = sock.recv(min(RECV_BYTES, int(self.frames) * MIN_FRAME_BYTES))
            except BlockingIOError:
                continue
            except OSError:  # reset by the peer
                return
            if not data:
                return
            self.last_heard = trio.current_time()
            self.protocol.receive_data(data)
            if await self._received():
                return

    async def _refill(self) -> None:
        """Refill the frame budget for the time passed; if less than a slice is left, wait
        until a slice is there again. Cancellation (a deadline of ``_read``): nothing is lost."""
        now = trio.current_time()
        self.frames = min(FRAME_BURST, self.frames + (now - self.frames_at) * FRAMES_PER_S)
        self.frames_at = now
        if self.frames < EVENTS_PER_SLICE:
            await trio.sleep((EVENTS_PER_SLICE - self.frames) / FRAMES_PER_S)
            self.frames, self.frames_at = float(EVENTS_PER_SLICE), trio.current_time()

    async def _received(self) -> bool:
        """Handle the frames parsed so far, a slice at a time; True once the close handshake is
        over. The latest ping is answered at the end (and at each slice's end)."""
        protocol, session = self.protocol, self.session
        assert session is not None
        handled = 0
        for event in protocol.events():
            handled += 1
            self.frames -= 1
            if handled % EVENTS_PER_SLICE == 0:
                self._answer_ping()
                await trio.lowlevel.checkpoint()
            if isinstance(event, Message):
                if self.closing:
                    continue  # what the peer sends after our close frame is dropped
                self.size += len(event.data)
                if self.size > MAX_MESSAGE_CHARS:
                    self.parts = []
                    session.close(CloseCode.TOO_BIG, f"a message may have {MAX_MESSAGE_CHARS} characters")
                    continue
                self.parts.append(event.data)
                if event.message_finished:
                    parts, self.parts, self.size = self.parts, [], 0
                    joiner: Any = "" if isinstance(event, TextMessage) else b""
                    await session.handle(parts[0] if len(parts) == 1 else joiner.join(parts))
            elif isinstance(event, Ping):
                if protocol.state is WsState.OPEN and not self.closing:
                    self.pong = bytes(event.payload)  # a newer ping replaces an unanswered one
            elif isinstance(event, CloseConnection):
                if protocol.state is WsState.OPEN:  # wsproto found a protocol error: its code
                    session.close(event.code, event.reason or "protocol error")
                    continue
                if protocol.state is WsState.REMOTE_CLOSING:  # the peer closes first: answer
                    self._closing()
                    self.send_control(protocol.send(event.response()))
                    session.close(event.code, "closed by the client")
                return True
        self._answer_ping()
        return False

    def _answer_ping(self) -> None:
        if self.pong is not None and not self.writing and not self.done:
            self.flush()

    # -- writing (sync: called from the fan-out, the session and the sweeps) --------------------

    def wake(self) -> None:
        """The session queued something, or closed: write now, as far as the socket takes it."""
        if self.done:
            return
        assert self.session is not None
        if self.session.state is State.CLOSED and not self.closing:
            self._closing()
            if self.protocol.state is WsState.OPEN:
                code = self.session.close_code or CLOSE_GOING_AWAY
                self.control += self.protocol.send(CloseConnection(code, self.session.close_reason))
        if not self.writing:
            self.flush()

    def send_control(self, frame: bytes) -> None:
        """Write the 101 or a close frame (once each per connection) before anything else."""
        if self.done:
            return
        self.control += frame
        if not self.writing:
            self.flush()

    def ping(self) -> None:
        """Our keep-alive ping; one still unwritten is not doubled."""
        if not self.closing and not self.done:
            self.ping_due = True
            if not self.writing:
                self.flush()

    def flush(self) -> None:
        """Write control frames, then the session's queue, until the socket would block; then
        leave the rest to a writer task."""
        sock, session = self.sock, self.session
        assert session is not None
        queue = session.queue
        while True:
            data = self.out
            if data is None:
                if self.control:
                    data, self.control = self.control, b""
                elif self.closing:  # nothing follows a close frame (the session's queue is cleared)
                    self.pong, self.ping_due = None, False
                    return
                elif self.pong is not None:
                    data, self.pong = frame_pong(self.pong), None
                elif self.ping_due:
                    data, self.ping_due = _PING, False
                elif queue:
                    self.item, data = session.take()
                else:
                    return
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:  # the peer is gone
                self.abort()
                return
            if sent == len(data):
                self.out = None
                if self.item is not None:
                    session.sent(self.item)
                    self.item = None
                continue
            self.out = memoryview(data)[sent:]
            if not self.writing and self.nursery is not None:
                self.writing = True
                self.nursery.start_soon(self._write_later)
            return

    async def _write_later(self) -> None:
        """Wait for room in the socket and write, until nothing is left.

        Cancellation (the connection ends): what is still unwritten goes with it.
        """
        try:
            while self.out is not None and not self.done:
                await trio.lowlevel.wait_writable(self.sock)
                self.flush()
        finally:
            self.writing = False
            if self.drained is not None:
                self.drained.set()

    def _closing(self) -> None:
        """From now on the reader waits at most ``ws_ping_timeout_s`` for the peer's answer."""
        self.closing = True
        self.close_at = trio.current_time() + self.state.settings.ws_ping_timeout_s
        if self.wait is not None:
            self.wait.deadline = self.close_at

    def abort(self) -> None:
        """Drop the connection now, without a close frame (a dead or broken peer)."""
        self.done = True
        if self.session is not None:
            self.session.close(CLOSE_GOING_AWAY, "connection lost")
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()
