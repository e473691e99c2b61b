"""Share links on ``/ws``: a real daemon, trio-websocket clients; and the session's expiry timer
on trio's mock clock.

A share link's connection (``{"type":"auth","share":TOKEN}``, or ``Authorization: Share``)
follows its one task live; any other task is ``not_found`` exactly as an unknown one is;
``subscribe_tasks`` is ``not_allowed``; a revocation closes it at once and the link's expiry at
that instant, both with 4401. A revocation by ``agentctl unshare`` (the control socket) closes
it at once too: both front-ends go through ``usecases.shares.revoke_share``, which tells the web
side (``Services.revoked``); the periodic re-check is not what closes it.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, open_websocket_url

from daemon.states import TaskStatus
from daemon.store import NewEvent
from daemon.supervisor import RunResult
from daemon.tokens import hash_token
from daemon.usecases.policy import Viewer
from daemon.usecases.shares import SHARE_TOKEN_PREFIX, Shared
from daemon.web.fanout import Fanout
from daemon.web.session import CLOSE_AUTH_FAILED, Session, State
from daemon.web.share_session import close_revoked

from .fakes.phone import recv_json, running_daemon, send_json
from .helpers import Wakeup, wait_status
from .test_control_cli import agentctl
from .test_share_links import TASK


class Gated:
    """A runner whose attempts wait for ``go``, run one bash tool call (``ls``) and write
    ``texts`` as agent.text events, then wait for ``finish``: a task that is running while a
    test watches."""

    def __init__(self, texts: tuple[str, ...] = ("step 0", "step 1", "step 2")) -> None:
        self.texts, self.count = texts, len(texts)
        self.go, self.finish = trio.Event(), trio.Event()

    async def run(self, ctx) -> RunResult:
        await self.go.wait()
        call = {"id": "toolu_1", "name": "bash", "input": {"command": "ls"}}
        await ctx.store.append_events(ctx.task.id, [NewEvent("agent.tool_call", call)])
        result = {"id": "toolu_1", "name": "bash", "output": "README.md", "is_error": False}
        await ctx.store.append_events(ctx.task.id, [NewEvent("agent.tool_result", result)])
        for text in self.texts:
            await ctx.store.append_events(ctx.task.id, [NewEvent("agent.text", {"text": text})])
        await self.finish.wait()
        return RunResult()


async def tasks_and_link(server, token: str) -> tuple[str, str, dict]:
    async with server.client(token) as http:
        shared = (await http.post("/api/tasks", json=TASK)).json()["id"]
        other = (await http.post("/api/tasks", json={**TASK, "prompt": "another"})).json()["id"]
        made = await http.post(f"/api/tasks/{shared}/shares", json={})
        assert made.status_code == 201, made.text
        return shared, other, made.json()


async def closed_with(ws) -> tuple[int, str]:
    """Read until the server closes the connection; its code and reason."""
    with trio.fail_after(5):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as closed:
            return closed.reason.code, closed.reason.reason


async def test_a_share_link_follows_its_running_task_live_and_nothing_else(tmp_path):
    runner = Gated()
    async with running_daemon(tmp_path, runner) as server:
        _, token = await server.user("alice")
        shared, other, made = await tasks_and_link(server, token)
        await wait_status(server.daemon.hub, shared, TaskStatus.RUNNING)
        async with server.ws() as ws:
            await send_json(ws, {"type": "auth", "share": made["token"]})
            await send_json(ws, {"type": "subscribe", "task_id": shared, "after": 0})
            for task_id in (other, "no-such-task"):
                await send_json(ws, {"type": "subscribe", "task_id": task_id, "after": 0})
            await send_json(ws, {"type": "subscribe_tasks"})
            await send_json(ws, {"type": "ping"})
            errors, events = [], []

            async def read_until(done) -> None:
                while not done():
                    message = await recv_json(ws)
                    (errors if message["type"] == "error" else events).append(message)

            def running() -> bool:
                return any(
                    e.get("event") == "task.status" and e["data"]["status"] == "running" for e in events
                )

            # The pong comes after every answer to what was sent before it (handled in order).
            await read_until(lambda: running() and any(e["type"] == "pong" for e in events))
            runner.go.set()  # live from here
            await read_until(lambda: sum(e.get("event") == "agent.text" for e in events) == runner.count)
            # The other task is refused exactly as a task that does not exist.
            refusals = {
                e["task_id"]: (e["code"], e["message"].replace(e["task_id"], "ID"))
                for e in errors
                if "task_id" in e
            }
            assert refusals[other] == refusals["no-such-task"] == ("not_found", "no task ID")
            assert [e["code"] for e in errors if "task_id" not in e] == ["not_allowed"]
            stored = [e for e in events if e["type"] == "event"]
            assert {e["task_id"] for e in stored} == {shared}
            assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))  # no gap, no duplicate
            assert [e["data"]["text"] for e in stored if e["event"] == "agent.text"] == [
                "step 0",
                "step 1",
                "step 2",
            ]
        runner.finish.set()


async def test_revoking_a_link_closes_its_open_websockets_at_once(tmp_path):
    async with running_daemon(tmp_path, Gated()) as server:
        _, token = await server.user("alice")
        shared, _, made = await tasks_and_link(server, token)
        headers = [(b"Authorization", f"Share {made['token']}".encode())]
        async with open_websocket_url(server.ws_url, extra_headers=headers) as ws, server.ws(token) as owner:
            await send_json(ws, {"type": "subscribe", "task_id": shared, "after": 0})
            assert (await recv_json(ws))["event"] == "task.created"
            await send_json(owner, {"type": "subscribe", "task_id": shared, "after": 0})
            assert (await recv_json(owner))["event"] == "task.created"
            async with server.client(token) as http:
                gone = await http.delete(f"/api/tasks/{shared}/shares/{made['id']}")
                assert gone.status_code == 204
            assert await closed_with(ws) == (CLOSE_AUTH_FAILED, "share link revoked")
            await send_json(owner, {"type": "ping"})
            while (await recv_json(owner))["type"] != "pong":  # the owner's own stays open
                pass
        # And the revoked link opens no new connection.
        async with server.ws() as ws:
            await send_json(ws, {"type": "auth", "share": made["token"]})
            assert (await closed_with(ws))[0] == CLOSE_AUTH_FAILED


async def test_agentctl_unshare_closes_the_links_open_websockets_at_once(tmp_path):
    # The re-check is an hour away: only the revocation itself can close the socket in time.
    async with running_daemon(tmp_path, Gated(), ws_reauth_interval_s=3600) as server:
        _, token = await server.user("alice")
        shared, _, made = await tasks_and_link(server, token)
        async with server.ws() as ws, server.ws() as other:
            await send_json(ws, {"type": "auth", "share": made["token"]})
            await send_json(ws, {"type": "subscribe", "task_id": shared, "after": 0})
            assert (await recv_json(ws))["event"] == "task.created"
            async with server.client(token) as http:  # another link of the same task stays open
                second = (await http.post(f"/api/tasks/{shared}/shares", json={})).json()
            await send_json(other, {"type": "auth", "share": second["token"]})
            await send_json(other, {"type": "subscribe", "task_id": shared, "after": 0})
            assert (await recv_json(other))["event"] == "task.created"
            socket = str(server.daemon.settings.control_socket)
            done = await agentctl("--socket", socket, "unshare", made["id"])
            assert done.returncode == 0, done.stderr.decode()
            assert await closed_with(ws) == (CLOSE_AUTH_FAILED, "share link revoked")
            await send_json(other, {"type": "ping"})
            while (await recv_json(other))["type"] != "pong":
                pass


async def test_an_open_share_websocket_closes_when_its_link_expires(tmp_path):
    async with running_daemon(tmp_path, Gated()) as server:
        user, token = await server.user("alice")
        shared, _, _ = await tasks_and_link(server, token)
        # The store's clock stands still: the link is live at the auth however long getting
        # there took, and the timer then waits expires_at - now = 1 s (of the real clock).
        frozen = server.store.now()
        server.store.now = lambda: frozen
        link_token = SHARE_TOKEN_PREFIX + "expires-soon"
        await server.store.add_share_link(
            shared, user.id, hash_token(link_token), expires_at=frozen + 1.0, live_cap=9
        )
        async with server.ws() as ws:
            await send_json(ws, {"type": "auth", "share": link_token})
            authenticated = trio.current_time()
            await send_json(ws, {"type": "ping"})
            assert (await recv_json(ws))["type"] == "pong"
            assert await closed_with(ws) == (CLOSE_AUTH_FAILED, "share link expired")
            assert trio.current_time() - authenticated >= 0.99  # not before


class NoLimit:
    def take(self, key) -> float:
        return 0.0


def share_sessions(store, hub, nursery, links: dict) -> list[Session]:
    """Sessions without a socket whose share tokens open ``links`` (token -> link), one each,
    not yet authenticated."""

    async def authenticate_share(token):
        link = links.get(token)
        return Shared(link, Viewer.shared(link.task_id)) if link is not None else None

    async def no_user(token):
        return None

    fanout, sessions = Fanout(hub, store), []
    for _ in links:
        wake = Wakeup()
        wake.session = Session(
            fanout=fanout,
            store=store,
            spawn=nursery.start_soon,
            authenticate=no_user,
            authenticate_share=authenticate_share,
            limiter=NoLimit(),
            wake=wake,
        )
        sessions.append(wake.session)
    return sessions


@pytest.mark.sqlite_only("the session's expiry timer, on the mock clock; the store is incidental")
async def test_the_expiry_timer_closes_the_session_at_the_links_expiry_exactly(
    store, hub, alice, autojump_clock, nursery
):
    task, _ = await store.create_task(user_id=alice.id, repo_url="file:///r", prompt="p")
    link = await store.add_share_link(
        task.id, alice.id, hash_token("t"), expires_at=store.now() + 3600, live_cap=1
    )
    (session,) = share_sessions(store, hub, nursery, {"t": link})
    start = trio.current_time()
    await session.handle('{"type":"auth","share":"t"}')
    assert session.state is State.OPEN and session.user is None
    await session.handle('{"type":"subscribe_tasks"}')
    assert not session.watching
    await trio.sleep(3599)
    assert session.state is State.OPEN
    await trio.sleep(1)
    await trio.testing.wait_all_tasks_blocked()  # the timer, due at this same instant
    assert session.state is State.CLOSED and session.close_code == CLOSE_AUTH_FAILED
    assert trio.current_time() - start == pytest.approx(3600)


@pytest.mark.sqlite_only("the sessions' revocation, without a socket; the store is incidental")
async def test_a_revocation_closes_the_sessions_of_that_link_only(store, hub, alice, nursery):
    task, _ = await store.create_task(user_id=alice.id, repo_url="file:///r", prompt="p")
    links = {
        token: await store.add_share_link(
            task.id, alice.id, hash_token(token), expires_at=store.now() + 3600, live_cap=2
        )
        for token in ("a", "b")
    }
    first, second = share_sessions(store, hub, nursery, links)
    await first.open(None, "a")
    await second.open(None, "b")
    close_revoked([first, second], links["a"].id)
    assert (first.state, first.close_code, first.close_reason) == (
        State.CLOSED,
        CLOSE_AUTH_FAILED,
        "share link revoked",
    )
    assert second.state is State.OPEN
    close_revoked([first, second], "sh_another")  # no session of that link: nothing happens
    assert second.state is State.OPEN
