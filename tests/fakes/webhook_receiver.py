"""A webhook (and ntfy) receiver on 127.0.0.1: real HTTP/1.1 (h11) served by Trio in the test's loop.

It records every request, verifies ``Agentd-Signature`` with ``daemon.notify.signing``'s
``verify_signature`` when given the secret, and keeps what a careful receiver keeps: the
delivery ids it accepted (a duplicate is answered 200 and dropped). ``answers`` are the status
codes of the next requests (then 200); ``hold``, while not set, keeps requests waiting
unanswered (a delivery in flight). Served in the test's Trio loop, so MockClock tests see it
answer without real time passing.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h11
import trio

from daemon.notify.signing import DELIVERY_HEADER, SIGNATURE_HEADER, verify_signature


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    at: float  # trio.current_time() when it arrived
    verified: bool | None  # None: no secret to check with


@dataclass
class WebhookReceiver:
    secret: str | None = None
    answers: list[int] = field(default_factory=list)
    retry_after: str | None = None
    hold: trio.Event | None = None
    requests: list[Received] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)  # delivery ids, each once
    url: str = ""
    now: Callable[[], float] = time.time  # the wall clock signatures are checked against
    _changed: trio.Event = field(default_factory=trio.Event)

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, self.handle, 0, host="127.0.0.1")
            )
            host, port = listeners[0].socket.getsockname()[:2]
            self.url = f"http://{host}:{port}"
            task_status.started(self.url)

    async def wait_for(self, count: int) -> list[Received]:
        """Until ``count`` requests arrived (bounded by the test's timeout)."""
        while len(self.requests) < count:
            self._changed = trio.Event()
            await self._changed.wait()
        return self.requests

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one request on ``stream`` (TCP here, TLS in ``tls_receiver``), then close it."""
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = b""
        async with stream:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    if not data:
                        return
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage) and request is not None:
                    await self._answer(stream, conn, request, body)
                    return
                else:
                    return

    async def _answer(
        self, stream: trio.abc.Stream, conn: h11.Connection, request: h11.Request, body: bytes
    ) -> None:
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        verified = None
        if self.secret is not None:
            verified = verify_signature(self.secret, headers.get(SIGNATURE_HEADER.lower()), body, self.now())
        self.requests.append(
            Received(
                request.method.decode(), request.target.decode(), headers, body, trio.current_time(), verified
            )
        )
        self._changed.set()
        if self.hold is not None:
            await self.hold.wait()
        status = self.answers.pop(0) if self.answers else 200
        if 200 <= status < 300 and verified is not False:
            delivery = headers.get(DELIVERY_HEADER.lower())
            if delivery and delivery not in self.accepted:  # a duplicate is dropped
                self.accepted.append(delivery)
        extra = [("retry-after", self.retry_after)] if self.retry_after and status >= 400 else []
        response = h11.Response(
            status_code=status, headers=[("content-length", "2"), ("connection", "close"), *extra]
        )
        await stream.send_all(
            conn.send(response) + conn.send(h11.Data(data=b"ok")) + conn.send(h11.EndOfMessage())
        )
