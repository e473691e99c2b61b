"""Hypercorn's Trio internals, for a listener that accepts its connections itself.

``daemon/web/listener.py`` reads each connection's first request head before Hypercorn sees it
and takes ``/ws`` upgrades back from Hypercorn, so it cannot use ``hypercorn.trio.serve``
(Hypercorn's only public Trio entry point, which owns the accept loop and offers nothing per
connection). It does what ``hypercorn.trio.run.worker_serve`` does instead, through these
undocumented names of Hypercorn 0.18.0 (pinned in ``pyproject.toml``):

- ``hypercorn.trio.tcp_server.TCPServer``: constructor ``(app, config, context, state,
  stream)``, ``run()``, ``protocol_send(event)``, ``_close()``, attribute ``protocol`` (whose
  ``protocol`` is the HTTP/1 or HTTP/2 protocol object); subclassed as ``ConnectionServer``;
- ``hypercorn.events.Updated`` (its ``idle`` flag), ``hypercorn.protocol.h11.H11Protocol``;
- ``hypercorn.trio.lifespan.Lifespan``: ``handle_lifespan``, ``wait_for_startup``,
  ``wait_for_shutdown``; in ``app_lifespan``;
- ``hypercorn.trio.worker_context.WorkerContext``: ``terminated``; in ``Worker``;
- ``hypercorn.utils.wrap_app`` and ``repr_socket_addr``; ``hypercorn.typing.AppWrapper`` and
  ``ConnectionState``; ``Config.create_sockets()``.

``tests/test_thirdparty_contracts.py`` checks each of them and serves requests on 127.0.0.1
through ``ConnectionServer``: the gate for upgrading Hypercorn.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.events import Event, Updated
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

__all__ = [
    "AppWrapper",
    "ConnectionServer",
    "ConnectionState",
    "Worker",
    "app_lifespan",
    "asgi_app",
    "listening_sockets",
    "socket_url",
]


def asgi_app(app: Any, config: Config) -> AppWrapper:
    """``app`` (an ASGI 3 callable) as Hypercorn's connection servers and lifespan call it."""
    return wrap_app(app, config.wsgi_max_body_size, "asgi")


def listening_sockets(config: Config) -> list[socket.socket]:
    """New sockets bound to ``config.bind`` (plain TCP, no TLS), not yet listening."""
    return config.create_sockets().insecure_sockets


def socket_url(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket (an IPv6 host in brackets)."""
    return f"http://{repr_socket_addr(sock.family, sock.getsockname())}"


@asynccontextmanager
async def app_lifespan(app: AppWrapper, config: Config) -> AsyncIterator[ConnectionState]:
    """Run the app's ASGI lifespan around the block: startup before it, shutdown after it.

    Yields the state every connection of the app starts from (a copy of the lifespan's). An
    app without lifespan support is served anyway (Hypercorn logs a warning). Startup and
    shutdown are bounded by ``config.startup_timeout`` and ``config.shutdown_timeout``.

    Cancellation, or an error out of the block: the lifespan task is cancelled and the app is
    not told to shut down.
    """
    state: dict[str, Any] = {}
    lifespan = Lifespan(app, config, state)
    async with trio.open_nursery() as nursery:
        await nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        yield ConnectionState(state.copy())
        await lifespan.wait_for_shutdown()
        nursery.cancel_scope.cancel()


class Worker:
    """What the connection servers of one listener share (Hypercorn's ``WorkerContext``)."""

    def __init__(self) -> None:
        self.context = WorkerContext(None)  # None: no limit on requests per worker

    async def terminate(self) -> None:
        """Shutting down: from now on each connection closes as soon as it is idle."""
        await self.context.terminated.set()


class ConnectionServer(TCPServer):
    """Hypercorn serving one accepted connection over ``stream``, until it closes: ``run()``.

    ``stream`` is a half-closeable Trio stream with a ``socket`` attribute (the addresses in
    the ASGI scope are read from it). ``on_idle()`` is called each time the connection waits
    for its next request (the previous request and its response are done). Hypercorn's close
    of ``stream`` is shielded, so it completes even when the app's task is being cancelled.

    Cancellation: as Hypercorn's own: the app's tasks for the connection are cancelled and the
    stream closed.
    """

    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        worker: Worker,
        state: ConnectionState,
        stream: trio.abc.HalfCloseableStream,
        on_idle: Callable[[], None],
    ) -> None:
        super().__init__(app, config, worker.context, state, stream)  # type: ignore[arg-type]
        self.agentd_on_idle = on_idle

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated) and event.idle:
            self.agentd_on_idle()
        await super().protocol_send(event)

    async def _close(self) -> None:
        # Shielded: Hypercorn closes from the app's task, which Quart-Trio cancels as soon as
        # the request is told "disconnect", which Hypercorn does just before closing; unshielded,
        # a "Connection: close" response left the socket open until the client closed it.
        with trio.CancelScope(shield=True):
            await super()._close()

    def speaks_http1(self) -> bool:
        """Whether the connection got as far as speaking HTTP/1 (not HTTP/2, not nothing yet)."""
        wrapper = getattr(self, "protocol", None)  # set once ``run`` has begun the connection
        return isinstance(getattr(wrapper, "protocol", None), H11Protocol)
