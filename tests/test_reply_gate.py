"""The reply gate: requests are built and replies that arrive together parsed a slot at a time,
and no slot is held while its task waits on the network or for a pool's connection, after its
response is closed, or once cancelled.

A small HTTP/1.1 server on 127.0.0.1 answers through real sockets, each path its own way; the
client is httpx2 with ``GatedHTTPTransport``, as the Anthropic provider builds it.
"""

from __future__ import annotations

import httpx2
import pytest
import trio
import trio.testing

from daemon.agent.anthropic_provider import AnthropicProvider, request_body
from daemon.agent.model import ModelRequest
from daemon.agent.reply_gate import GatedHTTPTransport, ReplyGate, gated_http_clients

from .fakes.anthropic_api import FakeAnthropicAPI, message, text

KEY = "sk-ant-test-gate"
SSE = [
    (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message",'
        b'"role":"assistant","model":"m","content":[],"stop_reason":null,"stop_sequence":null,'
        b'"usage":{"input_tokens":1,"output_tokens":1}}}\n\n'
    ),
    (
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
        b'"stop_sequence":null},"usage":{"output_tokens":1}}\n\n'
    ),
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
]
REQUEST = ModelRequest(system="s", messages=[{"role": "user", "content": "hi"}], tools=[], max_tokens=10)
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
WAIT_S = 10  # a deadlock fails the test instead of hanging it


class ReplyServer:
    """``/full``: a whole reply at once. ``/held``: its first chunk, the rest once ``go_on`` is
    set. ``/burst``: nothing until ``burst`` requests have arrived, then all their replies.
    ``/drop``: the connection closed without a byte (a keep-alive race, a balancer's reset).
    ``/sse``: a minimal Messages API stream, the first time after a ``/drop``-like close."""

    def __init__(self, burst: int = 0) -> None:
        self.go_on = trio.Event()
        self.burst = burst
        self.arrived = 0
        self.all_arrived = trio.Event()
        self.dropped = False

    async def handle(self, stream: trio.SocketStream) -> None:
        while await self.answer(stream):  # keep-alive: the next request on the same connection
            pass

    async def answer(self, stream: trio.SocketStream) -> bool:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = await stream.receive_some()
            if not chunk:
                return False
            request += chunk
        path = request.split(b" ", 2)[1]
        if path == b"/drop" or (path == b"/v1/messages" and not self.dropped):
            self.dropped = True
            await stream.aclose()
            return False
        if path == b"/v1/messages":
            body = b"".join(SSE)
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            return True
        if path == b"/held":
            await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await self.go_on.wait()
            await stream.send_all(b"4\r\nrest\r\n0\r\n\r\n")
            return True
        if path == b"/burst":
            self.arrived += 1
            if self.arrived == self.burst:
                self.all_arrived.set()
            await self.all_arrived.wait()
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nwhole")
        return True

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await trio.serve_tcp(self.handle, 0, host="127.0.0.1", task_status=task_status)


@pytest.fixture(autouse=True)
def no_proxy_in_the_environment(monkeypatch):
    for name in PROXY_VARIABLES:  # a proxy leaves the provider's clients ungated
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def served(nursery):
    async def start(server: ReplyServer, slots: int, **transport):
        listeners = await nursery.start(server.serve)
        port = server.port = listeners[0].socket.getsockname()[1]
        gate = ReplyGate(slots)
        client = httpx2.AsyncClient(
            transport=GatedHTTPTransport(gate, **transport), base_url=f"http://127.0.0.1:{port}"
        )
        return gate, client

    return start


@pytest.fixture
async def fake_api(nursery):
    """A fake Messages API, and ``provider_for(pools)``: a gated provider on it (closed after)."""
    api = FakeAnthropicAPI()
    url = await nursery.start(api.serve)
    providers: list[AnthropicProvider] = []

    def provider_for(pools: int) -> AnthropicProvider:
        providers.append(AnthropicProvider(KEY, base_url=url, max_retries=0, pools=pools))
        return providers[-1]

    yield api, provider_for
    for provider in providers:
        await provider.aclose()


