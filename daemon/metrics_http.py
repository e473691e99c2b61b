"""``/metrics`` on an address of its own (``metrics_http``), for a scraper on a private network.

With ``metrics_http`` set, the HTTP port no longer serves ``/metrics`` (``web/app.py``): the
metrics are where the operator put them, and only there. This listener answers one request
per connection, parsed by h11: ``GET /metrics`` gets the daemon's metrics (the Prometheus text
format, or OpenMetrics when the ``Accept`` header asks for it), another path 404, another method
405, a malformed request 400, and the connection is closed. It is meant for one scraper: at most
``MAX_CONNECTIONS`` are served at once (the others wait in the backlog), and a request must
arrive whole within ``REQUEST_TIMEOUT_S``.
"""

from __future__ import annotations

import errno
from typing import Any

import h11
import trio

from .config import host_port
from .errors import ConfigError
from .metrics import Metrics, render

PATH = "/metrics"
MAX_CONNECTIONS = 8
REQUEST_TIMEOUT_S = 10.0
HEAD_LIMIT = 16 * 1024
RECV_BYTES = 4096


async def serve_metrics(bind: str, metrics: Metrics, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on ``bind`` (``HOST:PORT``, as the ``metrics_http`` setting; port 0: any free one)
    and answer scrapes until cancelled; ``task_status.started(urls)`` once listening, the URL
    of ``/metrics`` on each socket. An address it cannot listen on (in use, not this host's)
    raises ``ConfigError`` naming it, before that.

    Cancellation: the listeners close, and scrapes being answered are cut off.
    """
    host, port = host_port(bind)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        why = "in use (another program listens there)" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ConfigError(f"config: metrics_http: cannot listen on {bind}: {why}") from None
    slots = trio.Semaphore(MAX_CONNECTIONS)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept, listener, metrics, slots, nursery)
        task_status.started([_url(listener.socket.getsockname()) for listener in listeners])


def _url(sockname: Any) -> str:
    host, port = sockname[0], sockname[1]
    return f"http://[{host}]:{port}{PATH}" if ":" in host else f"http://{host}:{port}{PATH}"


async def _accept(
    listener: trio.SocketListener, metrics: Metrics, slots: trio.Semaphore, nursery: trio.Nursery
) -> None:
    async with listener:
        while True:
            await slots.acquire()  # a free slot first: past the cap, connections wait unaccepted
            try:
                stream = await listener.accept()
            except BaseException:
                slots.release()
                raise
            nursery.start_soon(_answer_then_release, stream, metrics, slots)


async def _answer_then_release(stream: trio.SocketStream, metrics: Metrics, slots: trio.Semaphore) -> None:
    try:
        async with stream:
            with trio.move_on_after(REQUEST_TIMEOUT_S):
                await _answer(stream, metrics)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the scraper went away
    finally:
        slots.release()


async def _answer(stream: trio.SocketStream, metrics: Metrics) -> None:
    """Read one request and send its response (``Connection: close``)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
    try:
        request = await _read_request(stream, conn)
    except h11.RemoteProtocolError:
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        return
    if request is None:
        return  # closed before a whole request
    target = request.target.decode("ascii", "replace").split("?", 1)[0]
    headers = [(b"connection", b"close")]
    if request.method != b"GET":
        status, body, headers = 405, b"", [*headers, (b"allow", b"GET")]
    elif target != PATH:
        status, body = 404, b""
    else:
        accept = dict(request.headers).get(b"accept", b"").decode("latin-1")
        body, content_type = render(metrics.registry, accept)
        status, headers = 200, [*headers, (b"content-type", content_type.encode("latin-1"))]
    headers.append((b"content-length", str(len(body)).encode()))
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
    await stream.send_all(conn.send(h11.Data(data=body)) or b"")
    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")


async def _read_request(stream: trio.SocketStream, conn: h11.Connection) -> h11.Request | None:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(RECV_BYTES))
        elif isinstance(event, h11.Request):
            return event
        else:
            return None  # ConnectionClosed
