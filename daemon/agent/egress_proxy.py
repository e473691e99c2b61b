"""The allowlisting HTTP(S) proxy: a task's sandbox's only way out, one proxy per task.

The sandbox has no network of its own (an empty network namespace). For the setup phase (and,
when the operator allows it, the agent's own commands) the proxy's unix socket is bound into the
sandbox, and a small bridge there (``proxy_bridge.py``) offers it on ``127.0.0.1`` as
``HTTP_PROXY``/``HTTPS_PROXY``: the scheme of Anthropic's sandbox-runtime on Linux, a filtering
proxy outside bubblewrap reached through a bind-mounted unix socket.

What it does, per request:

- ``CONNECT host:port`` (HTTPS and anything tunnelled; the bytes are not looked at, TLS is not
  intercepted) and plain ``http://`` requests in absolute form (forwarded in origin form with
  ``Connection: close`` and without ``Proxy-*`` headers; one request per connection);
- the host must be a name on the allowlist (exact, or ``*.suffix`` for any name under it) and
  the port one of the allowed ports; an IP literal is refused, whatever its form;
- the name is resolved once (``getaddrinfo`` in a worker thread, or the injected resolver of the
  tests) and every address it resolves to is checked with ``daemon/git/addresses.py``'s classes:
  a loopback, private, link-local... address is refused unless the name is one of the
  operator's ``private_hosts`` (an internal mirror), a cloud metadata address always; the
  connection goes to the addresses checked, never to the name (no DNS rebinding);
- bounded: connections open at once, bytes in both directions over the proxy's life, an idle
  timeout on every connection, a head of at most 16 KiB read within that timeout.

A refusal is answered ``403`` (``400`` for a malformed request, ``429`` over the connection cap,
``502`` when the allowed host cannot be reached) with a one-line reason in the body and in an
``X-Agentd-Refused`` header, logged, and kept as a ``Refusal`` (host, port, reason code, detail)
for the task's events. The HTTP of it, without I/O (parsing, rewriting, answers): ``egress_http.py``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

import trio

from daemon.errors import PermanentError
from daemon.git.addresses import METADATA, address_class, addresses_of, ip_literal

from .egress_http import (
    MAX_HEAD,
    BadRequest,
    Refusal,
    authority,
    parse_head,
    plain_request,
    refusal_response,
)

__all__ = ["DEFAULT_ALLOWED_HOSTS", "EgressProxy", "ProxyPolicy", "Refusal", "Resolver", "running_proxy"]

log = logging.getLogger(__name__)

# The package registries of the common languages, and where they keep their files.
DEFAULT_ALLOWED_HOSTS: tuple[str, ...] = (
    "pypi.org",
    "files.pythonhosted.org",
    "registry.npmjs.org",
    "registry.yarnpkg.com",
    "crates.io",
    "static.crates.io",
    "index.crates.io",
    "proxy.golang.org",
    "sum.golang.org",
    "rubygems.org",
    "index.rubygems.org",
    "repo.maven.apache.org",
    "repo1.maven.org",
)

Stream = trio.SocketStream
#: ``(host, port)`` to the addresses the host resolves to, as strings.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

MAX_REFUSALS_KEPT = 50
_CHUNK = 65536
_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")


@dataclass(frozen=True)
class ProxyPolicy:
    """What one proxy lets through. ``allowed_hosts``: names, or ``*.suffix`` for the names
    under ``suffix``; ``private_hosts``: the allowed names that may resolve to non-public
    addresses (never cloud metadata); bounds: ``max_connections`` open at once, ``max_bytes``
    in both directions over the proxy's life, ``idle_timeout_s`` with no byte either way."""

    allowed_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS
    allowed_ports: tuple[int, ...] = (80, 443)
    private_hosts: tuple[str, ...] = ()
    max_connections: int = 32
    max_bytes: int = 4 * 1024**3
    idle_timeout_s: float = 60.0
    connect_timeout_s: float = 30.0

    def allows(self, host: str) -> bool:
        """Whether the (lower-case) name ``host`` is on the allowlist."""
        return _listed(host, self.allowed_hosts)


def _listed(host: str, patterns: Sequence[str]) -> bool:
    for listed in patterns:
        pattern = listed.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


