"""A webhook (ntfy, push) receiver behind real TLS on 127.0.0.x, for a made-up name.

``TLSReceiver`` serves ``WebhookReceiver``'s HTTP/1.1 over TLS with a certificate from a test
CA (``trustme``), on one port of each given loopback address (127.0.0.1, 127.0.0.2...: Linux
routes all of 127/8 to lo), so a test can tell which address a client connected to. Every
connection is recorded as a ``Handshake``: the address it arrived at, the SNI name the client
sent (read server-side by the context's ``sni_callback``) and, when the handshake failed, why
(the client refused the certificate, or spoke no TLS). A request reaches the wrapped receiver
only over a completed handshake.

``ClearListener`` is a plain TCP port that records the raw bytes a client sends and answers
with a cleartext HTTP error: an https client pointed at it must fail its handshake, and the
recorded bytes show whether anything of the request went out in clear.
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass, field

import trio
import trustme

from .webhook_receiver import WebhookReceiver

CLEAR_ANSWER = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


@dataclass
class Handshake:
    local: str  # the address the client connected to
    sni: str | None = None  # the server name the client sent, None when it sent none
    error: str | None = None  # why the handshake failed; None when it completed (or is going on)
    ended: bool = False


@dataclass
class TLSReceiver:
    receiver: WebhookReceiver
    cert: trustme.LeafCert
    hosts: tuple[str, ...] = ("127.0.0.1",)
    handshakes: list[Handshake] = field(default_factory=list)
    port: int = 0
    _changed: trio.Event = field(default_factory=trio.Event)

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status.started(port)``: the same port on every host."""
        listeners: list[trio.SocketListener] = []
        for host in self.hosts:
            listeners += await trio.open_tcp_listeners(self.port, host=host)
            self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._connection, listeners)
            task_status.started(self.port)

    async def wait_handshakes(self, count: int) -> list[Handshake]:
        """Until ``count`` handshakes ended, completed or failed (bounded by the test's timeout)."""
        while sum(shake.ended for shake in self.handshakes) < count:
            self._changed = trio.Event()
            await self._changed.wait()
        return self.handshakes

    def _context(self, shake: Handshake) -> ssl.SSLContext:
        """A server context per connection, so that its SNI callback knows which one it is."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(context)

        def sni_callback(_obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            shake.sni = name

        context.sni_callback = sni_callback
        return context

    async def _connection(self, stream: trio.SocketStream) -> None:
        shake = Handshake(local=stream.socket.getsockname()[0])
        self.handshakes.append(shake)
        tls = trio.SSLStream(stream, self._context(shake), server_side=True, https_compatible=True)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError as exc:
            shake.error = str(exc.__cause__ or exc)
            await stream.aclose()
            return
        finally:
            shake.ended = True
            self._changed.set()
        await self.receiver.handle(tls)


@dataclass
class ClearListener:
    """A cleartext port on 127.0.0.1: records what each connection sent, answers HTTP 400."""

    received: list[bytes] = field(default_factory=list)

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status.started(port)``."""
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, self._connection, 0, host="127.0.0.1")
            )
            task_status.started(listeners[0].socket.getsockname()[1])

    async def _connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = await stream.receive_some(65536)
            self.received.append(data)
            await stream.send_all(CLEAR_ANSWER)
