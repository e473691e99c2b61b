"""A package registry on 127.0.0.1: a PEP 503 simple index holding one pure-Python wheel.

``tinypkg`` 1.0 (``import tinypkg; tinypkg.VALUE``) is built here with ``zipfile`` (no network,
no ``wheel`` package): its ``METADATA``, ``WHEEL`` and ``RECORD`` as pip reads them. The tests
reach the registry through the egress proxy under a name of their own (``registry.test``), which
the proxy's injected resolver maps to 127.0.0.1; ``requests`` records what arrived.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import zipfile
from dataclasses import dataclass, field
from email.message import Message

from .threaded_http import QuietHandler, ThreadedHTTPFake

PACKAGE = "tinypkg"
VERSION = "1.0"
VALUE = "installed from the fake registry"
WHEEL_NAME = f"{PACKAGE}-{VERSION}-py3-none-any.whl"


def build_wheel() -> bytes:
    """The bytes of ``tinypkg-1.0-py3-none-any.whl``."""
    dist = f"{PACKAGE}-{VERSION}.dist-info"
    files = {
        f"{PACKAGE}/__init__.py": f"VALUE = {VALUE!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {VERSION}\n",
        f"{dist}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: agentd-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, text in files.items():
            wheel.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), text)
    return out.getvalue()


@dataclass(frozen=True)
class Seen:
    """One request as the registry got it."""

    method: str
    path: str
    headers: Message = field(repr=False)


class _Handler(QuietHandler):
    owner: FakeRegistry

    def _handle(self) -> None:
        registry = self.owner
        with registry.lock:
            registry.requests.append(Seen(self.command, self.path, self.headers))
        path = self.path.split("?", 1)[0]
        if path in ("/simple", "/simple/"):
            self._send(200, "text/html", f'<a href="/simple/{PACKAGE}/">{PACKAGE}</a>\n'.encode())
        elif path in (f"/simple/{PACKAGE}", f"/simple/{PACKAGE}/"):
            link = f'<a href="/files/{WHEEL_NAME}#sha256={registry.sha256}">{WHEEL_NAME}</a>\n'
            self._send(200, "text/html", link.encode())
        elif path == f"/files/{WHEEL_NAME}":
            self._send(200, "application/octet-stream", registry.wheel)
        else:
            self._send(404, "text/plain", b"not found\n")

    def _send(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class FakeRegistry(ThreadedHTTPFake):
    """The registry; ``with FakeRegistry() as url`` or ``nursery.start(registry.serve)``."""

    handler_class = _Handler

    def __init__(self) -> None:
        self.wheel = build_wheel()
        self.sha256 = hashlib.sha256(self.wheel).hexdigest()
        self.requests: list[Seen] = []
        self.lock = threading.Lock()

        self.port = 0  # once started, and after

    def start(self) -> str:
        url = super().start()
        assert self._httpd is not None
        self.port = int(self._httpd.server_address[1])
        return url