class _Refused(Exception):
    def __init__(self, status: int, refusal: Refusal) -> None:
        super().__init__(refusal.detail)
        self.status = status
        self.refusal = refusal


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (``getaddrinfo``, in a worker thread), in order."""
    return [str(ip) for ip in await addresses_of(host, port)]


class EgressProxy:
    """One task's proxy on the unix socket ``path``; ``serve`` runs it.

    Accounting, read while or after it runs: ``connections`` (accepted), ``bytes`` (both
    directions), ``refused`` (the first ``MAX_REFUSALS_KEPT`` refusals) and ``refused_total``.
    ``resolver``: tests map their host names to 127.0.0.1 with it; the default is ``resolve``.
    """

    def __init__(
        self, path: Path, policy: ProxyPolicy, *, resolver: Resolver | None = None, task_id: str | None = None
    ) -> None:
        self.path = path
        self.policy = policy
        self._resolve = resolver or resolve
        self._task_id = task_id
        self.connections = 0
        self.bytes = 0
        self.refused: list[Refusal] = []
        self.refused_total = 0
        self._open = 0
        self._over_bytes = False

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``path`` (made 0666: its directory is the daemon's, 0700; inside a sandbox
        only the socket itself is visible, to whichever uid the task runs as) and serve until
        cancelled. Cancellation: the listener and every connection are closed."""
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.bind(str(self.path))
            await trio.to_thread.run_sync(os.chmod, self.path, 0o666)
            sock.listen(64)
        except BaseException:
            sock.close()
            raise
        listener = trio.SocketListener(sock)
        async with listener, trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listener.accept()
                nursery.start_soon(self._handle, stream)

    def _refuse(
        self, status: int, reason: str, detail: str, host: str = "", port: int | None = None
    ) -> _Refused:
        refusal = Refusal(host, port, reason, detail)
        self.refused_total += 1
        if len(self.refused) < MAX_REFUSALS_KEPT:
            self.refused.append(refusal)
        log.info(
            "egress proxy refused %s: %s",
            host or "-",
            detail,
            extra={"task_id": self._task_id, "host": host, "port": port, "reason": reason},
        )
        return _Refused(status, refusal)

    async def _handle(self, client: Stream) -> None:
        self.connections += 1
        self._open += 1
        try:
            async with client:
                if self._open > 4 * self.policy.max_connections:
                    return  # a flood: closed unread, unanswered (the cap's 429 needs the head)
                try:
                    await self._serve_one(client)
                except BadRequest as bad:  # the parser's (egress_http.py): counted and logged here
                    refused = self._refuse(400, "bad_request", bad.detail, bad.host)
                    await _answer(client, refused.status, refused.refusal)
                except _Refused as refused:
                    await _answer(client, refused.status, refused.refusal)
                except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                    pass  # the client went away or fell silent: nothing to tell it
        finally:
            self._open -= 1

    async def _serve_one(self, client: Stream) -> None:
        with trio.fail_after(self.policy.idle_timeout_s):
            head, rest = await _read_head(client)
        method, target, headers = parse_head(head)
        if self._open > self.policy.max_connections:  # refused after its head: unread bytes reset
            detail = f"more than {self.policy.max_connections} connections at once"
            raise self._refuse(429, "too_many_connections", detail)
        if method == "CONNECT":
            host, port = authority(target)
            upstream = await self._open_upstream(host, port)
            async with upstream:
                await client.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await self._splice(client, upstream, rest, upstream_ends=False)
            return
        host, port, request = plain_request(method, target, headers)
        upstream = await self._open_upstream(host, port)
        async with upstream:
            await self._splice(client, upstream, request + rest, upstream_ends=True)

    async def _open_upstream(self, host: str, port: int) -> Stream:
        """Check ``host`` and ``port``, resolve the name once, check every address and connect
        to the first of them that answers."""
        p, where = self.policy, (host, port)
        try:
            literal = ip_literal(host)
        except PermanentError:
            literal = ip_address("::")  # a zone id or a bracketed non-address: a literal all the same
        if literal is not None:
            raise self._refuse(403, "ip_literal", f"{host} is an IP address, not a name", *where)
        host = host.lower().rstrip(".")
        where = (host, port)
        if not _NAME.match(host):
            raise self._refuse(400, "bad_request", f"{host!r} is not a host name", *where)
        if not p.allows(host):
            raise self._refuse(
                403, "not_allowed", f"{host} is not on the allowlist (egress_allowed_hosts)", *where
            )
        if port not in p.allowed_ports:
            raise self._refuse(
                403, "port_not_allowed", f"port {port} is not allowed (egress_allowed_ports)", *where
            )
        try:
            with trio.fail_after(p.connect_timeout_s):
                addresses = list(await self._resolve(host, port))
        except (OSError, UnicodeError, trio.TooSlowError) as exc:
            raise self._refuse(502, "unresolved", f"{host} did not resolve: {exc}", *where) from None
        if not addresses:
            raise self._refuse(502, "unresolved", f"{host} resolves to no address", *where)
        private = _listed(host, p.private_hosts)
        for address in addresses:
            cls = address_class(ip_address(address))
            if cls is not None and (cls == METADATA or not private):
                raise self._refuse(
                    403, "private_address", f"{host} resolves to {address}, a {cls} address", *where
                )
        errors = []
        with trio.move_on_after(p.connect_timeout_s):
            for address in addresses:
                try:
                    return await trio.open_tcp_stream(address, port)
                except OSError as exc:
                    errors.append(f"{address}: {exc.strerror or exc}")
        raise self._refuse(
            502, "connect_failed", f"{host} is unreachable ({'; '.join(errors) or 'timed out'})", *where
        )

    async def _splice(self, client: Stream, upstream: Stream, first: bytes, *, upstream_ends: bool) -> None:
        """Copy both ways until both sides are done, nothing moved for ``idle_timeout_s``, or
        the byte budget is spent; ``first`` goes upstream before the rest. ``upstream_ends``
        (a plain request): done as soon as the upstream's answer ends."""
        idle = trio.CancelScope(deadline=trio.current_time() + self.policy.idle_timeout_s)
        with idle:
            if first and self._count(len(first), idle):
                await upstream.send_all(first)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, upstream, idle, False)
                nursery.start_soon(self._pump, upstream, client, idle, upstream_ends)

    async def _pump(self, source: Stream, sink: Stream, idle: trio.CancelScope, last: bool) -> None:
        try:
            while data := await source.receive_some(_CHUNK):
                if not self._count(len(data), idle):
                    return
                idle.deadline = trio.current_time() + self.policy.idle_timeout_s
                await sink.send_all(data)
            if last:
                idle.cancel()
            else:
                await sink.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            idle.cancel()

    def _count(self, n: int, idle: trio.CancelScope) -> bool:
        """Add ``n`` bytes; False (and every copy of this connection stopped) past the budget."""
        self.bytes += n
        if self.bytes <= self.policy.max_bytes:
            return True
        if not self._over_bytes:
            self._over_bytes = True
            self._refuse(0, "byte_limit", f"over {self.policy.max_bytes} bytes through the proxy")
        idle.cancel()
        return False