async def read_all(client: httpx2.AsyncClient, path: str) -> bytes:
    async with client.stream("GET", path) as response:
        return b"".join([part async for part in response.aiter_raw()])


async def test_a_streaming_reply_holds_no_slot_while_it_waits_for_more(served, nursery):
    server = ReplyServer()
    gate, client = await served(server, 1)
    first, done = trio.Event(), trio.Event()
    bodies: list[bytes] = []

    async def streaming() -> None:
        async with client.stream("GET", "/held") as response:
            parts = []
            async for part in response.aiter_raw():
                parts.append(part)
                first.set()
            bodies.append(b"".join(parts))
        done.set()

    nursery.start_soon(streaming)
    await first.wait()
    with trio.fail_after(WAIT_S):  # the streaming task waits for its next chunk: no slot held
        assert await read_all(client, "/full") == b"whole"
    server.go_on.set()
    with trio.fail_after(WAIT_S):
        await done.wait()
    assert bodies == [b"firstrest"] and gate.held() == 0
    await client.aclose()


async def test_a_closed_reply_gives_its_slot_back(served, nursery):
    server = ReplyServer()
    gate, client = await served(server, 1)
    other_done = trio.Event()
    results: list[bytes] = []

    async def reads_then_waits() -> None:
        # Its last read took the slot; closing the response must give it back, since this task
        # now waits on something else (as the SDK sleeps before a retry).
        results.append(await read_all(client, "/full"))
        with trio.fail_after(WAIT_S):
            await other_done.wait()

    async def other() -> None:
        results.append(await read_all(client, "/full"))
        other_done.set()

    async with trio.open_nursery() as both:
        both.start_soon(reads_then_waits)
        await trio.testing.wait_all_tasks_blocked()
        both.start_soon(other)
    assert results == [b"whole", b"whole"] and gate.held() == 0
    await client.aclose()


async def test_replies_arriving_together_are_parsed_a_slot_at_a_time(served):
    server = ReplyServer(burst=12)
    gate, client = await served(server, 2)
    bodies: list[bytes] = []

    async def one() -> None:
        bodies.append(await read_all(client, "/burst"))

    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as all_of_them:
            for _ in range(12):
                all_of_them.start_soon(one)
    assert bodies == [b"whole"] * 12
    assert gate.most_held == 2 and gate.held() == 0
    await client.aclose()


async def test_a_task_cancelled_while_waiting_for_a_slot_takes_none(served, nursery):
    server = ReplyServer()
    gate, client = await served(server, 1)
    first = trio.Event()

    async def holds_the_slot() -> None:
        async with client.stream("GET", "/held") as response:
            iterator = response.aiter_raw()
            await iterator.__anext__()  # parsed the first chunk: holds the slot until its next read
            first.set()
            await server.go_on.wait()
            async for _ in iterator:
                pass

    nursery.start_soon(holds_the_slot)
    await first.wait()
    with trio.CancelScope() as waiting:

        async def cancel_once_parked() -> None:
            await trio.testing.wait_all_tasks_blocked()
            assert gate.held() == 1
            waiting.cancel()

        nursery.start_soon(cancel_once_parked)
        await read_all(client, "/full")  # its reply arrives; it waits for the slot; cancelled
    assert waiting.cancelled_caught
    server.go_on.set()
    with trio.fail_after(WAIT_S):
        assert await read_all(client, "/full") == b"whole"
    assert gate.held() == 0
    await client.aclose()


async def test_a_request_that_fails_before_its_response_holds_no_slot(served):
    server = ReplyServer()
    gate, client = await served(server, 1)
    with pytest.raises(httpx2.RemoteProtocolError):
        await read_all(client, "/drop")
    assert gate.held() == 0
    with trio.fail_after(WAIT_S):
        assert await read_all(client, "/full") == b"whole"
    await client.aclose()


