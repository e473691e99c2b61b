"""Cutting access closes its ``/ws`` at once on every daemon sharing the store.

Two whole daemons on one PostgreSQL database (as tests/test_cluster_state.py starts them), each
with its token re-check an hour away (``ws_reauth_interval_s``), so only the revocation's own
notice (``store.Revoked``, through the store's change feed) can close a socket on the other
daemon in time: a share link revoked through A closes its ``/ws`` on B; a token signed out
through A closes that token's ``/ws`` on B (the user's other token stays); ``agentctl revoke``
on A closes the user's ``/ws`` and those of the user's share links on B. On one daemon (SQLite),
a sign-out closes its own ``/ws`` at once too. Every wait is on the close itself (bounded by
``closed_with``), never a sleep.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio
from cryptography.fernet import Fernet
from trio_websocket import open_websocket_url

from daemon.store import RemoteNotice, Revoked
from daemon.web.session import CLOSE_AUTH_FAILED
from daemon.web.share_session import SHARE_GONE

from .fakes.phone import Server, recv_json, running_daemon, send_json
from .test_control_cli import agentctl
from .test_share_links_ws import closed_with, tasks_and_link

KEY = Fernet.generate_key().decode()
HOUR = 3600.0  # the re-check: never within a test


def test_a_revocation_notice_reads_back_and_is_no_task_notice():
    for revoked in (Revoked("share", "sh_0123abcd", 7), Revoked("token", "ab" * 32, 1)):
        payload = "node-a " + revoked.notice
        assert Revoked.parse(payload) == ("node-a", revoked)
        assert RemoteNotice.parse(payload) is None  # a task event's reader skips it
    assert Revoked.parse("node-a tsk_1 1 2 s") is None
    assert Revoked.parse("node-a revoked session 1 x") is None  # an unknown kind


@asynccontextmanager
async def two_daemons(pg_dsn: str, tmp_path) -> AsyncIterator[tuple[Server, Server]]:
    config = dict(store=pg_dsn, secret_keys=[KEY], ws_reauth_interval_s=HOUR)
    async with running_daemon(tmp_path / "a", **config) as a, running_daemon(tmp_path / "b", **config) as b:
        yield a, b


async def following(ws, task_id: str) -> None:
    """Subscribe ``ws`` to ``task_id`` and read its first event: the session is open."""
    await send_json(ws, {"type": "subscribe", "task_id": task_id, "after": 0})
    assert (await recv_json(ws))["event"] == "task.created"


async def still_open(ws) -> None:
    await send_json(ws, {"type": "ping"})
    while (await recv_json(ws))["type"] != "pong":
        pass


def share_ws(server: Server, share_token: str):
    headers = [(b"Authorization", f"Share {share_token}".encode())]
    return open_websocket_url(server.ws_url, extra_headers=headers)


async def test_a_link_revoked_through_one_daemon_closes_its_websocket_on_another(pg_dsn, tmp_path):
    async with two_daemons(pg_dsn, tmp_path) as (a, b):
        _, token = await a.user("alice")
        shared, _, made = await tasks_and_link(a, token)
        async with a.client(token) as http:
            kept = (await http.post(f"/api/tasks/{shared}/shares", json={})).json()
        async with share_ws(b, made["token"]) as ws, share_ws(b, kept["token"]) as other:
            await following(ws, shared)
            await following(other, shared)
            async with a.client(token) as http:
                gone = await http.delete(f"/api/tasks/{shared}/shares/{made['id']}")
                assert gone.status_code == 204
            assert await closed_with(ws) == (CLOSE_AUTH_FAILED, "share link revoked")
            await still_open(other)  # the task's other link stays open


async def test_a_token_signed_out_through_one_daemon_closes_its_websocket_on_another(pg_dsn, tmp_path):
    async with two_daemons(pg_dsn, tmp_path) as (a, b):
        user, token = await a.user("alice")
        _, second = await a.user("alice")  # the same account's other device
        shared, _, _ = await tasks_and_link(a, token)
        async with b.ws(token) as ws, b.ws(second) as other:
            await following(ws, shared)
            await following(other, shared)
            async with a.client(token) as http:
                assert (await http.post("/api/auth/signout")).status_code < 300
            assert await closed_with(ws) == (CLOSE_AUTH_FAILED, "token expired or revoked")
            await still_open(other)  # only the token signed out


async def test_agentctl_revoke_on_one_daemon_closes_the_users_websockets_on_another(pg_dsn, tmp_path):
    async with two_daemons(pg_dsn, tmp_path) as (a, b):
        _, token = await a.user("alice")
        _, bobs = await a.user("bob")
        shared, _, made = await tasks_and_link(a, token)
        bob_task, _, _ = await tasks_and_link(a, bobs)
        async with AsyncExitStack() as stack:
            ws = await stack.enter_async_context(b.ws(token))
            link = await stack.enter_async_context(share_ws(b, made["token"]))
            bob = await stack.enter_async_context(b.ws(bobs))
            await following(ws, shared)
            await following(link, shared)
            await following(bob, bob_task)
            socket = str(a.daemon.settings.control_socket)
            done = await agentctl("--socket", socket, "revoke", "alice")
            assert done.returncode == 0, done.stderr.decode()
            assert await closed_with(ws) == (CLOSE_AUTH_FAILED, "token expired or revoked")
            assert await closed_with(link) == (CLOSE_AUTH_FAILED, SHARE_GONE)  # alice's link
            await still_open(bob)


async def test_signing_out_closes_the_tokens_websocket_at_once_on_one_daemon(tmp_path):
    async with running_daemon(tmp_path, ws_reauth_interval_s=HOUR) as server:
        _, token = await server.user("alice")
        shared, _, _ = await tasks_and_link(server, token)
        async with server.ws(token) as ws:
            await following(ws, shared)
            with trio.fail_after(5):
                async with server.client(token) as http:
                    assert (await http.post("/api/auth/signout")).status_code < 300
            assert await closed_with(ws) == (CLOSE_AUTH_FAILED, "token expired or revoked")
