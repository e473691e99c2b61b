"""The HTTP port under abuse (issue 18): connection caps, whole-request deadlines, ping floods,
byte-bounded WebSocket queues, the per-user WebSocket cap and the open-file limit.

End to end against the real daemon on 127.0.0.1 (``running_daemon``), with raw sockets where a
well-behaved client library would not misbehave enough. Client addresses other than 127.0.0.1
are other loopback addresses (127.0.0.2...), which Linux routes to ``lo`` like 127.0.0.1. Real
clock with short settings; a trickling client sleeps between its bytes (that is its pace, not a
wait for something); every wait for the server is on a reply, an EOF or quiescence. The
deadline bookkeeping alone runs on trio's mock clock.
"""

from __future__ import annotations

import json
import resource
import socket
import struct
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed
from wsproto.events import Ping, Pong, TextMessage

from bench.http_abuse import hold_slowly
from daemon.store import NewEvent
from daemon.web.http_limits import ConnectionCaps, RequestDeadline, client_key
from daemon.web.session import CLOSE_TOO_MANY
from daemon.web.ws import EVENTS_PER_SLICE, FRAME_BURST, FRAMES_PER_S

from .fakes.phone import recv_json, running_daemon, send_json
from .test_ws_listener import BareClient

ROOT = Path(__file__).resolve().parents[1]
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def host_port(server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


async def connect(server, source: str = "127.0.0.1", *, rcvbuf: int | None = None) -> trio.SocketStream:
    """A TCP connection to the daemon from the loopback address ``source``."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connecting: the window is agreed at the handshake
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.bind((source, 0))
    await sock.connect(host_port(server))
    return trio.SocketStream(sock)


async def read_to_end(stream: trio.SocketStream) -> bytes:
    """Everything until the server closes (a reset ends it too)."""
    data = b""
    with trio.fail_after(10):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return data
            if not chunk:
                return data
            data += chunk


async def get_healthz(server, source: str = "127.0.0.1") -> bytes:
    stream = await connect(server, source)
    async with stream:
        await stream.send_all(HEALTHZ)
        return await read_to_end(stream)


def ok(response: bytes) -> bool:
    return response.startswith(b"HTTP/1.1 200") and response.endswith(b'{"status":"ok"}\n')


def error_code(response: bytes) -> str:
    return json.loads(response.partition(b"\r\n\r\n")[2])["error"]["code"]


# ---------------------------------------------------------------------- connection caps


async def test_a_client_address_over_its_cap_gets_503_while_its_open_connections_go_on(tmp_path):
    async with running_daemon(tmp_path, http_max_connections_per_address=3) as server:
        held = [await connect(server) for _ in range(3)]  # accepted in this order, then:
        refused = await connect(server)
        response = await read_to_end(refused)
        assert response.startswith(b"HTTP/1.1 503") and error_code(response) == "too_many_connections"
        assert b"retry-after: 1" in response
        assert server.web.connections.by_key == {"127.0.0.1": 3}
        # Another address has a cap of its own; the held connections still work.
        assert ok(await get_healthz(server, "127.0.0.2"))
        await held[0].send_all(HEALTHZ)
        assert ok(await read_to_end(held[0]))
        # That one is closed: once its task has ended, there is room for one more.
        await until_quiet(lambda: server.web.connections.by_key == {"127.0.0.1": 2})
        assert ok(await get_healthz(server))
        for stream in held:
            await stream.aclose()


async def test_over_the_total_cap_every_address_gets_503(tmp_path):
    async with running_daemon(tmp_path, http_max_connections=2, http_max_connections_per_address=0) as server:
        held = [await connect(server, f"127.0.0.{i}") for i in (2, 3)]
        for source in ("127.0.0.1", "127.0.0.4"):
            stream = await connect(server, source)
            assert (await read_to_end(stream)).startswith(b"HTTP/1.1 503")
        assert server.web.connections.open == 2
        await held[1].aclose()  # a slot frees up as soon as the server sees the EOF
        await until_quiet(lambda: server.web.connections.open == 1)
        assert ok(await get_healthz(server, "127.0.0.5"))
        await held[0].aclose()


def test_the_caps_count_ipv4_addresses_and_ipv6_64s():
    caps = ConnectionCaps(total=5, per_address=2)
    keys = [client_key(socket.AF_INET6, (f"2001:db8:1:2::{i}", 1, 0, 0)) for i in (1, 2, 3)]
    assert keys == ["2001:db8:1:2::/64"] * 3  # one host's /64 is one client
    assert client_key(socket.AF_INET6, ("::ffff:10.0.0.1", 1, 0, 0)) == "10.0.0.1"
    assert client_key(socket.AF_UNIX, "") is None
    assert caps.admit(keys[0]) is None and caps.admit(keys[1]) is None
    assert "2 connections from 2001:db8:1:2::/64" in caps.admit(keys[2])
    assert caps.by_key == {"2001:db8:1:2::/64": 2}  # the refused one is not counted
    assert [caps.admit("10.0.0.1"), caps.admit(None), caps.admit(None)] == [None, None, None]
    assert "http_max_connections" in caps.admit("10.0.0.2")  # 5 open
    for key in (keys[0], keys[0], "10.0.0.1", None, None):
        caps.release(key)
    assert (caps.open, caps.by_key) == (0, {})


# ------------------------------------------------------------------ whole-request deadline


async def test_the_request_deadline_counts_from_waiting_and_ends_with_the_body(autojump_clock):
    scope = trio.CancelScope()
    deadline = RequestDeadline(scope, 30, trio.current_time())
    assert scope.deadline == 30
    await trio.sleep(10)
    deadline.began("a")  # the head took 10 s: the body has the 20 s left
    assert scope.deadline == 30
    deadline.received("a")  # the app's own time does not count
    assert scope.deadline == float("inf")
    await trio.sleep(100)
    deadline.waiting()  # the response went out: the next request has 30 s from now
    assert scope.deadline == 140
    deadline.began("b")
    await trio.sleep(5)
    deadline.began("c")  # HTTP/2: a second request at once; the earliest deadline applies
    assert scope.deadline == 140
    deadline.received("b")
    assert scope.deadline == 145
    deadline.upgraded()
    deadline.received("c")
    assert scope.deadline == float("inf")


async def trickle(stream: trio.SocketStream, first: bytes, then: bytes) -> int:
    """Send ``first``, then ``then`` one byte every 50 ms until the server hangs up; return how
    many of those bytes went out."""
    await stream.send_all(first)
    for n, byte in enumerate(then):
        try:
            await stream.send_all(bytes([byte]))
        except trio.BrokenResourceError:
            return n
        await trio.sleep(0.05)
    return len(then)


@pytest.mark.parametrize(
    "first, then",
    [
        pytest.param(
            b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            b"Content-Type: application/json\r\nContent-Length: 400\r\n\r\n",
            b"x" * 400,
            id="body",
        ),
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-Slow: " + b"y" * 400, id="head"),
        pytest.param(b"GET /ws HTTP/1.1\r\nHost: x\r\n", b"Upgrade: " + b"w" * 400, id="ws-head"),
    ],
)
async def test_a_request_trickled_byte_by_byte_is_cut_at_its_deadline_with_408(tmp_path, first, then):
    async with running_daemon(tmp_path, http_request_timeout_s=1.0) as server:
        _, token = await server.user("alice")
        stream = await connect(server)
        began = trio.current_time()
        sent = -1
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                nonlocal sent
                sent = await trickle(stream, first.replace(b"{token}", token.encode()), then)

            nursery.start_soon(send)
            response = await read_to_end(stream)
            took = trio.current_time() - began
            nursery.cancel_scope.cancel()
        await stream.aclose()
    assert response.startswith(b"HTTP/1.1 408") and error_code(response) == "request_timeout", response
    # Every byte came within 50 ms of the last (no per-read timeout fires): the whole request
    # had 1 s, and it was cut then, long before its 400 bytes were in (20 s).
    assert 1.0 <= took < 5, took
    assert sent == -1 or sent < 100


async def test_on_a_keep_alive_connection_the_next_request_has_its_own_deadline(tmp_path):
    async with running_daemon(tmp_path, http_request_timeout_s=1.0) as server:
        stream = await connect(server)
        async with stream, trio.open_nursery() as nursery:
            keep_alive = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            nursery.start_soon(
                trickle, stream, keep_alive + b"GET /healthz HTTP/1.1\r\n", b"X-Slow: " + b"y" * 400
            )
            response = await read_to_end(stream)
            nursery.cancel_scope.cancel()
    first, _, second = response.partition(b'{"status":"ok"}\n')
    assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 408"), response


async def test_a_connection_that_sends_nothing_is_closed_at_the_deadline(tmp_path):
    async with running_daemon(tmp_path, http_request_timeout_s=0.5) as server:
        stream = await connect(server)
        began = trio.current_time()
        assert await read_to_end(stream) == b""  # no request, no answer
        assert 0.5 <= trio.current_time() - began < 5
        await stream.aclose()
        assert ok(await get_healthz(server))


# ------------------------------------------------------------------ WebSocket: ping floods


async def bare_ws(server, token: str, **kwargs) -> BareClient:
    client = BareClient(await connect(server, **kwargs))
    await client.upgrade(token)
    return client


async def test_pongs_answer_the_latest_ping_only(tmp_path):
    async with running_daemon(tmp_path) as server:
        _, token = await server.user("alice")
        client = await bare_ws(server, token)
        async with client.stream:
            flood = b"".join(client.ws.send(Ping(str(i).encode())) for i in range(1000))
            marker = client.ws.send(TextMessage(json.dumps({"type": "ping"})))
            await client.stream.send_all(flood + marker)  # one write: one or a few reads there
            pongs = []
            with trio.fail_after(10):
                while not isinstance(event := await client.next_event(), TextMessage):
                    assert isinstance(event, Pong), event
                    pongs.append(bytes(event.payload))
            assert json.loads(event.data) == {"type": "pong"}
        # At most one pong per read and per 64 frames handled, each for the latest ping then.
        assert pongs[-1] == b"999" and len(pongs) <= 50, pongs
        assert [int(p) for p in pongs] == sorted(int(p) for p in pongs)


async def until_quiet(condition) -> None:
    """Wait until ``condition()`` holds, checking each time every task here is blocked."""
    with trio.fail_after(20):
        while not condition():
            await trio.testing.wait_all_tasks_blocked()


async def test_a_peer_that_floods_pings_and_never_reads_holds_one_pong_and_a_bounded_queue(tmp_path):
    async with running_daemon(tmp_path, ws_queue_max_bytes=256 * 1024) as server:
        user, token = await server.user("alice")
        task, _ = await server.store.create_task(user_id=user.id, repo_url="file:///r", prompt="p")
        # 6 MB of history: more than the queue (256 kB) and the socket buffers hold.
        for start in range(0, 60, 20):
            await server.store.append_events(
                task.id,
                [NewEvent("agent.text", {"i": i, "pad": "x" * 100_000}) for i in range(start, start + 20)],
            )
        client = await bare_ws(server, token, rcvbuf=4096)
        async with client.stream:
            await client.send_json({"type": "subscribe", "task_id": task.id, "after": 0})
            (session, conn) = next(iter(server.web.sessions.items()))
            await until_quiet(lambda: conn.writing)  # the socket is full: writes wait
            for chunk in range(10):  # 1,000 pings (within the frame budget), none of them read
                await client.stream.send_all(
                    b"".join(client.ws.send(Ping(str(chunk * 100 + i).encode())) for i in range(100))
                )
            await until_quiet(lambda: conn.pong == b"999")
            assert conn.writing and conn.control == b"" and not conn.ping_due
            assert 0 < session.queued_bytes <= session.max_queued_bytes <= 256 * 1024
            # Now read it all: the pong for the latest ping, then the whole history in order.
            pongs, seqs, text = [], [], ""
            with trio.fail_after(20):
                while len(seqs) < 60:
                    event = await client.next_event()
                    if isinstance(event, Pong):
                        pongs.append(bytes(event.payload))
                    elif isinstance(event, TextMessage):  # a big message comes in parts
                        text += event.data
                        if event.message_finished:
                            message, text = json.loads(text), ""
                            assert message["type"] == "event", message  # no resync: replay waits
                            seqs.append(message["seq"])
            assert pongs == [b"999"]
            assert seqs == list(range(1, 61)) and session.resyncs == 0
            assert session.max_queued_bytes <= 256 * 1024


async def test_a_flooding_client_is_read_no_faster_than_its_frame_budget(tmp_path):
    async with running_daemon(tmp_path) as server:
        _, token = await server.user("alice")
        client = await bare_ws(server, token)
        async with client.stream:
            began = trio.current_time()
            flood = b"".join(client.ws.send(Ping(str(i).encode())) for i in range(20_000))
            with trio.move_on_after(1.0):  # the kernel's buffers take what the daemon does not read
                await client.stream.send_all(flood)
            answered = [bytes(e.payload) for e in await received_so_far(client) if isinstance(e, Pong)]
            elapsed = trio.current_time() - began
            # Reset, not FIN: the daemon would read the whole backlog at its pace to see a FIN.
            client.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        read = int(answered[-1]) + 1  # pings are handled in order; the latest one is answered
        most = FRAME_BURST + FRAMES_PER_S * elapsed
        assert FRAME_BURST - EVENTS_PER_SLICE <= read <= most, (read, elapsed)


async def received_so_far(client: BareClient) -> list:
    """The events the daemon has written by the time every task here is blocked."""
    found: list = []
    async with trio.open_nursery() as nursery:

        async def read() -> None:
            while data := await client.stream.receive_some(65536):
                client.ws.receive_data(data)
                found.extend(client.ws.events())

        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    return found


async def test_live_events_past_the_queue_bytes_resync_a_slow_client(tmp_path):
    from .test_ws_live import Pump, read_until_finished, submit

    # 300 events of 20 kB, a 64 kB queue: 1000 messages would be allowed, 4 fit in the bytes.
    pump = Pump(300, every=0, size=20_000)
    async with running_daemon(tmp_path, pump, ws_queue_max_bytes=64 * 1024) as server:
        _, token = await server.user("alice")
        task_id = await submit(server, token)
        async with server.ws(token, message_queue_size=0) as ws:
            await send_json(ws, {"type": "subscribe", "task_id": task_id, "after": 0})
            pump.go.set()
            (session,) = server.web.sessions
            await until_quiet(lambda: session.resyncs >= 1)
            assert session.max_queued_bytes <= 64 * 1024 and session.max_queued < 1000
            held: list[int] = []
            while (message := await recv_json(ws))["type"] != "resync":
                held.append(message["seq"])
            assert message == {"type": "resync", "task_id": task_id, "after": len(held)}
            await send_json(ws, {"type": "subscribe", "task_id": task_id, "after": message["after"]})
            await read_until_finished(ws, held)
        assert held == list(range(1, len(held) + 1)) and len(held) > 300


# ---------------------------------------------------------------- per-user WebSocket cap


async def test_one_user_holds_at_most_the_cap_of_websockets_and_others_are_not_affected(tmp_path):
    async with running_daemon(tmp_path, ws_max_connections_per_user=2) as server:
        _, alice = await server.user("alice")
        _, bob = await server.user("bob")
        async with AsyncExitStack() as stack:
            first = [await stack.enter_async_context(server.ws(alice)) for _ in range(2)]
            for ws in first:
                await send_json(ws, {"type": "ping"})
                assert await recv_json(ws) == {"type": "pong"}
            for token, auth_message in ((alice, False), (None, True)):  # header, then message
                async with server.ws(token) as extra:
                    if auth_message:
                        await send_json(extra, {"type": "auth", "token": alice})
                    with pytest.raises(ConnectionClosed) as closed:
                        with trio.fail_after(5):
                            await extra.get_message()
                assert closed.value.reason.code == CLOSE_TOO_MANY == 4429
                assert "at most 2" in closed.value.reason.reason
            async with server.ws(bob) as other:  # a cap per user, not for everyone
                await send_json(other, {"type": "ping"})
                assert await recv_json(other) == {"type": "pong"}
            await first[0].aclose()  # the close handshake is over: its slot is free again
            async with server.ws(alice) as again:
                await send_json(again, {"type": "ping"})
                assert await recv_json(again) == {"type": "pong"}
        assert server.web.fanout.user_connections == {}


# ---------------------------------------------------------------------- open-file limit

FD_PROBE = """
import logging, resource, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
from daemon.web.http_limits import ensure_fd_limit
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 1024))
print("soft", ensure_fd_limit(int(sys.argv[1])))
"""


@pytest.mark.parametrize("connections, soft, warned", [(300, 812, False), (4096, 1024, True)])
def test_the_soft_fd_limit_is_raised_for_the_cap_or_a_warning_says_what_to_do(connections, soft, warned):
    # In a child process: a lowered hard limit cannot be raised again.
    out = subprocess.run(
        [sys.executable, "-c", FD_PROBE, str(connections)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    ).stdout
    assert f"soft {soft}" in out
    assert f"raised the open-file limit (RLIMIT_NOFILE) from 256 to {soft}" in out
    assert ("WARNING the open-file limit (RLIMIT_NOFILE) is 1024" in out) is warned
    if warned:
        assert "LimitNOFILE=" in out and "http_max_connections = 4096" in out


# ------------------------------------------------------- all of it at once: /healthz still answers

SLOW_PER_ADDRESS = 250
SLOW_ADDRESSES = [f"127.0.0.{i}" for i in range(2, 10)]  # 8 x 250 = 2,000, under the 256 cap
FLOODERS = 4


def raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < want:
        pytest.skip(f"needs {want} open files; the hard limit is {hard}")


async def slow_client(server, source: str, k: int, stop: trio.Event, held: list[int]) -> None:
    """A slow client as the bench's abuser runs it (``bench/http_abuse.py``); ``held[0]``: how
    many of them hold a connection now."""

    def changed(delta: int) -> None:
        held[0] += delta

    await hold_slowly(lambda: connect(server, source), k, stop, on_change=changed, silent_s=20.0)


async def ping_flood(client: BareClient, stop: trio.Event, sent: list[int]) -> None:
    """64 KiB of empty pings per write, never reading the pongs; at most 400 writes (25 MB)."""
    burst = client.ws.send(Ping(b"")) * (65536 // 6)
    for _ in range(400):
        if stop.is_set():
            return
        await client.stream.send_all(burst)
        sent[0] += len(burst)


@pytest.mark.slow
async def test_healthz_answers_under_a_ping_flood_and_2000_slow_connections(tmp_path):
    raise_fd_limit(8192)  # 2,000 + a few, at both ends, in this one process
    async with running_daemon(tmp_path) as server:  # the default caps: 4096, 256 per address
        _, token = await server.user("alice")
        stop = trio.Event()
        held, sent = [0], [0]
        latencies: list[float] = []
        slow_open: list[int] = []
        async with trio.open_nursery() as nursery:
            for n, source in enumerate(SLOW_ADDRESSES, 1):
                for k in range(SLOW_PER_ADDRESS):
                    nursery.start_soon(slow_client, server, source, k, stop, held)
                await until_quiet(lambda: server.web.connections.open >= n * SLOW_PER_ADDRESS)  # noqa: B023 - awaited in this turn
            flooders = [await bare_ws(server, token) for _ in range(FLOODERS)]
            for client in flooders:
                nursery.start_soon(ping_flood, client, stop, sent)
            with trio.fail_after(60):
                for _ in range(50):
                    slow_open.append(server.web.connections.open - FLOODERS)
                    began = time.perf_counter()
                    response = await get_healthz(server)
                    latencies.append(time.perf_counter() - began)
                    assert ok(response), response
            flooded = sent[0]
            stop.set()
            nursery.cancel_scope.cancel()
        for client in flooders:
            await client.stream.aclose()
    # The abuse went on while /healthz was asked: about 2,000 held (those the server cuts at
    # its deadlines come back at once) and the pings flowing.
    assert sorted(slow_open)[len(slow_open) // 2] >= 1900, slow_open
    assert flooded > 100_000
    ordered = sorted(latencies)
    p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
    print(
        f"/healthz under abuse, client in the daemon's process: p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms ({len(ordered)} requests, "
        f"{flooded / 1e6:.1f} MB of pings; bench/http_abuse.py measures from outside)"
    )
