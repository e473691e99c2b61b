"""The HTTP port: Hypercorn serves every route but ``/ws``, which ``ws.py`` serves on the socket.

This module owns the listening socket. For each connection it reads the head of the first
request: a WebSocket upgrade of ``/ws`` goes to ``ws.serve_websocket``; anything else goes to
Hypercorn's per-connection server (``TCPServer``) with the bytes already read handed back first,
so every other route behaves as under ``hypercorn.trio.serve``. When a later
request on a keep-alive connection upgrades ``/ws``, Hypercorn passes it to ``_Router`` (the
ASGI app it calls), which takes the connection back: Hypercorn's part is cancelled and writes
nothing more, and the socket goes to ``ws.serve_websocket`` as above.

Under abuse (``http_limits.py``): at most ``http_max_connections`` connections are open, and
``http_max_connections_per_address`` from one client address; one more is answered 503 and
closed at once, the others untouched. A request must arrive whole, head and body, within
``http_request_timeout_s`` of the moment the connection waits for it, however the bytes
trickle (else 408 and close); a request head must also be whole within Hypercorn's
``keep_alive_timeout`` (5 s; the first one is read here, so a trickled head never costs a
Hypercorn connection), and an idle keep-alive connection goes then. A response chunk the
client does not take within ``http_request_timeout_s`` drops the connection. At start, the
open-file limit is raised to what the connection cap needs, or a warning says how to.

``serve`` does what ``hypercorn.trio.run.worker_serve`` does, through the Hypercorn internals
wrapped in ``daemon/thirdparty/hypercorn_trio.py``, but leaves out Hypercorn's "Running on ...
(CTRL + C to quit)" banner: ``service.py`` logs where the daemon serves.
"""

from __future__ import annotations

import contextvars
import errno
import logging
import math
import random
import re
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import h11
import trio
from hypercorn.config import Config
from wsproto import ConnectionType
from wsproto.events import Request
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from ..thirdparty.hypercorn_trio import (
    AppWrapper,
    ConnectionServer,
    ConnectionState,
    Worker,
    app_lifespan,
    asgi_app,
    listening_sockets,
    socket_url,
)
from .http_limits import ConnectionCaps, RequestDeadline, canned, client_key, ensure_fd_limit
from .ws import RECV_BYTES, WS_PATH, serve_websocket

if TYPE_CHECKING:
    from .app import WebState

log = logging.getLogger(__name__)

HEAD_LIMIT = 16 * 1024  # Hypercorn's h11_max_incomplete_size: a longer head is Hypercorn's to refuse
ACCEPT_BATCH = 64  # connections accepted per wake-up
LISTEN_BACKLOG = 1024  # Hypercorn's 100 drops SYNs when a thousand phones reconnect at once
ACCEPT_RETRY_S = 0.1
HEAD_JITTER = 0.25  # a first head's deadline, up to this fraction later (see ``connection``)
REFUSAL_LOG_EVERY_S = 60.0  # a flood of refused connections logs one line a minute
_HEAD_END = re.compile(rb"\n\r?\n")  # as h11 finds it
_WS_HEADS = (f"GET {WS_PATH} ".encode(), f"GET {WS_PATH}?".encode())
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}  # wait, retry
_HARMLESS = {errno.ECONNABORTED, errno.EPERM, errno.EPROTO}  # that connection is gone: go on
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_UNAVAILABLE = canned(
    503,
    "Service Unavailable",
    "too_many_connections",
    "too many open connections; retry later",
    "retry-after: 1",
)
_handoff: contextvars.ContextVar[_Handoff] = contextvars.ContextVar("agentd_handoff")


