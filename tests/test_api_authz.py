"""Two users x every route and every WebSocket message: another user's task is a 404, always."""

from __future__ import annotations

import pytest

from .fakes.phone import recv_json, running_daemon, send_json

TASK = {"repo_url": "file:///repo", "prompt": "secret work"}

TASK_ROUTES = [
    ("GET", "/api/tasks/{id}", None),
    ("GET", "/api/tasks/{id}/events", None),
    ("GET", "/api/tasks/{id}/messages", None),
    ("POST", "/api/tasks/{id}/messages", {"text": "hello"}),
    ("POST", "/api/tasks/{id}/cancel", None),
]


@pytest.fixture
async def two_users(tmp_path):
    async with running_daemon(tmp_path) as server:
        server.daemon.supervisor.drain()  # tasks stay queued, so cancel would be allowed
        _, alice = await server.user("alice")
        _, bob = await server.user("bob")
        async with server.client(alice) as http:
            task_id = (await http.post("/api/tasks", json=TASK)).json()["id"]
        yield server, alice, bob, task_id


async def test_every_task_route_is_404_for_another_user_and_works_for_the_owner(two_users):
    server, alice, bob, task_id = two_users
    missing = "01m8bz0000000000000000000"
    async with server.client(bob) as http:
        for method, path, body in TASK_ROUTES:
            for target in (task_id, missing):  # theirs and nobody's look exactly the same
                response = await http.request(method, path.format(id=target), json=body)
                assert response.status_code == 404, (method, path)
                assert response.json() == {"error": {"code": "not_found", "message": f"no task {target}"}}
        assert (await http.get("/api/tasks")).json()["tasks"] == []
        assert (await http.get("/api/tasks", params={"status": "queued"})).json()["tasks"] == []
    task = await server.store.get_task(task_id)
    assert task.status.value == "queued" and await server.store.take_inputs(task_id) == []
    async with server.client(alice) as http:
        for method, path, body in TASK_ROUTES:
            response = await http.request(method, path.format(id=task_id), json=body)
            assert response.status_code in (200, 202), (method, path, response.text)
        assert [t["id"] for t in (await http.get("/api/tasks")).json()["tasks"]] == [task_id]


async def test_an_id_no_task_can_have_is_a_404_on_every_route(two_users):
    server, alice, _, _ = two_users
    async with server.client(alice) as http:
        for method, path, body in TASK_ROUTES:
            for target in ("%00", "a%00b", "%1b%5b2J", "%C3%A9t%C3%A9", "x" * 65):
                response = await http.request(method, path.format(id=target), json=body)
                assert response.status_code == 404, (method, path, target, response.text)
                assert response.json()["error"]["code"] == "not_found"
    async with server.ws(alice) as ws:
        for target in ("\x00", "a\x00b", "\x1b[2J", "été"):
            await send_json(ws, {"type": "subscribe", "task_id": target, "after": 0})
            reply = await recv_json(ws)
            assert (reply["type"], reply["code"], reply["task_id"]) == ("error", "not_found", target)


async def test_every_route_needs_a_token(two_users):
    server, _, _, task_id = two_users
    async with server.client() as http:
        for method, path, body in [("GET", "/api/tasks", None), ("POST", "/api/tasks", TASK), *TASK_ROUTES]:
            response = await http.request(method, path.format(id=task_id), json=body)
            assert response.status_code == 401, (method, path)


async def test_every_websocket_message_respects_ownership(two_users):
    server, alice, bob, task_id = two_users
    async with server.ws(bob) as ws:
        await send_json(ws, {"type": "subscribe", "task_id": task_id, "after": 0})
        assert await recv_json(ws) == {
            "type": "error",
            "code": "not_found",
            "message": f"no task {task_id}",
            "task_id": task_id,
        }
        await send_json(ws, {"type": "unsubscribe", "task_id": task_id})  # harmless, silent
        await send_json(ws, {"type": "subscribe_tasks"})
        async with server.client(alice) as http:  # alice's activity is not bob's business
            await http.post(f"/api/tasks/{task_id}/messages", json={"text": "more"})
            await http.post("/api/tasks", json=TASK)
        await send_json(ws, {"type": "ping"})
        assert await recv_json(ws) == {"type": "pong"}
    async with server.ws(alice) as ws:
        await send_json(ws, {"type": "subscribe", "task_id": task_id, "after": 0})
        first = await recv_json(ws)
        assert (first["task_id"], first["seq"], first["event"]) == (task_id, 1, "task.created")


async def test_websocket_subscribes_are_rate_limited_per_user(tmp_path):
    async with running_daemon(tmp_path, rate_subscribes_burst=2, rate_subscribes_per_min=1) as server:
        _, alice = await server.user("alice")
        async with server.client(alice) as http:
            task_id = (await http.post("/api/tasks", json=TASK)).json()["id"]
        async with server.ws(alice) as ws:
            for _ in range(3):
                await send_json(ws, {"type": "subscribe", "task_id": task_id, "after": 99})
            message = await recv_json(ws)
        assert message["type"] == "error" and message["code"] == "rate_limited"
        assert message["task_id"] == task_id and 1 <= message["retry_after"] <= 60
