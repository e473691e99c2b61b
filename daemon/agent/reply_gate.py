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
reply's first bytes before they are parsed); ``GatedHTTPTransport`` puts it there.
"""

from __future__ import annotations

import logging
import socket
import urllib.request
from collections.abc import AsyncIterator, Iterable
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

    async def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore2.AsyncNetworkStream:
        return _GatedStream(await self._inner.start_tls(ssl_context, server_hostname, timeout), self._gate)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _GatedBackend(httpcore2.AsyncNetworkBackend):
    def __init__(self, inner: httpcore2.AsyncNetworkBackend, gate: ReplyGate) -> None:
        self._inner = inner
        self._gate = gate

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore2.AsyncNetworkStream:
        self._gate.release()
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _GatedStream(stream, self._gate)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore2.AsyncNetworkStream:
        self._gate.release()
        stream = await self._inner.connect_unix_socket(path, timeout, socket_options)
        return _GatedStream(stream, self._gate)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _ReleaseOnClose(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, gate: ReplyGate) -> None:
        self._inner = inner
        self._gate = gate

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._inner:
            yield part

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._gate.release()


class GatedHTTPTransport(httpx2.AsyncHTTPTransport):
    """httpx's own transport, its connection pool reading through ``gate``."""

    def __init__(self, gate: ReplyGate, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._gate = gate
        # httpx builds its pool with no way to hand it a network backend: wrap the one it chose.
        # (httpx2 2.x; tests/test_reply_gate.py fails if a release moves these.)
        pool = self._pool
        pool._network_backend = _GatedBackend(pool._network_backend, gate)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if not self._pool_has_room():
            # The request would wait for another one's connection, which may need the slot to
            # read its reply to the end: no slot is held through that wait. (With room, the
            # pool assigns a connection at once, reserved for this request; its retry after
            # ConnectionNotAvailable, which could wait, is for a connection another request
            # took first, which reservation rules out for the HTTP/1.1 connections made here.)
            self._gate.release()
        try:
            response = await super().handle_async_request(request)
        except BaseException:
            # No response to close (the connection dropped, bad headers, cancelled): the slot
            # its reads took must not stay held while the caller, say, sleeps to retry.
            self._gate.release()
            raise
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        response.stream = _ReleaseOnClose(response.stream, self._gate)
        return response

    def _pool_has_room(self) -> bool:
        """Whether a new request gets a connection at once (the pool's in-flight requests,
        each holding or waiting for a connection, are fewer than its connection limit); False
        if this httpcore keeps them elsewhere (then the slot is always given back first;
        tests/test_reply_gate.py fails)."""
        requests = getattr(self._pool, "_requests", None)
        limit = getattr(self._pool, "_max_connections", None)
        return requests is not None and limit is not None and len(requests) < limit


def gated_http_client(gate: ReplyGate, verify: Any = True) -> httpx2.AsyncClient | None:
    """An HTTP client with the SDK's defaults whose replies pass ``gate``.

    None when the environment names a proxy (``HTTPS_PROXY``...): the SDK's default client
    mounts one transport per proxy from it, and those are left as they are (ungated; said once
    in the log).
    """
    proxies = [scheme for scheme in urllib.request.getproxies() if scheme != "no"]
    if proxies:
        log.info("model replies are not gated: the environment sets a proxy (%s)", ", ".join(sorted(proxies)))
        return None
    transport = GatedHTTPTransport(gate, verify=verify, limits=anthropic.DEFAULT_CONNECTION_LIMITS,
                                   socket_options=_KEEPALIVE)
    return anthropic.DefaultAsyncHttpxClient(transport=transport)
