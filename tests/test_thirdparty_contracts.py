"""Contracts with other libraries' internals: the gate for upgrading a pinned dependency.

agentd uses a few private or undocumented names of Hypercorn, the anthropic SDK,
prometheus-client and Quart, each only in its module under ``daemon/thirdparty/``, and pins
those libraries exactly (``==``) in ``pyproject.toml``. Before raising such a pin, install the
new version and run this file: each test names the internal it checks, and fails with a message
saying what changed, so the glue module can be adapted (or dropped for a public API) before
anything else breaks. The last ones check the public httpcore API the reply gate is built on.
``tests/test_thirdparty_boundary.py`` keeps such names out of the rest of ``daemon/`` and
``control/``.

Real parts only: a Hypercorn connection server on 127.0.0.1, the SDK against the fake Messages
API, real registries and request bodies.
"""

from __future__ import annotations

import inspect
import logging
import socket
from typing import Any

import anthropic
import httpcore2
import httpx2
import pytest
import trio
from hypercorn.config import Config
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from quart_trio.wrappers import TrioRequest

from daemon.agent.anthropic_provider import request_body
from daemon.agent.model import ModelRequest
from daemon.agent.reply_gate import _ERRORS
from daemon.metrics import TrioHistogram
from daemon.thirdparty.anthropic_sdk import post_unread, preset_platform
from daemon.thirdparty.hypercorn_trio import (
    ConnectionServer,
    Worker,
    app_lifespan,
    asgi_app,
    listening_sockets,
    socket_url,
)
from daemon.thirdparty.prometheus import encoder_for
from daemon.thirdparty.quart_body import received_whole

from .fakes.anthropic_api import FakeAnthropicAPI, message, text
from .test_ws_listener import BareClient

KEY = "sk-ant-test-contracts"
WAIT_S = 10  # a broken contract fails the test instead of hanging it

# --- Hypercorn 0.18.0: daemon/thirdparty/hypercorn_trio.py ------------------------------------


def test_hypercorn_internals_have_the_shape_the_glue_uses():
    from hypercorn.events import Updated
    from hypercorn.trio.lifespan import Lifespan
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.utils import repr_socket_addr, wrap_app

    def parameters(function: Any) -> list[str]:
        return list(inspect.signature(function).parameters)

    assert parameters(TCPServer.__init__) == ["self", "app", "config", "context", "state", "stream"], (
        "TCPServer's constructor changed: ConnectionServer passes (app, config, context, state, stream)"
    )
    for method in ("run", "protocol_send", "_close"):
        assert inspect.iscoroutinefunction(getattr(TCPServer, method, None)), (
            f"TCPServer.{method} is gone or no longer async: ConnectionServer overrides or calls it"
        )
    assert "idle" in Updated.__dataclass_fields__, "hypercorn.events.Updated lost its idle flag"
    assert parameters(Lifespan.__init__) == ["self", "app", "config", "state"]
    for method in ("handle_lifespan", "wait_for_startup", "wait_for_shutdown"):
        assert inspect.iscoroutinefunction(getattr(Lifespan, method, None)), f"Lifespan.{method} changed"
    assert parameters(WorkerContext.__init__) == ["self", "max_requests"]
    assert inspect.iscoroutinefunction(WorkerContext(None).terminated.set)
    assert parameters(wrap_app) == ["app", "wsgi_max_body_size", "mode"]
    assert parameters(repr_socket_addr) == ["family", "address"]


def test_a_socket_url_puts_an_ipv6_host_in_brackets():
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
        assert socket_url(sock) == f"http://[::1]:{sock.getsockname()[1]}"


async def test_hypercorn_serves_a_keep_alive_connection_we_accepted():
    """Lifespan startup and state, two requests on one connection (each then idle), HTTP/1
    detected, and after ``Worker.terminate`` the idle connection closed; then the shutdown."""
    lifespan_events: list[str] = []
    idle: list[int] = []
    idle_twice = trio.Event()

    def on_idle() -> None:
        idle.append(1)
        if len(idle) == 2:
            idle_twice.set()

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = (await receive())["type"]
                lifespan_events.append(event)
                if event == "lifespan.startup":
                    scope["state"]["greeting"] = b"hello"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = scope["state"]["greeting"]
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog, config.errorlog = None, logging.getLogger("hypercorn.error")
    wrapped = asgi_app(app, config)
    with trio.fail_after(WAIT_S):
        async with app_lifespan(wrapped, config) as state:
            assert lifespan_events == ["lifespan.startup"]
            (listener,) = listening_sockets(config)
            listener.listen()
            host, port = listener.getsockname()
            assert socket_url(listener) == f"http://127.0.0.1:{port}"
            worker, servers = Worker(), []

            async def serve_one() -> None:
                sock, _ = await trio.socket.from_stdlib_socket(listener).accept()
                servers.append(
                    ConnectionServer(wrapped, config, worker, state, trio.SocketStream(sock), on_idle=on_idle)
                )
                await servers[0].run()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve_one)
                client = await trio.open_tcp_stream(host, port)
                for _ in range(2):  # two requests on the one keep-alive connection
                    assert await BareClient(client).get("/") == (200, b"hello")
                assert servers[0].speaks_http1()
                await idle_twice.wait()  # ConnectionServer's on_idle, after each response
                await worker.terminate()
                assert await client.receive_some() == b"", "an idle connection stays open after terminate"
            listener.close()
    assert lifespan_events == ["lifespan.startup", "lifespan.shutdown"]