async def serve(
    app: Any,
    config: Config,
    state: WebState,
    *,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` and ``/ws`` on ``config.bind`` until ``shutdown_trigger`` returns.

    ``task_status.started(urls)`` once listening. At shutdown: stop accepting, let Hypercorn
    close idle keep-alive connections, give the others ``config.graceful_timeout`` and cancel
    what is left, then run the app's shutdown. Cancellation: all stops at once, sockets closed.
    """
    ensure_fd_limit(state.settings.http_max_connections)
    router = _Router(asgi_app(app, config))
    async with app_lifespan(router, config) as connection_state:
        door = _Door(router, config, state, connection_state)
        listeners = listening_sockets(config)
        try:
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as acceptors:
                    urls = []
                    for listener in listeners:
                        listener.setblocking(False)
                        listener.listen(max(config.backlog, LISTEN_BACKLOG))
                        urls.append(socket_url(listener))
                        acceptors.start_soon(door.accept, listener, connections)
                    task_status.started(urls)
                    await shutdown_trigger()
                    acceptors.cancel_scope.cancel()
                _close_all(listeners)
                await door.worker.terminate()
                connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        finally:
            _close_all(listeners)


def _close_all(socks: list[socket.socket]) -> None:
    """Close what is still open (Hypercorn may have closed a connection already)."""
    for sock in socks:
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(sock)
            sock.close()


class _Router:
    """The ASGI app Hypercorn calls: takes ``/ws`` upgrades back, passes the rest to ``app``.

    HTTP/2 WebSockets (RFC 8441) share their connection with other streams, so they cannot be
    taken back: those reach ``app``, which has no ``/ws`` route.
    """

    def __init__(self, app: AppWrapper) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any, sync_spawn: Any, call_soon: Any) -> None:
        if (
            scope["type"] == "websocket"
            and scope["path"] == WS_PATH
            and scope["http_version"] in ("1.0", "1.1")
        ):
            query = scope["query_string"]
            _handoff.get().take(scope["headers"], scope["raw_path"] + (b"?" + query if query else b""))
            return
        handoff = _handoff.get(None)  # None for the lifespan
        if handoff is not None:
            if scope["type"] == "http":
                receive = handoff.watch_body(receive)
            else:
                handoff.deadline.upgraded()
        await self.app(scope, receive, send, sync_spawn, call_soon)


class _Handoff(trio.abc.HalfCloseableStream):
    """The connection as Hypercorn's ``TCPServer`` sees it: the bytes read here come first.

    ``take`` ends Hypercorn's part (its cancel scope is ``scope``); from then on it writes and
    closes nothing, and the socket is the WebSocket's. ``deadline`` (a ``RequestDeadline``) sets
    the same scope's deadline: when it passes, Hypercorn's part ends as if taken, and
    ``quiet`` says whether nothing of an answer was written since the request began.
    """

    def __init__(self, sock: socket.socket, head: bytes, timeout: float, since: float) -> None:
        self.stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self.socket = self.stream.socket  # TCPServer reads the peer's address from it
        self.head = head
        self.timeout = timeout
        self.scope = trio.CancelScope()
        self.deadline = RequestDeadline(self.scope, timeout, since)
        self.quiet = True
        self.taken: tuple[list[tuple[bytes, bytes]], bytes] | None = None

    def take(self, headers: list[tuple[bytes, bytes]], target: bytes) -> None:
        self.taken = (headers, target)
        self.scope.cancel()

    @property
    def ours(self) -> bool:
        """Hypercorn may still write and close: not taken, not past the deadline."""
        return self.taken is None and not self.scope.cancel_called

    def waiting(self) -> None:
        """Hypercorn finished a request and response and waits for the next request."""
        self.quiet = True
        self.deadline.waiting()

    def watch_body(self, receive: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        """``receive`` for an HTTP request that just began: its deadline ends with its body."""
        key = object()
        self.deadline.began(key)

        async def receive_watched() -> Any:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                self.deadline.received(key)
            return message

        return receive_watched

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.head:
            data, self.head = self.head, b""
            await trio.lowlevel.checkpoint()
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Hypercorn's writes (shielded from cancellation there): a client that does not take
        them within the timeout is treated as gone."""
        if self.ours:
            self.quiet = False
            with trio.move_on_after(self.timeout):
                await self.stream.send_all(data)
                return
            raise trio.BrokenResourceError("the client did not read the response in time")

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if self.ours:
            await self.stream.send_eof()

    async def aclose(self) -> None:
        if self.ours:
            await self.stream.aclose()


class _Door:
    """Accepts connections, within the caps, and sends each to ``/ws`` or to Hypercorn."""

    def __init__(
        self, app: AppWrapper, config: Config, state: WebState, connection_state: ConnectionState
    ) -> None:
        self.app, self.config, self.state = app, config, state
        self.connection_state = connection_state
        self.worker = Worker()
        settings = state.settings
        self.caps = state.connections = ConnectionCaps(
            settings.http_max_connections, settings.http_max_connections_per_address
        )
        self.request_timeout = settings.http_request_timeout_s
        self.late = canned(
            408,
            "Request Timeout",
            "request_timeout",
            f"the request did not arrive whole within {self.request_timeout:g} s",
        )
        self.refused = 0  # since the last log line about it
        self.refusal_logged_at = -math.inf

    async def accept(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        """Accept connections into ``nursery`` until cancelled.

        Cancellation: accepting stops; the caller closes ``listener``.
        """
        while True:
            await trio.lowlevel.wait_readable(listener)
            for _ in range(ACCEPT_BATCH):
                try:
                    sock, address = listener.accept()
                except BlockingIOError:
                    break
                except OSError as error:
                    if error.errno in _HARMLESS:
                        continue
                    if error.errno not in _OUT_OF_RESOURCES:
                        raise
                    log.warning("cannot accept a connection (%s); retrying in %g s", error, ACCEPT_RETRY_S)
                    await trio.sleep(ACCEPT_RETRY_S)
                    break
                sock.setblocking(False)
                key = client_key(sock.family, address)
                refusal = self.caps.admit(key)
                if refusal is not None:
                    self._refuse(sock, refusal)
                    continue
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(self.connection, sock, key)

    def _refuse(self, sock: socket.socket, why: str) -> None:
        """Answer 503 and close, without reading: the connections already open go on."""
        _send_quietly(sock, _UNAVAILABLE)
        sock.close()
        self.refused += 1
        now = trio.current_time()
        if now - self.refusal_logged_at >= REFUSAL_LOG_EVERY_S:
            log.warning(
                "refused %d connection(s) in the last %g s: %s", self.refused, REFUSAL_LOG_EVERY_S, why
            )
            self.refused, self.refusal_logged_at = 0, now

    async def connection(self, sock: socket.socket, key: str | None = None) -> None:
        """One accepted connection (counted under ``key`` in the caps), to its end.

        Cancellation: the socket is closed; Hypercorn's part ends as it does when cancelled.
        """
        since = trio.current_time()
        try:
            # Up to a quarter later at random: the connections an attacker opened together are
            # not all cut (and reconnected) in the same instant, a stall for everyone else.
            head_by = since + min(self.config.keep_alive_timeout, self.request_timeout) * (
                1 + HEAD_JITTER * random.random()
            )
            head, kind = await _first_head(sock, head_by)
            if kind == "late":
                _send_quietly(sock, self.late)
            if kind in ("late", "closed"):
                return
            if kind == "ws":
                upgrade = _handshake(lambda h: h.receive_data(head[: _head_end(head)]))
                if upgrade is not None:
                    await serve_websocket(sock, *upgrade, head[_head_end(head) :], self.state)
                    return
            handoff = _Handoff(sock, head, self.request_timeout, since)
            token = _handoff.set(handoff)
            server = ConnectionServer(
                self.app, self.config, self.worker, self.connection_state, handoff, on_idle=handoff.waiting
            )
            try:
                with handoff.scope:
                    await server.run()
            finally:
                _handoff.reset(token)
            if handoff.taken is None and handoff.scope.cancelled_caught:  # the deadline passed
                if handoff.quiet and server.speaks_http1():
                    _send_quietly(sock, self.late)
                return
            if handoff.taken is not None:
                headers, target = handoff.taken
                upgrade = _handshake(lambda h: h.initiate_upgrade_connection(headers, target))
                if upgrade is None:
                    _send_quietly(sock, _BAD_REQUEST)
                else:
                    await serve_websocket(sock, *upgrade, b"", self.state)
        except Exception:
            log.exception("HTTP connection failed")
        finally:
            _close_all([sock])
            self.caps.release(key)


async def _first_head(sock: socket.socket, deadline: float) -> tuple[bytes, str]:
    """Read the first request's head, and say what came: ``ws`` (a whole ``GET /ws`` head),
    ``http`` (another whole head, or ``HEAD_LIMIT`` bytes without an end: Hypercorn's to serve
    or refuse), ``closed`` (the client closed, or sent nothing by ``deadline``) or ``late``
    (part of a head by ``deadline``). What came after the head comes with it.

    Heads are read here, not by Hypercorn, so that a client trickling one costs a wake-up per
    read and no more: no Hypercorn connection is set up until a whole head is in.
    """
    buffer = b""
    with trio.move_on_at(deadline):
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                chunk = sock.recv(RECV_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                return buffer, "closed"
            if not chunk:
                return buffer, "closed"
            searched = max(0, len(buffer) - 2)  # a head end may straddle two reads
            buffer += chunk
            if _HEAD_END.search(buffer, searched):
                return buffer, "ws" if buffer.startswith(_WS_HEADS) else "http"
            if len(buffer) >= HEAD_LIMIT:
                return buffer, "http"
    return buffer, "late" if buffer else "closed"


def _head_end(head: bytes) -> int:
    match = _HEAD_END.search(head)
    assert match is not None
    return match.end()


def _handshake(feed: Callable[[H11Handshake], None]) -> tuple[H11Handshake, Request] | None:
    """A server handshake fed the request, and the request if it is a valid WebSocket upgrade."""
    handshake = H11Handshake(ConnectionType.SERVER)
    try:
        feed(handshake)
    except (RemoteProtocolError, h11.ProtocolError):
        return None
    request = next(handshake.events(), None)
    return (handshake, request) if isinstance(request, Request) else None


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.send(data)
    except OSError:
        pass