async def test_no_slot_is_held_while_the_sdk_sleeps_before_a_retry(served, monkeypatch):
    import anthropic._base_client

    server = ReplyServer()
    await served(server, 1)  # only its port: the provider builds its own clients
    url = f"http://127.0.0.1:{server.port}"
    provider = AnthropicProvider(KEY, base_url=url, max_retries=1, pools=1)
    held_while_sleeping: list[int] = []
    sleep = anthropic._base_client.AsyncAPIClient._sleep_for_retry

    async def spy(self, *args, **kwargs):
        held_while_sleeping.append(provider._gate.held())
        return await sleep(self, *args, **kwargs)

    monkeypatch.setattr(anthropic._base_client.AsyncAPIClient, "_sleep_for_retry", spy)
    with trio.fail_after(WAIT_S):
        reply = await provider.complete(REQUEST)
    await provider.aclose()
    assert server.dropped and reply.stop_reason == "end_turn"
    assert held_while_sleeping == [0]


async def test_the_provider_parses_replies_through_its_gate(fake_api):
    api, provider_for = fake_api
    provider = provider_for(pools=1)
    api.push(message(text("hello")))
    reply = await provider.complete(REQUEST)
    assert reply.content == [{"type": "text", "text": "hello"}]
    assert provider._gate is not None and provider._gate.most_held == 1 and provider._gate.held() == 0


async def test_a_first_request_waits_for_no_worker_thread_with_the_slot(fake_api, monkeypatch):
    """The SDK would look the platform up in a worker thread (Trio's limiter, shared with the
    daemon's file work) at each client's first request, after the slot is taken."""
    import anthropic._base_client

    threads: list[object] = []
    monkeypatch.setattr(
        anthropic._base_client,
        "asyncify",
        lambda fn: threads.append(fn) or (lambda: trio.to_thread.run_sync(fn)),
    )
    api, provider_for = fake_api
    provider = provider_for(pools=2)
    for client in provider._clients:  # each pool's first request
        api.push(message(text("hello")))
        await provider._stream_on(client, request_body(provider.model, REQUEST), None)
    assert threads == []


async def test_model_calls_build_their_requests_a_slot_at_a_time(fake_api, monkeypatch):
    """What a group commit wakes together (tasks sending their next request) is built one by one."""
    api, provider_for = fake_api
    entered_holding: list[tuple[bool, int]] = []
    handle = GatedHTTPTransport.handle_async_request

    async def spy(self, request):
        gate = self._gate
        entered_holding.append((trio.lowlevel.current_task() in gate._holders, gate.held()))
        return await handle(self, request)

    monkeypatch.setattr(GatedHTTPTransport, "handle_async_request", spy)
    provider = provider_for(pools=1)
    for _ in range(5):
        api.push(message(text("hello")))
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as calls:
            for _ in range(5):
                calls.start_soon(provider.complete, REQUEST)
    assert entered_holding == [(True, 1)] * 5
    assert provider._gate.held() == 0


async def test_a_request_holds_no_slot_while_it_connects_or_is_written(served, monkeypatch):
    """A connect (TCP and TLS to the API: a round trip or more) or a write that fills the
    socket's buffer waits on the network: the slot taken to build the request is free by then."""
    from httpcore2._backends import trio as httpcore_trio

    server = ReplyServer()
    gate, client = await served(server, 1)
    held: dict[str, list[int]] = {"connect": [], "write": []}
    connect, write = httpcore_trio.TrioBackend.connect_tcp, httpcore_trio.TrioStream.write

    async def spy_connect(self, *args, **kwargs):
        held["connect"].append(gate.held())
        return await connect(self, *args, **kwargs)

    async def spy_write(self, *args, **kwargs):
        held["write"].append(gate.held())
        return await write(self, *args, **kwargs)

    monkeypatch.setattr(httpcore_trio.TrioBackend, "connect_tcp", spy_connect)
    monkeypatch.setattr(httpcore_trio.TrioStream, "write", spy_write)
    with trio.fail_after(WAIT_S):
        for _ in range(2):  # on a new connection, then on the kept-alive one (written, not opened)
            await gate.acquire()  # as AnthropicProvider does before it builds a request
            assert await read_all(client, "/full") == b"whole"
    assert held["connect"] == [0] and len(held["write"]) >= 2 and set(held["write"]) == {0}
    assert gate.held() == 0
    await client.aclose()


