"""Model calls run their Python a few at a time, so that hundreds going together do not stall the loop.

When hundreds of tasks wait on the model and their replies come in together, every one of those
tasks is woken in the same Trio scheduling batch, and Trio runs them all (httpx reading the
headers, the SDK, the SSE parse) before it looks at its timers and sockets again: a WebSocket
push, an API request or a heartbeat waits behind the whole batch (500 tasks here: a loop lag
p99 of about 250 ms). The same happens on the way out: the ~20 tasks whose writes one group
commit hands back all build their next request (the SDK, httpx) in one batch. Behind the gate, a
task waits, parked and first come first served, for one of ``slots`` before it builds a request
(``AnthropicProvider``, for a call's first attempt; the SDK's retries build theirs without
one) and before it parses bytes of a reply that arrived, so a batch holds a few of those
instead of dozens or hundreds.

A task gives its slot back whenever it goes to the network: as its request opens a connection
or is written, before it would wait for a free connection of a full pool, whenever it reads
for more (a reply streamed over thirty seconds holds a slot only while a chunk is parsed), when
the response is closed (read to its end, or given up, as the SDK does before it sleeps to
retry), and at the latest when the model call ends (``ReplyGate.release``, in
``AnthropicProvider._stream``); a request that fails before it has a response gives it back
too. Between those a holder runs Python (building, parsing) and httpx's pool bookkeeping (which
may close an expired idle connection: a close that does not wait on the peer); it never waits
on the network, a timer or another task's slot, so one slot loses no throughput under one GIL
(and no holder can wait on a waiter).

The gate sits under httpx, in its connection pool's network backend (the only place that sees a
reply's first bytes before they are parsed): ``GatedHTTPTransport`` is an httpx transport of its
own over an httpcore ``AsyncConnectionPool`` built with that backend, all through public APIs.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import urllib.request
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

import anthropic
import httpcore2
import httpx2
import trio

log = logging.getLogger(__name__)

DEFAULT_SLOTS = 1

# What the SDK's default client sets on its sockets (``anthropic.DefaultAsyncHttpxClient``): a
# connection left waiting on a long generation is probed, not silently dropped by a middlebox.
_KEEPALIVE = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)] + [
    (socket.IPPROTO_TCP, option, value)
    for name, value in (("TCP_KEEPINTVL", 60), ("TCP_KEEPCNT", 5), ("TCP_KEEPIDLE", 60))
    if (option := getattr(socket, name, None)) is not None
]


class ReplyGate:
    """At most ``slots`` Trio tasks at a time build a model request or go on with bytes of a
    model reply; the rest wait in line."""

    def __init__(self, slots: int = DEFAULT_SLOTS) -> None:
        if slots < 1:
            raise ValueError("a reply gate needs at least one slot")
        self.slots = slots
        self._free = trio.Semaphore(slots)  # parks waiters in arrival order
        self._holders: set[trio.lowlevel.Task] = set()
        self.most_held = 0  # the most slots ever held at once (tests, benchmarks)

    async def acquire(self) -> None:
        """Take a slot for the current task, waiting in line if none is free; nothing if it holds one.

        Cancellation: while waiting, nothing is taken.
        """
        task = trio.lowlevel.current_task()
        if task in self._holders:
            return
        try:
            self._free.acquire_nowait()  # no extra schedule point when a slot is free
        except trio.WouldBlock:
            await self._free.acquire()
        self._holders.add(task)
        self.most_held = max(self.most_held, len(self._holders))

    def release(self) -> None:
        """Give back the current task's slot, if it holds one."""
        task = trio.lowlevel.current_task()
        if task in self._holders:
            self._holders.remove(task)
            self._free.release()

    def held(self) -> int:
        return len(self._holders)


class _GatedStream(httpcore2.AsyncNetworkStream):
    """A connection whose reads give the slot back before going to the network, and wait for
    one before handing what arrived to the parser."""

    def __init__(self, inner: httpcore2.AsyncNetworkStream, gate: ReplyGate) -> None:
        self._inner = inner
        self._gate = gate

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._gate.release()
        data = await self._inner.read(max_bytes, timeout)
        if data:  # the end of the connection is nothing to parse: no slot for it
            await self._gate.acquire()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._gate.release()  # the request is built: sending it may wait on the network
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore2.AsyncNetworkStream:
        return _GatedStream(await self._inner.start_tls(ssl_context, server_hostname, timeout), self._gate)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _GatedBackend(httpcore2.AsyncNetworkBackend):
    def __init__(self, inner: httpcore2.AsyncNetworkBackend, gate: ReplyGate) -> None:
        self._inner = inner
        self._gate = gate

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        self._gate.release()
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _GatedStream(stream, self._gate)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.AsyncNetworkStream:
        self._gate.release()
        stream = await self._inner.connect_unix_socket(path, timeout, socket_options)
        return _GatedStream(stream, self._gate)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# httpcore's errors as the httpx errors of the same name (what httpx's own transport raises,
