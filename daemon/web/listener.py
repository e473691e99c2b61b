"""The HTTP port: Hypercorn serves every route but ``/ws``, which ``ws.py`` serves on the socket.

This module owns the listening socket. For each connection it reads the start of the first
request: a WebSocket upgrade of ``/ws`` goes to ``ws.serve_websocket``; anything else goes to
Hypercorn's per-connection server (``TCPServer``) with the bytes already read handed back first,
so every other route (``/admin/ws`` too) behaves as under ``hypercorn.trio.serve``. When a later
request on a keep-alive connection upgrades ``/ws``, Hypercorn passes it to ``_Router`` (the
ASGI app it calls), which takes the connection back: Hypercorn's part is cancelled and writes
nothing more, and the socket goes to ``ws.serve_websocket`` as above.

Hypercorn's internals used here (``TCPServer``, ``Lifespan``, ``WorkerContext``, ``wrap_app``)
are those of the version pinned in ``pyproject.toml``; ``serve`` follows
``hypercorn.trio.run.worker_serve``.
"""

from __future__ import annotations

import contextvars
import errno
import logging
import re
import socket
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import h11
import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app
from wsproto import ConnectionType
from wsproto.events import Request
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from .ws import RECV_BYTES, WS_PATH, serve_websocket

if TYPE_CHECKING:
    from .app import WebState

log = logging.getLogger(__name__)

HEAD_LIMIT = 16 * 1024  # Hypercorn's h11_max_incomplete_size: a longer head is Hypercorn's to refuse
ACCEPT_BATCH = 64  # connections accepted per wake-up
ACCEPT_RETRY_S = 0.1
_HEAD_END = re.compile(rb"\n\r?\n")  # as h11 finds it
_WS_HEADS = (f"GET {WS_PATH} ".encode(), f"GET {WS_PATH}?".encode())
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}  # wait, retry
_HARMLESS = {errno.ECONNABORTED, errno.EPERM, errno.EPROTO}  # that connection is gone: go on
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_handoff: contextvars.ContextVar["_Handoff"] = contextvars.ContextVar("agentd_handoff")


async def serve(app: Any, config: Config, state: "WebState", *,
                shutdown_trigger: Callable[[], Awaitable[Any]],
                task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` and ``/ws`` on ``config.bind`` until ``shutdown_trigger`` returns.

    ``task_status.started(urls)`` once listening. At shutdown: stop accepting, let Hypercorn
    close idle keep-alive connections, give the others ``config.graceful_timeout`` and cancel
    what is left, then run the app's shutdown. Cancellation: all stops at once, sockets closed.
    """
    router = _Router(wrap_app(app, config.wsgi_max_body_size, "asgi"))
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(router, config, lifespan_state)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        door = _Door(router, config, state, ConnectionState(lifespan_state.copy()))
        listeners = config.create_sockets().insecure_sockets
        try:
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as acceptors:
                    urls = []
                    for listener in listeners:
                        listener.setblocking(False)
                        listener.listen(config.backlog)
                        url = f"http://{repr_socket_addr(listener.family, listener.getsockname())}"
                        await config.log.info(f"Running on {url} (CTRL + C to quit)")
                        urls.append(url)
                        acceptors.start_soon(door.accept, listener, connections)
                    task_status.started(urls)
                    await shutdown_trigger()
                    acceptors.cancel_scope.cancel()
                _close_all(listeners)
                await door.context.terminated.set()
                connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        finally:
            _close_all(listeners)
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


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

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, *args: Any) -> None:
        if (scope["type"] == "websocket" and scope["path"] == WS_PATH
                and scope["http_version"] in ("1.0", "1.1")):
            query = scope["query_string"]
            _handoff.get().take(scope["headers"], scope["raw_path"] + (b"?" + query if query else b""))
            return
        await self.app(scope, *args)


class _Handoff(trio.abc.HalfCloseableStream):
    """The connection as Hypercorn's ``TCPServer`` sees it: the bytes read here come first.

    ``take`` ends Hypercorn's part (its cancel scope is ``scope``); from then on it writes and
    closes nothing, and the socket is the WebSocket's.
    """

    def __init__(self, sock: socket.socket, head: bytes) -> None:
        self.stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self.socket = self.stream.socket  # TCPServer reads the peer's address from it
        self.head = head
        self.scope = trio.CancelScope()
        self.taken: tuple[list[tuple[bytes, bytes]], bytes] | None = None

    def take(self, headers: list[tuple[bytes, bytes]], target: bytes) -> None:
        self.taken = (headers, target)
        self.scope.cancel()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.head:
            data, self.head = self.head, b""
            await trio.lowlevel.checkpoint()
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.taken is None:
            await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if self.taken is None:
            await self.stream.send_eof()

    async def aclose(self) -> None:
        if self.taken is None:
            await self.stream.aclose()


class _Door:
    """Accepts connections and sends each to ``/ws`` or to Hypercorn."""

    def __init__(self, app: Any, config: Config, state: "WebState", connection_state: Any) -> None:
        self.app, self.config, self.state = app, config, state
        self.connection_state = connection_state
        self.context = WorkerContext(None)

    async def accept(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        """Accept connections into ``nursery`` until cancelled.

        Cancellation: accepting stops; the caller closes ``listener``.
        """
        while True:
            await trio.lowlevel.wait_readable(listener)
            for _ in range(ACCEPT_BATCH):
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:
                    break
                except OSError as error:
                    if error.errno in _HARMLESS:
                        continue
                    if error.errno not in _OUT_OF_RESOURCES:
                        raise
                    log.warning("cannot accept a connection (%s); retrying in %g s",
                                error, ACCEPT_RETRY_S)
                    await trio.sleep(ACCEPT_RETRY_S)
                    break
                sock.setblocking(False)
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(self.connection, sock)

    async def connection(self, sock: socket.socket) -> None:
        """One accepted connection, to its end.

        Cancellation: the socket is closed; Hypercorn's part ends as it does when cancelled.
        """
        try:
            first = await _first_bytes(sock, self.config.keep_alive_timeout)
            if first is None:
                return
            head, is_ws = first
            upgrade = _handshake(lambda h: h.receive_data(head[:_head_end(head)])) if is_ws else None
            if upgrade is not None:
                await serve_websocket(sock, *upgrade, head[_head_end(head):], self.state)
                return
            handoff = _Handoff(sock, head)
            token = _handoff.set(handoff)
            try:
                with handoff.scope:
                    await TCPServer(self.app, self.config, self.context, self.connection_state,
                                    handoff).run()
            finally:
                _handoff.reset(token)
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


async def _first_bytes(sock: socket.socket, timeout: float) -> tuple[bytes, bool] | None:
    """What the client sent first, and whether it is a whole ``GET /ws`` head; None if it
    closed, or sent nothing for ``timeout`` (Hypercorn's keep-alive timeout)."""
    buffer = b""
    with trio.move_on_after(timeout):
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                chunk = sock.recv(RECV_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            buffer += chunk
            start = buffer[:len(_WS_HEADS[0])]
            if not any(head.startswith(start) for head in _WS_HEADS) or len(buffer) >= HEAD_LIMIT:
                return buffer, False
            if _HEAD_END.search(buffer):
                return buffer, True
    return None


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
