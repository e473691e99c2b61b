"""A fake phone: the real daemon in-process on a free port, plus HTTP and WebSocket clients.

``async with running_daemon(tmp_path, runner, **settings) as server`` starts ``Daemon.serve``
(store, supervisor, the HTTP port with Hypercorn and ``/ws``, control socket) and stops it in
order at the end.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import trio
from trio_websocket import open_websocket_url

from daemon.config import Settings
from daemon.service import Daemon
from daemon.supervisor.runner import NoopRunner
from daemon.tokens import hash_token, new_token


@dataclass
class Server:
    daemon: Daemon
    url: str

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/ws"

    @property
    def store(self):
        return self.daemon.store

    @property
    def web(self):
        """The app's shared state (``WebState``: sessions, fan-out, limiters)."""
        return self.daemon.web

    async def user(self, login: str, *, expires_at: float | None = None) -> tuple[Any, str]:
        user = await self.store.upsert_user(login)
        token = new_token()
        await self.store.add_token(user.id, hash_token(token), expires_at=expires_at)
        return user, token

    def client(self, token: str | None = None, **kwargs: Any) -> httpx2.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kwargs.pop("headers", {}))
        return httpx2.AsyncClient(base_url=self.url, headers=headers, timeout=10.0, **kwargs)

    def ws(self, token: str | None = None, **kwargs: Any):
        headers = [(b"Authorization", f"Bearer {token}".encode())] if token else []
        return open_websocket_url(self.ws_url, extra_headers=headers, **kwargs)


# The store daemons started here use: None (SQLite in their data dir) unless the test's backend
# is PostgreSQL (tests/backends.py sets it to the test's database).
STORE_URL: str | None = None


@asynccontextmanager
async def running_daemon(tmp_path: Path, runner: Any = None, **overrides: Any) -> AsyncIterator[Server]:
    sock_dir = Path(tempfile.mkdtemp(prefix="agentd-", dir="/tmp"))  # unix paths: <= 108 bytes
    fields: dict[str, Any] = dict(
        data_dir=tmp_path / "data",
        http="127.0.0.1:0",
        control_socket=sock_dir / "c.sock",
        allow_local_remotes=True,
        grace_period_s=0.0,
    )
    fields.update(overrides)
    fields.setdefault("store", STORE_URL)
    daemon = Daemon(Settings(**fields), runner=runner or NoopRunner())
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(daemon.serve)
        server = Server(daemon, urls[0])
        try:
            yield server
        finally:
            daemon.request_stop()
            daemon.request_stop()  # skip the grace period


async def recv_json(ws, timeout: float = 5.0) -> dict[str, Any]:
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())


async def send_json(ws, message: dict[str, Any]) -> None:
    await ws.send_message(json.dumps(message))
