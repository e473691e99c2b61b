"""A webhook receiver for agentd, standard library only: ``python3 webhook_receiver.py --port 8081``.

It checks each ``POST /hook`` as the README's "Notifications and webhooks" says: the
``Agentd-Signature: t=...,v1=...`` HMAC-SHA256 over ``f"{t}.{body}"`` with the webhook's secret
(401 if wrong), a ``t`` more than 5 minutes from this clock (401: a captured request replayed
later), and an ``Agentd-Delivery`` id seen before (200, dropped: retries and redeliveries reuse
it). For each delivery it accepts it prints one line, ``<kind> <task id> <task status>``, and
answers 204 at once; slow work belongs in a queue, not here, or agentd times out and retries.

The secret comes from the environment (``WEBHOOK_SECRET``) or a file (``--secret-file``), never
from the command line, where ``ps`` shows it to everyone. It listens on 127.0.0.1 unless told.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

TOLERANCE_S = 300
SEEN_CAP = 10_000  # delivery ids remembered, oldest forgotten first: memory stays bounded
MAX_BODY = 1 << 20


def verify(secret: str, header: str, body: bytes, now: float, tolerance_s: float = TOLERANCE_S) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` at a ``t`` within ``tolerance_s`` of ``now``."""
    parts = [p.split("=", 1) for p in header.split(",") if "=" in p]
    t = next((int(v) for k, v in parts if k.strip() == "t" and v.isdigit()), None)
    if t is None or abs(now - t) > tolerance_s:
        return False
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(mac, v) for k, v in parts if k.strip() == "v1")


class Receiver(HTTPServer):
    def __init__(self, address: tuple[str, int], secret: str) -> None:
        super().__init__(address, Hook)
        self.secret = secret
        self.seen: OrderedDict[str, None] = OrderedDict()

    def first_time(self, delivery_id: str) -> bool:
        """Remember ``delivery_id``; False when it was seen already."""
        if delivery_id in self.seen:
            return False
        self.seen[delivery_id] = None
        if len(self.seen) > SEEN_CAP:
            self.seen.popitem(last=False)
        return True


class Hook(BaseHTTPRequestHandler):
    server: Receiver
    timeout = 10  # a client that stalls mid-request does not hold the (single) thread

    def do_POST(self) -> None:
        given = self.headers.get("Content-Length", "")
        length = int(given) if given.isdigit() else 0
        if self.path != "/hook" or not 0 < length <= MAX_BODY:
            self.answer(404 if self.path != "/hook" else 400, "not a delivery")
            return
        body = self.rfile.read(length)
        if not verify(self.server.secret, self.headers.get("Agentd-Signature", ""), body, time.time()):
            self.answer(401, "bad or stale signature")
            return
        delivery_id = self.headers.get("Agentd-Delivery", "")
        if not self.server.first_time(delivery_id):
            self.answer(200, f"repeated delivery {delivery_id}, dropped")
            return
        payload = json.loads(body)
        task = payload.get("task") or {}
        # Printed before answering: once agentd has its 2xx, the line is out.
        print(payload.get("kind"), task.get("id"), task.get("status"), flush=True)
        self.answer(204, None)

    def answer(self, status: int, why: str | None) -> None:
        if why is not None:
            print(f"{status}: {why}", file=sys.stderr, flush=True)
        self.send_response_only(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per delivery on stdout is the whole output


def read_secret(secret_file: Path | None) -> str:
    if secret_file is not None:
        return secret_file.read_text().strip()
    secret = os.environ.get("WEBHOOK_SECRET", "").strip()
    if not secret:
        sys.exit("webhook_receiver: set WEBHOOK_SECRET or pass --secret-file FILE (the webhook's secret)")
    return secret


def main() -> None:
    parser = argparse.ArgumentParser(description="Receive and verify agentd webhook deliveries.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8081, help="port (default 8081)")
    parser.add_argument("--secret-file", type=Path, help="a file holding the secret (else $WEBHOOK_SECRET)")
    ns = parser.parse_args()
    server = Receiver((ns.host, ns.port), read_secret(ns.secret_file))
    print(f"listening on http://{ns.host}:{ns.port}/hook", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