# --- anthropic 2.17.0: daemon/thirdparty/anthropic_sdk.py -------------------------------------


@pytest.fixture
async def api(nursery):
    fake = FakeAnthropicAPI()
    await nursery.start(fake.serve)
    return fake


async def test_a_preset_platform_spares_a_first_request_its_worker_thread(api, monkeypatch):
    import anthropic._base_client as base

    assert isinstance(base.get_platform(), str) and base.get_platform(), "get_platform changed"
    threads: list[object] = []
    asyncify = base.asyncify
    monkeypatch.setattr(base, "asyncify", lambda fn: threads.append(fn) or asyncify(fn))
    fresh, preset = (anthropic.AsyncAnthropic(api_key=KEY, base_url=api.url, max_retries=0) for _ in range(2))
    assert fresh._platform is None, "AsyncAnthropic no longer has _platform, unset until a request"
    preset_platform([preset])
    for client in (fresh, preset):
        api.push(message(text("hi")))
        await client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        await client.close()
    assert threads == [base.get_platform], "the SDK no longer looks the platform up as the glue expects"
    assert api.requests[0].headers["x-stainless-os"] == api.requests[1].headers["x-stainless-os"]


async def test_a_post_can_hand_the_response_back_unread(api):
    api.push(message(text("hi")))
    client = anthropic.AsyncAnthropic(api_key=KEY, base_url=api.url, max_retries=0)
    request = ModelRequest(system="s", messages=[{"role": "user", "content": "hi"}], tools=[], max_tokens=5)
    http = await post_unread(client, "/v1/messages", request_body("m", request))
    assert isinstance(http, httpx2.Response) and not http.is_stream_consumed, (
        "RAW_RESPONSE_HEADER no longer makes the SDK hand the response back unread"
    )
    assert b"event: message_stop" in await http.aread()
    await http.aclose()
    await client.close()


# --- prometheus-client 0.26.0: daemon/thirdparty/prometheus.py, and metrics.TrioHistogram -----


def test_the_exposition_format_follows_the_accept_header():
    registry = CollectorRegistry()
    Counter("things", "Things.", registry=registry).inc()
    encode, content_type = encoder_for("")
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert b"things_total 1.0" in encode(registry)
    encode, content_type = encoder_for("application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert encode(registry).endswith(b"# EOF\n")


def test_our_histogram_renders_as_prometheus_own():
    """``le`` labels (Go's float format: ``1.0``, ``1e+06``), counts and sum, byte for byte."""
    bounds = (0.0005, 0.001, 0.25, 1.0, 5, 7200, 1e6, 123456789.0)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    histogram = TrioHistogram("h_seconds", "H.", bounds)
    ours.register(histogram)
    model = Histogram("h_seconds", "H.", buckets=bounds, registry=theirs)
    for value in (0.0001, 0.3, 1.0, 6000, 2e6, 1e9):
        histogram.observe(value)
        model.observe(value)

    def series(registry: CollectorRegistry) -> list[str]:
        return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]

    assert series(ours) == series(theirs)


# --- Quart 0.22.0 and quart-trio 0.12.0: daemon/thirdparty/quart_body.py -----------------------


def test_a_request_body_says_whether_it_arrived_whole():
    body_class = TrioRequest.body_class
    body = body_class(None, None)
    assert not received_whole(body)
    body.append(b"part")
    assert not received_whole(body), "Body._complete is set before the body is complete"
    body.set_complete()
    assert received_whole(body), "Body._complete / _must_raise no longer say a body arrived whole"
    declared_too_large = body_class(10, 5)  # Content-Length over the limit: 413 when read
    declared_too_large.set_complete()
    assert not received_whole(declared_too_large), "Body._must_raise is not set for a 413"
    grew_too_large = body_class(None, 3)
    grew_too_large.append(b"four")
    assert not received_whole(grew_too_large)


# --- httpcore2 / httpx2 (public API, bounded): daemon/agent/reply_gate.py -------------------------


def test_every_httpcore_error_is_raised_as_the_httpx_error_of_its_name():
    errors = [
        getattr(httpcore2, name) for name in httpcore2.__all__ if name != "ConnectionNotAvailable"
    ]  # the pool's retry signal: never leaves it
    errors = [e for e in errors if isinstance(e, type) and issubclass(e, Exception)]
    for error in errors:
        ours = next((theirs for core, theirs in _ERRORS if issubclass(error, core)), None)
        assert ours is not None, f"httpcore2.{error.__name__} is new: map it in reply_gate._ERRORS"
        assert ours is getattr(httpx2, error.__name__), f"httpcore2.{error.__name__} maps to {ours}"


def test_a_connection_pool_takes_a_network_backend_of_our_own():
    parameters = inspect.signature(httpcore2.AsyncConnectionPool).parameters
    assert {
        "network_backend",
        "ssl_context",
        "max_connections",
        "max_keepalive_connections",
        "keepalive_expiry",
        "socket_options",
    } <= set(parameters)
    for name in ("connect_tcp", "connect_unix_socket", "sleep"):
        assert name in vars(httpcore2.AsyncNetworkBackend)
    for name in ("read", "write", "aclose", "start_tls", "get_extra_info"):
        assert name in vars(httpcore2.AsyncNetworkStream)
