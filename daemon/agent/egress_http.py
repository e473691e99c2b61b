"""The egress proxy's HTTP/1.1, without I/O (``egress_proxy.py`` does the sockets): a request
head parsed, a plain ``http://`` request rewritten for upstream (origin form, ``Connection:
close``, no hop-by-hop or ``Proxy-*`` headers), and the response that tells a refusal.

A malformed request raises ``BadRequest``; the proxy refuses it with ``400`` (``bad_request``).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_HEAD",
    "BadRequest",
    "Refusal",
    "authority",
    "parse_head",
    "plain_request",
    "refusal_response",
]

MAX_HEAD = 16 * 1024
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Dropped from a forwarded plain request: hop-by-hop, or meant for the proxy alone.
_DROPPED = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "upgrade"})


@dataclass(frozen=True)
class Refusal:
    """A request the proxy did not let through: ``reason`` is a code (``not_allowed``,
    ``ip_literal``, ``private_address``, ``port_not_allowed``, ``bad_request``,
    ``too_many_connections``, ``byte_limit``, ``unresolved``, ``connect_failed``)."""

    host: str
    port: int | None
    reason: str
    detail: str

    def as_event(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "reason": self.reason, "detail": self.detail}


class BadRequest(Exception):
    """A request the proxy cannot read: ``detail`` says why; ``host``, the host it named, if any."""

    def __init__(self, detail: str, host: str = "") -> None:
        super().__init__(detail)
        self.detail, self.host = detail, host


def parse_head(head: bytes) -> tuple[str, str, list[tuple[str, str]]]:
    """The method, target and headers of a request ``head`` (up to its blank line)."""
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    bad = None
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        bad = "a malformed request line"
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name) or any(c in value for c in "\r\n\0"):
            bad = "a malformed header line"
        headers.append((name, value.strip()))
    if bad:
        raise BadRequest(f"{bad}; send CONNECT host:port or an absolute http:// URL")
    return parts[0], parts[1], headers


def authority(target: str) -> tuple[str, int]:
    """The host and port of a CONNECT's ``host:port``."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
        raise BadRequest(f"CONNECT needs host:port, got {target[:200]!r}")
    return host, int(port)


def plain_request(method: str, target: str, headers: list[tuple[str, str]]) -> tuple[str, int, bytes]:
    """The host, port and head to send upstream for a plain ``http://`` request."""
    try:
        url = urllib.parse.urlsplit(target)
        port = url.port or 80
    except ValueError:
        raise BadRequest(f"not a URL: {target[:200]!r}") from None
    if url.scheme.lower() != "http" or not url.hostname or url.username is not None:
        detail = "only absolute http:// URLs without credentials are proxied (use CONNECT for https)"
        raise BadRequest(detail, url.hostname or "")
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    kept = [(n, v) for n, v in headers if n.lower() not in _DROPPED and n.lower() != "host"]
    lines = [f"{method} {path} HTTP/1.1", f"Host: {url.netloc}", *(f"{n}: {v}" for n, v in kept)]
    lines.append("Connection: close")
    return url.hostname, port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def refusal_response(status: int, refusal: Refusal) -> bytes:
    """The whole response telling ``refusal`` (``status``: 400, 403, 429 or 502)."""
    phrase = {400: "Bad Request", 403: "Forbidden", 429: "Too Many Requests", 502: "Bad Gateway"}[status]
    body = f"agentd egress proxy: {refusal.detail}\n".encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nX-Agentd-Refused: {refusal.reason}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
