"""The WebSocket end to end: the real daemon on a free port, trio-websocket clients, real clock.

Timeouts here are short settings (auth 0.2 s, re-check 0.2 s); nothing sleeps to wait for
something to happen: every wait is on a message or an event.
"""

from __future__ import annotations

import time

import pytest
import trio
from trio_websocket import ConnectionClosed

from daemon.states import TaskStatus
from daemon.store import NewEvent
from daemon.supervisor import RunResult

from .fakes.phone import recv_json, running_daemon, send_json
from .helpers import wait_status


class Pump:
    """A runner that appends ``count`` events, a few at a time, while clients come and go."""

    def __init__(self, count: int, *, every: float = 0.002, size: int = 0) -> None:
        self.count, self.every, self.size = count, every, size
        self.go = trio.Event()

    async def run(self, ctx) -> RunResult:
        await self.go.wait()
        for i in range(self.count):
            await ctx.store.append_events(
                ctx.task.id, [NewEvent("agent.text", {"i": i, "pad": "x" * self.size})]
            )
            if self.every:
                await trio.sleep(self.every)
        return RunResult()


async def submit(server, token: str) -> str:
    async with server.client(token) as http:
        response = await http.post("/api/tasks", json={"repo_url": "file:///repo", "prompt": "go"})
        assert response.status_code == 201, response.text
        return response.json()["id"]


async def read_until_finished(ws, held: list[int]) -> None:
    while True:
        message = await recv_json(ws)
        assert message["type"] == "event", message
        held.append(message["seq"])
        if message["event"] == "task.finished":
            return


async def test_resume_across_a_forced_disconnect_while_events_are_produced(tmp_path):
    pump = Pump(400)
    async with running_daemon(tmp_path, pump) as server:
        _, token = await server.user("alice")
        task_id = await submit(server, token)
        held: list[int] = []
        async with server.ws(token) as ws:
            await send_json(ws, {"type": "subscribe", "task_id": task_id, "after": 0})
            pump.go.set()
            while len(held) < 100:
                message = await recv_json(ws)
                held.append(message["seq"])
            # Cut the TCP connection under the WebSocket, no close handshake (a phone in a tunnel).
            await ws._stream.aclose()
        async with server.ws(token) as ws:
            await send_json(ws, {"type": "subscribe", "task_id": task_id, "after": held[-1]})
            await read_until_finished(ws, held)
        task = await server.store.get_task(task_id)
        assert held == list(range(1, task.last_seq + 1))
        assert task.last_seq > 400


async def test_a_slow_consumer_gets_resync_and_server_memory_stays_bounded(tmp_path):
    # 300 events of 20 kB: far more than the socket buffers and the 16-message queue hold.
    pump = Pump(300, every=0, size=20_000)
    async with running_daemon(tmp_path, pump, ws_queue_limit=16) as server:
        _, token = await server.user("alice")
        task_id = await submit(server, token)
        async with server.ws(token, message_queue_size=0) as ws:
            await send_json(ws, {"type": "subscribe", "task_id": task_id, "after": 0})
            pump.go.set()
            with trio.fail_after(20):
                await wait_status(server.daemon.hub, task_id, TaskStatus.SUCCEEDED)
            (session,) = server.web.sessions
            assert session.resyncs >= 1
            assert session.max_queued <= 16
            held: list[int] = []
            while True:
                message = await recv_json(ws)
                if message["type"] == "resync":
                    assert message == {"type": "resync", "task_id": task_id, "after": len(held)}
                    break
                held.append(message["seq"])
            # The client picks up where it was: nothing lost, nothing twice.
            await send_json(ws, {"type": "subscribe", "task_id": task_id, "after": message["after"]})
            await read_until_finished(ws, held)
        assert held == list(range(1, (await server.store.get_task(task_id)).last_seq + 1))


async def test_auth_by_first_message_and_by_header(tmp_path):
    async with running_daemon(tmp_path, ws_auth_timeout_s=5) as server:
        _, token = await server.user("alice")
        async with server.ws() as ws:
            await send_json(ws, {"type": "auth", "token": token})
            await send_json(ws, {"type": "ping"})
            assert await recv_json(ws) == {"type": "pong"}
        async with server.ws(token) as ws:
            await send_json(ws, {"type": "ping"})
            assert await recv_json(ws) == {"type": "pong"}


