"""The operator policy of ``/ws`` (what the operator view follows tasks over), end to end: the real
daemon on 127.0.0.1, trio-websocket clients authenticating with a first message as a browser
does, real clock, every wait on a message.

An operator follows any task and ``subscribe_tasks`` gets every user's status events; anyone
else keeps the phone's rules (own tasks only, ``not_found`` for the rest); a revoked token or a
withdrawn operator flag closes the connection; a drain closes it with 1001.
"""

from __future__ import annotations

import pytest
import trio
from trio_websocket import ConnectionClosed

from daemon.store import NewEvent

from .fakes.phone import recv_json, running_daemon, send_json
from .test_admin_api import MISSING, operator, submit


@pytest.fixture
async def setup(tmp_path):
    """A daemon whose tasks stay queued, with a task of alice's, an operator and bob."""
    async with running_daemon(tmp_path, ws_reauth_interval_s=0.2) as server:
        server.daemon.supervisor.drain()
        alice_user, alice = await server.user("alice")
        _, bob = await server.user("bob")
        root = await operator(server)
        task_id = await submit(server, alice)
        yield server, root, bob, task_id, alice_user


async def signed_in(ws, token: str) -> None:
    """Authenticate by first message, as the page does; the pong says it was accepted."""
    await send_json(ws, {"type": "auth", "token": token})
    await send_json(ws, {"type": "ping"})
    assert await recv_json(ws) == {"type": "pong"}


@pytest.mark.parametrize("who", ["nobody", "forged"])
async def test_no_valid_token_closes_4401(setup, who):
    server, *_ = setup
    async with server.ws() as ws:
        if who == "forged":
            await send_json(ws, {"type": "auth", "token": "agentd_forged"})
        else:
            await send_json(ws, {"type": "subscribe_tasks"})  # not an auth message: 1008
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(ws)
    assert closed.value.reason.code == (4401 if who == "forged" else 1008)


async def test_a_non_operator_follows_nothing_but_their_own(setup):
    server, _, bob, alices, _ = setup
    async with server.ws() as ws:
        await signed_in(ws, bob)
        await send_json(ws, {"type": "subscribe_tasks"})
        for task_id in (alices, MISSING):  # another's task and no task: the same answer
            await send_json(ws, {"type": "subscribe", "task_id": task_id, "after": 0})
            assert await recv_json(ws) == {
                "type": "error",
                "code": "not_found",
                "message": f"no task {task_id}",
                "task_id": task_id,
            }
        await server.daemon.supervisor.cancel(alices)  # alice's status events: not bob's
        bobs = await submit(server, bob)
        feed = [await recv_json(ws) for _ in range(2)]
        assert [(e["task_id"], e["event"]) for e in feed] == [(bobs, "task.created"), (bobs, "task.status")]


async def test_an_operator_follows_any_task_and_every_status_change_live(setup):
    server, root, bob, alices, alice = setup
    async with server.ws() as ws:
        await signed_in(ws, root)
        await send_json(ws, {"type": "subscribe_tasks"})
        await send_json(ws, {"type": "subscribe", "task_id": alices, "after": 0})
        last_seq = (await server.store.get_task(alices)).last_seq
        replay = [await recv_json(ws) for _ in range(last_seq)]  # alice's task, not root's
        assert [(e["task_id"], e["seq"]) for e in replay] == [(alices, n + 1) for n in range(last_seq)]
        assert replay[0]["event"] == "task.created" and replay[0]["data"]["user_id"] == alice.id
        await server.store.append_events(alices, [NewEvent("agent.text", {"text": "live"})])
        live = await recv_json(ws)
        assert (live["seq"], live["data"]) == (last_seq + 1, {"text": "live"})
        bobs = await submit(server, bob)  # another user's new task, through the feed
        feed = [await recv_json(ws) for _ in range(2)]
        assert [(e["task_id"], e["event"]) for e in feed] == [(bobs, "task.created"), (bobs, "task.status")]
        # The followed task's status events come once, through its subscription only.
        await server.daemon.supervisor.cancel(alices)
        ending = [await recv_json(ws) for _ in range(2)]
        assert [(e["task_id"], e["seq"], e["event"]) for e in ending] == [
            (alices, last_seq + 2, "task.status"),
            (alices, last_seq + 3, "task.finished"),
        ]
        await send_json(ws, {"type": "subscribe", "task_id": MISSING})
        assert (await recv_json(ws))["code"] == "not_found"
        await send_json(ws, {"type": "ping"})
        assert await recv_json(ws) == {"type": "pong"}
        server.daemon.request_stop()  # a draining daemon says goodbye
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await recv_json(ws)
    assert closed.value.reason.code == 1001


@pytest.mark.parametrize(("how", "code"), [("revoked", 4401), ("no longer an operator", 4403)])
async def test_an_operator_connection_closes_when_the_token_or_the_flag_goes(setup, how, code):
    server, root, *_ = setup
    async with server.ws() as ws:
        await signed_in(ws, root)
        await send_json(ws, {"type": "subscribe_tasks"})
        if how == "revoked":
            await server.store.revoke_user("root")
        else:
            await server.store.upsert_user("root", is_operator=False)
        with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
            while True:
                await recv_json(ws)
    assert closed.value.reason.code == code
