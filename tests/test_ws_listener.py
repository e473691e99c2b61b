"""The HTTP port shared by Hypercorn and the lean ``/ws``, and the WebSocket sweeps.

End to end: the real daemon on 127.0.0.1, trio-websocket clients, and a bare wsproto client on
a TCP stream where trio-websocket will not do (HTTP first on the same connection, a peer that
never answers pings); real clock, short settings, every wait on a message or EOF. The sweeps
alone: trio's mock clock, no sockets.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import h11
import pytest
import trio
from trio_websocket import ConnectionClosed
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection as WsProtocol
from wsproto.events import AcceptConnection, Ping, Request, TextMessage

from daemon.web.fanout import Fanout
from daemon.web.session import CLOSE_AUTH_FAILED, Session, State
from daemon.web.ws import MAX_MESSAGE_CHARS, frame_text
from daemon.web.ws_sweeps import ping_all, recheck_tokens

from .fakes.phone import recv_json, running_daemon, send_json


class BareClient:
    """HTTP/1.1 and then a WebSocket on one TCP connection, each step by hand."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)

    async def get(self, target: str) -> tuple[int, bytes]:
        """One keep-alive HTTP request; the connection stays open."""
        http = h11.Connection(h11.CLIENT)
        await self.stream.send_all(
            http.send(h11.Request(method="GET", target=target, headers=[("Host", "localhost")]))
        )
        await self.stream.send_all(http.send(h11.EndOfMessage()))
        status, body = 0, b""
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(await self.stream.receive_some())
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, body

    async def upgrade(self, token: str) -> None:
        header = (b"authorization", f"Bearer {token}".encode())
        await self.stream.send_all(
            self.ws.send(Request(host="localhost", target="/ws", extra_headers=[header]))
        )
        assert isinstance(await self.next_event(), AcceptConnection)

    async def send_json(self, message: dict) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(json.dumps(message))))

    async def next_event(self):
        while True:
            for event in self.ws.events():
                return event
            data = await self.stream.receive_some()
            if not data:
                return None
            self.ws.receive_data(data)


async def test_every_other_route_is_served_on_the_same_port(tmp_path):
    async with running_daemon(tmp_path) as server:
        _, token = await server.user("alice")
        async with server.client(token) as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            assert (await http.get("/openapi.json")).status_code == 200
            created = await http.post("/api/tasks", json={"repo_url": "file:///r", "prompt": "p"})
            assert created.status_code == 201, created.text
            # /ws without an upgrade, and a path that only starts like it: plain HTTP answers.
            assert (await http.get("/ws")).status_code == 404
            assert (await http.get("/wsx")).status_code == 404
        async with server.ws(token) as ws:
            await send_json(ws, {"type": "ping"})
            assert await recv_json(ws) == {"type": "pong"}


async def test_a_keep_alive_connection_upgrades_to_ws_after_plain_requests(tmp_path):
    async with running_daemon(tmp_path) as server:
        _, token = await server.user("alice")
        host, port = server.url.removeprefix("http://").split(":")
        client = BareClient(await trio.open_tcp_stream(host, int(port)))
        async with client.stream:
            for _ in range(2):
                status, body = await client.get("/healthz")
                assert (status, json.loads(body)) == (200, {"status": "ok"})
            await client.upgrade(token)
            await client.send_json({"type": "ping"})
            reply = await client.next_event()
            assert isinstance(reply, TextMessage) and json.loads(reply.data) == {"type": "pong"}
            assert len(server.web.sessions) == 1


async def test_messages_sent_right_behind_the_upgrade_request_are_not_lost(tmp_path):
    async with running_daemon(tmp_path, ws_auth_timeout_s=5) as server:
        _, token = await server.user("alice")
        host, port = server.url.removeprefix("http://").split(":")
        client = BareClient(await trio.open_tcp_stream(host, int(port)))
        async with client.stream:
            head = client.ws.send(Request(host="localhost", target="/ws?v=1"))
            frames = WsProtocol(ConnectionType.CLIENT)  # the same masked frames, sent early
            early = b"".join(
                frames.send(TextMessage(json.dumps(m)))
                for m in ({"type": "auth", "token": token}, {"type": "ping"})
            )
            await client.stream.send_all(head + early)
            assert isinstance(await client.next_event(), AcceptConnection)
            reply = await client.next_event()
            assert isinstance(reply, TextMessage) and json.loads(reply.data) == {"type": "pong"}


async def test_a_message_over_the_limit_closes_with_1009_at_once(tmp_path):
    async with running_daemon(tmp_path, ws_ping_timeout_s=60) as server:
        _, token = await server.user("alice")
        async with server.ws(token) as ws:
            await ws.send_message("x" * (MAX_MESSAGE_CHARS + 1))
            with pytest.raises(ConnectionClosed) as closed:
                with trio.fail_after(5):  # far below the 60 s a dead peer would get
                    await ws.get_message()
        assert closed.value.reason.code == 1009