async def test_a_holder_does_not_wait_for_a_connection_of_a_full_pool_with_its_slot(served, nursery):
    """The request holding the pool's only connection needs the slot to read its reply; the
    request waiting for that connection must not hold the slot meanwhile."""
    server = ReplyServer()
    gate, client = await served(server, 1, limits=httpx2.Limits(max_connections=1))
    streaming = trio.Event()

    async def holds_the_connection() -> None:
        async with client.stream("GET", "/held") as response:
            iterator = response.aiter_raw()
            await iterator.__anext__()
            streaming.set()
            async for _ in iterator:  # waits for the rest; then needs the slot to parse it
                pass

    nursery.start_soon(holds_the_connection)
    await streaming.wait()

    async def go_on_once_queued() -> None:
        await trio.testing.wait_all_tasks_blocked()
        server.go_on.set()

    nursery.start_soon(go_on_once_queued)
    with trio.fail_after(WAIT_S):
        await gate.acquire()
        assert await read_all(client, "/full") == b"whole"
    assert gate.held() == 0
    await client.aclose()


async def test_the_transport_counts_a_request_until_its_response_is_closed_or_it_failed(nursery):
    """The pool has room while fewer requests are in flight than it has connections."""
    server = ReplyServer()
    listeners = await nursery.start(server.serve)
    transport = GatedHTTPTransport(ReplyGate(), limits=httpx2.Limits(max_connections=1))
    client = httpx2.AsyncClient(
        transport=transport, base_url=f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    )
    assert (transport.in_flight, transport.pool_has_room()) == (0, True)
    with trio.fail_after(WAIT_S):
        async with client.stream("GET", "/held") as response:
            parts = response.aiter_raw()
            await parts.__anext__()
            assert (transport.in_flight, transport.pool_has_room()) == (1, False)
            server.go_on.set()
            async for _ in parts:  # to its end, where httpx closes it
                pass
        assert (transport.in_flight, transport.pool_has_room()) == (0, True)
        with pytest.raises(httpx2.RemoteProtocolError):
            await read_all(client, "/drop")
    assert (transport.in_flight, transport.pool_has_room()) == (0, True)
    assert GatedHTTPTransport(ReplyGate(), limits=httpx2.Limits(max_connections=None)).pool_has_room()
    await client.aclose()


def test_with_a_proxy_in_the_environment_the_sdk_client_is_kept(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert gated_http_clients(ReplyGate(), 2) is None
    # and the provider has no gate: one its transports never give back would be held for a
    # whole call, one call at a time
    assert AnthropicProvider(KEY, pools=2)._gate is None
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("NO_PROXY", "example.com")
    clients = gated_http_clients(ReplyGate(), 2)
    assert clients is not None and len(clients) == 2
    assert all(isinstance(client, httpx2.AsyncClient) for client in clients)


def test_a_gate_needs_a_slot_and_the_setting_can_turn_it_off(tmp_path):
    from daemon.agent.factory import anthropic_provider as build_provider
    from daemon.config import Settings

    with pytest.raises(ValueError):
        ReplyGate(0)
    settings = Settings(data_dir=tmp_path, model="anthropic", anthropic_api_key=KEY)
    assert build_provider(settings)._gate.slots == 1
    assert build_provider(settings.model_copy(update={"model_reply_slots": 4}))._gate.slots == 4
    assert build_provider(settings.model_copy(update={"model_reply_slots": 0}))._gate is None
