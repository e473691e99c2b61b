"""What the HTTP port allows one client, and the daemon's open-file limit that the caps need.

``ConnectionCaps``: open connections, in total and per client address (an IPv4 address, an
IPv6 /64: what one host usually holds). ``RequestDeadline``: the deadline of the request a
connection is receiving, head and body, whatever pace the bytes come at. ``ensure_fd_limit``:
at start, the soft ``RLIMIT_NOFILE`` raised to what the connection cap needs, or a warning.
``canned``: the few answers the listener writes itself, before or instead of Hypercorn.
Everything here is synchronous and does no I/O but ``setrlimit``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import resource
import socket
from collections.abc import Hashable
from typing import Any

import trio

log = logging.getLogger(__name__)

# Files the daemon holds besides its HTTP connections: the store and its threads, the control
# socket and its clients, each running task's pipes, git and shell processes.
FD_HEADROOM = 512


def canned(status: int, reason: str, code: str, message: str, *extra: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, with the API's error body."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def client_key(family: int, address: Any) -> str | None:
    """Whose connection this is, for the per-address cap; None: not capped (a unix socket)."""
    if family == socket.AF_INET:
        return str(address[0])
    if family != socket.AF_INET6:
        return None
    ip = ipaddress.IPv6Address(str(address[0]).split("%", 1)[0])
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False).network_address) + "/64"


class ConnectionCaps:
    """Open connections, at most ``total`` and ``per_address`` (0: none) per client key."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total, self.per_address = total, per_address
        self.open = 0
        self.by_key: dict[str, int] = {}

    def admit(self, key: str | None) -> str | None:
        """Count one more connection from ``key``; or, at a cap, leave it uncounted and say
        which cap (a message for the log and the client)."""
        if self.open >= self.total:
            return f"{self.open} connections are open (http_max_connections)"
        if key is not None and self.per_address:
            held = self.by_key.get(key, 0)
            if held >= self.per_address:
                return f"{held} connections from {key} (http_max_connections_per_address)"
            self.by_key[key] = held + 1
        self.open += 1
        return None

    def release(self, key: str | None) -> None:
        """One connection ``admit`` counted is closed."""
        self.open -= 1
        if key is not None and self.per_address:
            left = self.by_key[key] - 1
            if left:
                self.by_key[key] = left
            else:
                del self.by_key[key]


class RequestDeadline:
    """The deadline of one connection's request in progress, on ``scope`` (its cancel scope).

    A request must be received whole, head and body, within ``timeout`` s of the moment the
    connection waits for it (it was accepted, or the previous response ended: ``waiting``).
    Once the head is in (``began``), the request keeps that deadline until its body is
    (``received``); what the app then takes to answer does not count. HTTP/2 has several
    requests at once: the earliest deadline applies. Must run on the Trio thread.
    """

    def __init__(self, scope: trio.CancelScope, timeout: float, waiting_since: float) -> None:
        self.scope, self.timeout = scope, timeout
        self.waiting_since: float | None = waiting_since
        self.requests: dict[Hashable, float] = {}
        self._update()

    def waiting(self) -> None:
        self.waiting_since = trio.current_time()
        self._update()

    def began(self, key: Hashable) -> None:
        start = self.waiting_since if self.waiting_since is not None else trio.current_time()
        self.waiting_since = None
        self.requests[key] = start + self.timeout
        self._update()

    def received(self, key: Hashable) -> None:
        if self.requests.pop(key, None) is not None:
            self._update()

    def upgraded(self) -> None:
        """The connection became a WebSocket (Hypercorn's): no request deadline any more."""
        self.waiting_since = None
        self._update()

    def _update(self) -> None:
        deadline = min(self.requests.values(), default=math.inf)
        if self.waiting_since is not None:
            deadline = min(deadline, self.waiting_since + self.timeout)
        self.scope.deadline = deadline


def ensure_fd_limit(connections: int) -> int:
    """Make room for ``connections`` open sockets plus ``FD_HEADROOM``: raise the soft
    ``RLIMIT_NOFILE`` towards that (never above the hard limit), and log a warning naming the
    fix if it stays below. Returns the soft limit in force."""
    need = connections + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return soft
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as error:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, error)
        else:
            log.info("raised the open-file limit (RLIMIT_NOFILE) from %d to %d", soft, target)
            soft = target
    if soft < need:
        shown = "unlimited" if hard == resource.RLIM_INFINITY else hard
        log.warning(
            "the open-file limit (RLIMIT_NOFILE) is %d (hard limit %s), below the %d that "
            "http_max_connections = %d needs: raise LimitNOFILE= in the systemd unit (or ulimit "
            "-n), or lower http_max_connections; until then, connections beyond the limit wait "
            "in the listen backlog",
            soft,
            shown,
            need,
            connections,
        )
    return soft