async def _read_head(stream: Stream) -> tuple[bytes, bytes]:
    """The request head (up to its blank line) and what came after it."""
    buf = bytearray()
    while (end := buf.find(b"\r\n\r\n")) < 0:
        if len(buf) > MAX_HEAD:
            raise BadRequest(f"request head longer than {MAX_HEAD} bytes")
        data = await stream.receive_some(4096)
        if not data:
            raise trio.BrokenResourceError("the client closed before its request head ended")
        buf += data
    return bytes(buf[: end + 4]), bytes(buf[end + 4 :])


async def _answer(stream: Stream, status: int, refusal: Refusal) -> None:
    if status == 0:
        return
    try:
        with trio.move_on_after(5):
            await stream.send_all(refusal_response(status, refusal))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


@asynccontextmanager
async def running_proxy(
    policy: ProxyPolicy, *, resolver: Resolver | None = None, task_id: str | None = None
) -> AsyncIterator[EgressProxy]:
    """A proxy serving on a socket in a fresh private directory for the ``async with`` body.

    Cancellation (or leaving the body): the proxy stops, its connections are closed and the
    directory removed (shielded)."""
    directory = await trio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="agentd-proxy-"))
    try:
        proxy = EgressProxy(Path(directory) / "proxy.sock", policy, resolver=resolver, task_id=task_id)
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)
            try:
                yield proxy
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, directory, True)
