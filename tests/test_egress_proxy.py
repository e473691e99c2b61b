"""The egress proxy on its real unix socket: CONNECT and plain HTTP, allowed and refused, the
address checked being the address used, and its bounds (connections, bytes, idle time)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import pytest
import trio
import trio.testing

from daemon.agent.egress_proxy import EgressProxy, ProxyPolicy, running_proxy

from .fakes.package_registry import FakeRegistry

NAMES = {"pkg.test": ["127.0.0.1"], "intranet.test": ["10.1.2.3"], "meta.test": ["169.254.169.254"]}


def policy(port: int, **overrides) -> ProxyPolicy:
    values = dict(
        allowed_hosts=("pkg.test", "*.mirror.test", "intranet.test", "meta.test"),
        allowed_ports=(port,),
        private_hosts=("pkg.test", "*.mirror.test", "meta.test"),
    )
    values.update(overrides)
    return ProxyPolicy(**values)


class Resolver:
    """The tests' names; records every lookup."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        if host.endswith(".mirror.test"):
            return ["127.0.0.1"]
        return NAMES[host]


async def ask(proxy: EgressProxy, request: bytes) -> bytes:
    """Send ``request`` on a new connection and read the answer to its end."""
    stream = await trio.open_unix_socket(str(proxy.path))
    async with stream:
        await stream.send_all(request)
        answer = bytearray()
        while data := await stream.receive_some(65536):
            answer += data
    return bytes(answer)


async def echo_server(nursery: trio.Nursery) -> int:
    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)

    (listener,) = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    return listener.socket.getsockname()[1]


async def test_a_plain_request_is_forwarded_in_origin_form_without_proxy_headers(tmp_path):
    registry = FakeRegistry()
    with registry:
        resolver = Resolver()
        async with running_proxy(policy(registry.port), resolver=resolver) as proxy:
            answer = await ask(
                proxy,
                f"GET http://pkg.test:{registry.port}/simple/?x=1 HTTP/1.1\r\nHost: elsewhere\r\n"
                "Proxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\n\r\n".encode(),
            )
    assert answer.startswith(b"HTTP/1.0 200")  # http.server's own status line
    assert b"tinypkg" in answer
    (seen,) = registry.requests
    assert seen.path == "/simple/?x=1"
    assert seen.headers["Host"] == f"pkg.test:{registry.port}"
    assert seen.headers["Connection"] == "close"
    assert "Proxy-Authorization" not in seen.headers and "Proxy-Connection" not in seen.headers
    assert resolver.calls == ["pkg.test"]
    assert proxy.refused == [] and proxy.connections == 1 and proxy.bytes > len(answer)


@pytest.mark.parametrize(
    ("target", "status", "reason"),
    [
        ("http://pypi.org/simple/", 403, "not_allowed"),
        ("http://127.0.0.1:{port}/simple/", 403, "ip_literal"),
        ("http://2130706433:{port}/", 403, "ip_literal"),
        ("http://[::1]:{port}/", 403, "ip_literal"),
        ("http://intranet.test:{port}/", 403, "private_address"),
        ("http://meta.test:{port}/", 403, "private_address"),  # metadata: even for a private host
        ("http://pkg.test:1/", 403, "port_not_allowed"),
        ("https://pkg.test:{port}/", 400, "bad_request"),
        ("http://user:pw@pkg.test:{port}/", 400, "bad_request"),
        ("/simple/", 400, "bad_request"),
    ],
)
async def test_a_plain_request_to_anything_else_is_refused_with_its_reason(tmp_path, target, status, reason):
    registry = FakeRegistry()
    with registry:
        url = target.format(port=registry.port)
        async with running_proxy(policy(registry.port), resolver=Resolver()) as proxy:
            answer = await ask(proxy, f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode())
    assert f"X-Agentd-Refused: {reason}".encode() in head
    assert body.startswith(b"agentd egress proxy: ")
    assert registry.requests == []
    (refusal,) = proxy.refused
    assert refusal.reason == reason and refusal.detail in body.decode()
    assert set(refusal.as_event()) == {"host", "port", "reason", "detail"}