# and what the SDK and ``AnthropicProvider`` catch), the more specific ones first.
_ERRORS: tuple[tuple[type[Exception], type[httpx2.TransportError]], ...] = (
    (httpcore2.ConnectTimeout, httpx2.ConnectTimeout),
    (httpcore2.ReadTimeout, httpx2.ReadTimeout),
    (httpcore2.WriteTimeout, httpx2.WriteTimeout),
    (httpcore2.PoolTimeout, httpx2.PoolTimeout),
    (httpcore2.TimeoutException, httpx2.TimeoutException),
    (httpcore2.ConnectError, httpx2.ConnectError),
    (httpcore2.ReadError, httpx2.ReadError),
    (httpcore2.WriteError, httpx2.WriteError),
    (httpcore2.NetworkError, httpx2.NetworkError),
    (httpcore2.ProxyError, httpx2.ProxyError),
    (httpcore2.UnsupportedProtocol, httpx2.UnsupportedProtocol),
    (httpcore2.LocalProtocolError, httpx2.LocalProtocolError),
    (httpcore2.RemoteProtocolError, httpx2.RemoteProtocolError),
    (httpcore2.ProtocolError, httpx2.ProtocolError),
)


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as error:
        for theirs, ours in _ERRORS:
            if isinstance(error, theirs):
                raise ours(str(error)) from error
        raise


class _Reply(httpx2.AsyncByteStream):
    """A response body: httpx errors, and at its close the request leaves the transport's count
    and the slot is given back."""

    def __init__(self, inner: httpcore2.Response, transport: GatedHTTPTransport) -> None:
        assert isinstance(inner.stream, AsyncIterable)
        self._inner = inner
        self._parts: AsyncIterable[bytes] = inner.stream
        self._transport: GatedHTTPTransport | None = transport

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for part in self._parts:
                yield part

    async def aclose(self) -> None:
        try:
            with _httpx_errors():
                await self._inner.aclose()
        finally:
            if self._transport is not None:  # once, however often it is closed
                self._transport.finished()
                self._transport = None


class GatedHTTPTransport(httpx2.AsyncBaseTransport):
    """An httpx transport over httpcore's connection pool whose reads pass ``gate``.

    What httpx's own ``AsyncHTTPTransport`` does for HTTP/1.1 without a proxy: ``ssl_context``
    (default: httpx's), ``limits``, ``socket_options``; httpcore's errors raised as httpx's.
    It counts its requests in flight, from the moment one is handed over until its response
    is closed (or it failed), as httpcore's pool does: while they are as many as the pool's
    connections, a new request would wait for a connection.
    """

    def __init__(
        self,
        gate: ReplyGate,
        *,
        ssl_context: ssl.SSLContext | None = None,
        limits: httpx2.Limits = anthropic.DEFAULT_CONNECTION_LIMITS,
        socket_options: Iterable[Any] | None = None,
    ) -> None:
        self._gate = gate
        self._max_connections = limits.max_connections
        self.in_flight = 0
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=httpx2.create_ssl_context() if ssl_context is None else ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            socket_options=socket_options,
            network_backend=_GatedBackend(httpcore2.TrioBackend(), gate),
        )

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if not self.pool_has_room():
            # The request would wait for another one's connection, which may need the slot to
            # read its reply to the end: no slot is held through that wait. (With room, the
            # pool assigns a connection at once, reserved for this request; its retry after
            # ConnectionNotAvailable, which could wait, is for a connection another request
            # took first, which reservation rules out for the HTTP/1.1 connections made here.)
            self._gate.release()
        self.in_flight += 1
        url = request.url
        try:
            with _httpx_errors():
                response = await self._pool.handle_async_request(
                    httpcore2.Request(
                        method=request.method,
                        url=httpcore2.URL(
                            scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
                        ),
                        headers=request.headers.raw,
                        content=request.stream,
                        extensions=request.extensions,
                    )
                )
        except BaseException:
            # No response to close (the connection dropped, bad headers, cancelled): the slot
            # its reads took must not stay held while the caller, say, sleeps to retry.
            self.finished()
            raise
        return httpx2.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Reply(response, self),
            extensions=response.extensions,
        )

    def pool_has_room(self) -> bool:
        """Whether a new request gets a connection at once: the requests in flight (each
        holding or waiting for one of the pool's connections) are fewer than its connections."""
        return self._max_connections is None or self.in_flight < self._max_connections

    def finished(self) -> None:
        """A request's response is closed, or it failed: it leaves the count, its slot is free."""
        self.in_flight -= 1
        self._gate.release()

    async def aclose(self) -> None:
        with _httpx_errors():
            await self._pool.aclose()


def gated_http_clients(
    gate: ReplyGate, count: int, ssl_context: ssl.SSLContext | None = None
) -> list[httpx2.AsyncClient] | None:
    """``count`` HTTP clients with the SDK's defaults whose replies pass ``gate``.

    None when the environment names a proxy (``HTTPS_PROXY``...): the SDK's default client
    mounts one transport per proxy from it, and those are left as they are (ungated; said once
    in the log).
    """
    proxies = [scheme for scheme in urllib.request.getproxies() if scheme != "no"]
    if proxies:
        log.info("model replies are not gated: the environment sets a proxy (%s)", ", ".join(sorted(proxies)))
        return None
    return [
        anthropic.DefaultAsyncHttpxClient(
            transport=GatedHTTPTransport(gate, ssl_context=ssl_context, socket_options=_KEEPALIVE)
        )
        for _ in range(count)
    ]