@pytest.mark.parametrize("first", [None, {"type": "auth", "token": "agentd_nope"}, {"type": "ping"}])
async def test_no_valid_auth_closes_with_a_code_that_says_why(tmp_path, first):
    async with running_daemon(tmp_path, ws_auth_timeout_s=0.2) as server:
        async with server.ws() as ws:
            if first is not None:
                await send_json(ws, first)
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws)
        expected = 1008 if first == {"type": "ping"} else 4401
        assert closed.value.reason.code == expected


async def test_a_bad_header_token_closes_4401(tmp_path):
    async with running_daemon(tmp_path) as server:
        async with server.ws("agentd_forged") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws)
        assert closed.value.reason.code == 4401


@pytest.mark.parametrize("how", ["revoked", "expired"])
async def test_revocation_and_expiry_close_an_open_websocket(tmp_path, how):
    async with running_daemon(tmp_path, ws_reauth_interval_s=0.2) as server:
        expires_at = time.time() + 0.5 if how == "expired" else None
        _, token = await server.user("alice", expires_at=expires_at)
        async with server.ws(token) as ws:
            await send_json(ws, {"type": "ping"})
            assert await recv_json(ws) == {"type": "pong"}
            if how == "revoked":
                await server.store.revoke_user("alice")
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await recv_json(ws)
        assert closed.value.reason.code == 4401


async def test_drain_closes_websockets_with_going_away(tmp_path):
    pump = Pump(0)  # one task keeps running, so the drain lasts until it is let go
    async with running_daemon(tmp_path, pump, grace_period_s=30) as server:
        _, token = await server.user("alice")
        task_id = await submit(server, token)
        with trio.fail_after(5):
            await wait_status(server.daemon.hub, task_id, TaskStatus.RUNNING)
        async with server.ws(token) as ws:
            await send_json(ws, {"type": "ping"})
            assert await recv_json(ws) == {"type": "pong"}
            server.daemon.request_stop()
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws)
        assert closed.value.reason.code == 1001
        async with server.client() as http:
            assert (await http.get("/readyz")).status_code == 503
        pump.go.set()


async def test_subscribe_tasks_sees_status_changes_of_own_tasks_only(tmp_path):
    pump = Pump(1)
    async with running_daemon(tmp_path, pump) as server:
        _, alice = await server.user("alice")
        _, bob = await server.user("bob")
        async with server.ws(alice) as ws_a, server.ws(bob) as ws_b:
            for ws in (ws_a, ws_b):
                await send_json(ws, {"type": "subscribe_tasks"})
                await send_json(ws, {"type": "ping"})
                assert await recv_json(ws) == {"type": "pong"}
            task_id = await submit(server, alice)
            pump.go.set()
            seen = []
            while not seen or seen[-1] != "task.finished":
                message = await recv_json(ws_a)
                assert message["task_id"] == task_id
                seen.append(message["event"])
            assert seen[:2] == ["task.created", "task.status"] and "agent.text" not in seen
            await send_json(ws_b, {"type": "ping"})
            assert await recv_json(ws_b) == {"type": "pong"}  # nothing of alice's came first


async def test_text_deltas_are_coalesced_per_task(tmp_path):
    async with running_daemon(tmp_path, Pump(0), ws_delta_interval_s=0.5) as server:
        _, token = await server.user("alice")
        task_id = await submit(server, token)
        with trio.fail_after(5):
            await wait_status(server.daemon.hub, task_id, TaskStatus.RUNNING)
        async with server.ws(token) as ws:
            await send_json(ws, {"type": "subscribe", "task_id": task_id, "after": 3})
            # Once a stored event made after the subscribe arrives, the subscription is live.
            await server.store.append_events(task_id, [NewEvent("agent.text", {"text": "hi"})])
            assert (await recv_json(ws))["seq"] == 4
            for i in range(100):
                server.daemon.hub.publish_ephemeral(task_id, "agent.text_delta", {"text": f"{i},"})
            first = await recv_json(ws)
            second = await recv_json(ws)
        assert first["event"] == second["event"] == "agent.text_delta"
        assert first["seq"] is None
        assert first["data"]["text"] + second["data"]["text"] == "".join(f"{i}," for i in range(100))