async def test_connect_tunnels_bytes_to_an_allowed_host_on_its_checked_address():
    names: list[str] = []

    class NoLookups(trio.abc.HostnameResolver):
        async def getaddrinfo(self, host, *args, **kwargs):
            names.append(host)
            raise OSError("the proxy must connect to the address it checked, not look the name up")

        async def getnameinfo(self, *args):
            raise NotImplementedError

    trio.socket.set_custom_hostname_resolver(NoLookups())
    try:
        async with trio.open_nursery() as nursery:
            port = await echo_server(nursery)
            resolver = Resolver()
            async with running_proxy(policy(port), resolver=resolver) as proxy:
                stream = await trio.open_unix_socket(str(proxy.path))
                async with stream:
                    await stream.send_all(f"CONNECT a.mirror.test:{port} HTTP/1.1\r\n\r\nhello".encode())
                    got = b""
                    while not got.endswith(b"hello"):
                        got += await stream.receive_some(65536)
                    assert got == b"HTTP/1.1 200 Connection established\r\n\r\nhello"
                    await stream.send_eof()
                    assert await stream.receive_some(10) == b""  # the half-close went through
            nursery.cancel_scope.cancel()
    finally:
        trio.socket.set_custom_hostname_resolver(None)
    assert resolver.calls == ["a.mirror.test"] and names == []
    assert proxy.bytes == 10 and proxy.refused == []


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("pypi.org:443", "not_allowed"),
        ("mirror.test:{port}", "not_allowed"),  # *.mirror.test is under it, not it
        ("127.0.0.1:{port}", "ip_literal"),
        ("0177.0.0.1:{port}", "ip_literal"),
        ("[::ffff:127.0.0.1]:{port}", "ip_literal"),
        ("intranet.test:{port}", "private_address"),
        ("pkg.test:22", "port_not_allowed"),
        ("pkg.test", "bad_request"),
    ],
)
async def test_connect_anywhere_else_is_refused_before_any_connection(target, reason):
    async with trio.open_nursery() as nursery:
        port = await echo_server(nursery)
        async with running_proxy(policy(port), resolver=Resolver()) as proxy:
            answer = await ask(proxy, f"CONNECT {target.format(port=port)} HTTP/1.1\r\n\r\n".encode())
        nursery.cancel_scope.cancel()
    assert f"X-Agentd-Refused: {reason}".encode() in answer
    assert [r.reason for r in proxy.refused] == [reason]


async def test_without_private_hosts_a_name_on_a_private_address_is_refused(tmp_path):
    registry = FakeRegistry()
    with registry:
        strict = policy(registry.port, private_hosts=())
        async with running_proxy(strict, resolver=Resolver()) as proxy:
            answer = await ask(proxy, f"GET http://pkg.test:{registry.port}/ HTTP/1.1\r\n\r\n".encode())
    assert b"403 Forbidden" in answer and b"resolves to 127.0.0.1, a loopback address" in answer
    assert registry.requests == []


async def test_connections_over_the_cap_are_refused_and_garbage_is_a_bad_request():
    async with trio.open_nursery() as nursery:
        port = await echo_server(nursery)
        async with running_proxy(policy(port, max_connections=2), resolver=Resolver()) as proxy:
            held = [await trio.open_unix_socket(str(proxy.path)) for _ in range(2)]
            await trio.testing.wait_all_tasks_blocked()
            answer = await ask(proxy, b"CONNECT pkg.test:1 HTTP/1.1\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 429 ")
            for stream in held:
                await stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert (await ask(proxy, b"\x16\x03\x01 not http\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        nursery.cancel_scope.cancel()
    assert [r.reason for r in proxy.refused] == ["too_many_connections", "bad_request"]


async def test_an_idle_tunnel_is_closed_after_the_idle_timeout(autojump_clock):
    async with trio.open_nursery() as nursery:
        port = await echo_server(nursery)
        async with running_proxy(policy(port, idle_timeout_s=30), resolver=Resolver()) as proxy:
            start = trio.current_time()
            answer = await ask(proxy, f"CONNECT pkg.test:{port} HTTP/1.1\r\n\r\n".encode())
            assert answer == b"HTTP/1.1 200 Connection established\r\n\r\n"
            assert trio.current_time() - start == pytest.approx(30)
        nursery.cancel_scope.cancel()


async def test_the_byte_budget_cuts_the_tunnel_and_is_recorded():
    async with trio.open_nursery() as nursery:
        port = await echo_server(nursery)
        async with running_proxy(policy(port, max_bytes=1000), resolver=Resolver()) as proxy:
            stream = await trio.open_unix_socket(str(proxy.path))
            got = 0
            async with stream:
                await stream.send_all(f"CONNECT pkg.test:{port} HTTP/1.1\r\n\r\n".encode())
                await stream.send_all(b"x" * 600)
                try:
                    while data := await stream.receive_some(65536):
                        got += len(data)
                        await stream.send_all(b"y" * 600)
                except trio.BrokenResourceError:
                    pass  # cut while it still sent
        nursery.cancel_scope.cancel()
    assert [r.reason for r in proxy.refused] == ["byte_limit"]
    assert proxy.bytes > 1000 and got < 2000