async def test_a_peer_that_never_answers_pings_is_dropped(tmp_path):
    # A timeout long enough that a loaded machine never starves the answering peer past it.
    async with running_daemon(tmp_path, ws_ping_interval_s=0.2, ws_ping_timeout_s=2.0) as server:
        _, token = await server.user("alice")
        host, port = server.url.removeprefix("http://").split(":")
        async with server.ws(token) as live:  # trio-websocket answers pings
            silent = BareClient(await trio.open_tcp_stream(host, int(port)))
            async with silent.stream:
                started = trio.current_time()
                await silent.upgrade(token)
                with trio.fail_after(5):
                    while (event := await silent.next_event()) is not None:  # read, never answer
                        assert isinstance(event, Ping), event
                # Dropped after interval + timeout of silence, not before. A loaded machine only
                # makes it later (and a server starved that long may drop the peer before its
                # first ping was written): a lower bound on the time holds, a count of pings not.
                assert trio.current_time() - started >= 2.2
            # The drop unregistered it before the socket closed; the answering peer stays.
            assert len(server.web.sessions) == 1
            await send_json(live, {"type": "ping"})
            assert await recv_json(live) == {"type": "pong"}


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_a_frame_decodes_as_one_whole_text_message(size):
    client = WsProtocol(ConnectionType.CLIENT)  # a client past its handshake
    text = "é" * (size // 2) + "x" * (size % 2)
    client.receive_data(frame_text(text))
    (event,) = list(client.events())
    assert isinstance(event, TextMessage) and event.data == text and event.message_finished


# ----------------------------------------------------------------- the sweeps, on a mock clock


class NoLimit:
    def take(self, key) -> float:
        return 0.0


async def test_the_token_sweep_checks_each_token_once_and_closes_revoked_ones(
    store, hub, alice, autojump_clock
):
    checks: list[tuple[float, str]] = []
    valid = {"a", "b"}

    async def authenticate(token):
        checks.append((trio.current_time(), token))
        return alice if token in valid else None

    async with trio.open_nursery() as nursery:
        fanout = Fanout(hub, store)
        sessions = {}
        for token in ("a", "a", "a", "b"):
            session = Session(
                fanout=fanout,
                store=store,
                spawn=nursery.start_soon,
                authenticate=authenticate,
                limiter=NoLimit(),
                wake=lambda: None,
            )
            await session.open(token)
            sessions[session] = None
        checks.clear()
        state = SimpleNamespace(sessions=sessions, auth=SimpleNamespace(user_for=authenticate))
        nursery.start_soon(recheck_tokens, state, 30)
        await trio.sleep(31)
        assert checks == [(30, "a"), (30, "b")]  # one store read per token, not per connection
        valid.discard("b")
        await trio.sleep(30)
        assert checks[2:] == [(60, "a"), (60, "b")]
        assert [(s.token, s.state, s.close_code) for s in sessions] == [("a", State.OPEN, None)] * 3 + [
            ("b", State.CLOSED, CLOSE_AUTH_FAILED)
        ]
        nursery.cancel_scope.cancel()


class FakeConnection:
    def __init__(self, name: str, log: list) -> None:
        self.name, self.log, self.last_heard = name, log, 0.0

    def ping(self) -> None:
        self.log.append((trio.current_time(), "ping", self.name))

    def abort(self) -> None:
        self.log.append((trio.current_time(), "abort", self.name))


async def test_the_ping_sweep_pings_all_and_drops_one_silent_past_interval_plus_timeout(autojump_clock):
    log: list = []
    talker, mute = FakeConnection("talker", log), FakeConnection("mute", log)
    state = SimpleNamespace(sessions={object(): talker, object(): mute})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ping_all, state, 20, 20)

        async def talk() -> None:  # answers every ping a second later
            while True:
                await trio.sleep(1)
                talker.last_heard = trio.current_time()

        nursery.start_soon(talk)
        await trio.sleep(61)
        nursery.cancel_scope.cancel()
    assert log == [
        (20, "ping", "talker"),
        (20, "ping", "mute"),
        (40, "ping", "talker"),
        (40, "ping", "mute"),  # silent for 40 s: not yet more than 40
        (60, "ping", "talker"),
        (60, "abort", "mute"),
    ]


async def test_the_pings_of_many_connections_are_spread_over_the_interval(autojump_clock):
    log: list = []
    conns = [FakeConnection(str(i), log) for i in range(450)]  # three batches of at most 200
    state = SimpleNamespace(sessions={object(): conn for conn in conns})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ping_all, state, 30, 30)
        await trio.sleep(31)
        nursery.cancel_scope.cancel()
    times = sorted({t for t, _, _ in log})
    assert times == [10, 20, 30]
    assert sorted(name for _, what, name in log if what == "ping") == sorted(c.name for c in conns)
