"""The operator surface: /admin/api/... answers operators only (401, then 403).

Unlike the phone API's 404 rule, a signed-in non-operator is told 403: this is an operator
surface, and the page must be able to say "not an operator" plainly. The page's live feed is
``/ws`` with the operator policy: ``test_ws_operator.py``.
"""

from __future__ import annotations

import pytest
import trio

from daemon.states import TaskStatus
from daemon.store import NewEvent
from daemon.tokens import hash_token, new_token

from .fakes.phone import running_daemon
from .helpers import wait_status
from .runners import Hang

TASK = {"repo_url": "file:///repo", "prompt": "fix the flaky test"}
MISSING = "01m8bz0000000000000000000"

ROUTES = [
    ("GET", "/admin/api/whoami"),
    ("GET", "/admin/api/tasks"),
    ("GET", "/admin/api/tasks/{id}"),
    ("GET", "/admin/api/tasks/{id}/events"),
    ("POST", "/admin/api/tasks/{id}/cancel"),
    ("POST", "/admin/api/tasks/{id}/retry"),
]


async def operator(server, login: str = "root") -> str:
    """An operator user and its token (as ``users.add`` with ``operator: true`` makes them)."""
    user = await server.store.upsert_user(login, is_operator=True)
    token = new_token()
    await server.store.add_token(user.id, hash_token(token))
    return token


async def submit(server, token: str, **body) -> str:
    async with server.client(token) as http:
        response = await http.post("/api/tasks", json={**TASK, **body})
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture
async def setup(tmp_path):
    """A daemon whose tasks stay queued, with a task of alice's, an operator and bob."""
    async with running_daemon(tmp_path) as server:
        server.daemon.supervisor.drain()
        _, alice = await server.user("alice")
        _, bob = await server.user("bob")
        root = await operator(server)
        task_id = await submit(server, alice)
        yield server, root, bob, task_id


async def test_anonymous_is_401_a_non_operator_403_and_an_operator_gets_through(setup):
    server, root, bob, task_id = setup
    for method, path in ROUTES:
        url = path.format(id=task_id)
        async with server.client() as http:
            response = await http.request(method, url)
            assert response.status_code == 401, (method, path)
            assert response.json()["error"]["code"] == "unauthorized"
        async with server.client("agentd_forged") as http:
            assert (await http.request(method, url)).status_code == 401, (method, path)
        async with server.client(bob) as http:  # bob's own tasks make no difference
            response = await http.request(method, url)
            assert response.status_code == 403, (method, path)
            error = response.json()["error"]
            assert error["code"] == "forbidden" and "not an operator" in error["message"]
    # Nothing was done by the refused requests.
    assert (await server.store.get_task(task_id)).status is TaskStatus.QUEUED
    async with server.client(root) as http:
        for method, path in ROUTES:
            if path.endswith("/retry"):
                continue  # a queued task has nothing to retry: see the retry test
            response = await http.request(method, path.format(id=task_id))
            assert response.status_code in (200, 202), (method, path, response.text)


async def test_the_list_shows_every_users_tasks_with_logins_filters_and_pages(setup):
    server, root, bob, alices = setup
    bobs = [await submit(server, bob, prompt=f"task {i}") for i in range(3)]
    async with server.client(root) as http:
        everything = (await http.get("/admin/api/tasks")).json()
        assert [t["id"] for t in everything["tasks"]] == [*reversed(bobs), alices]
        assert [t["user_login"] for t in everything["tasks"]] == ["bob"] * 3 + ["alice"]
        assert everything["next_cursor"] is None
        first = (await http.get("/admin/api/tasks", params={"limit": 2})).json()
        rest = (
            await http.get("/admin/api/tasks", params={"limit": 2, "cursor": first["next_cursor"]})
        ).json()
        assert [t["id"] for t in first["tasks"] + rest["tasks"]] == [*reversed(bobs), alices]
        assert rest["next_cursor"] is None
        only_alice = (await http.get("/admin/api/tasks", params={"user": "alice"})).json()
        assert [t["id"] for t in only_alice["tasks"]] == [alices]
        assert (await http.get("/admin/api/tasks", params={"user": "nobody"})).status_code == 404
        running = (await http.get("/admin/api/tasks", params={"status": "running"})).json()
        assert running["tasks"] == []
        assert (await http.get("/admin/api/tasks", params={"status": "bogus"})).status_code == 422
        one = (await http.get(f"/admin/api/tasks/{alices}")).json()
        assert (one["id"], one["user_login"], one["status"]) == (alices, "alice", "queued")
        assert (await http.get(f"/admin/api/tasks/{MISSING}")).status_code == 404


async def test_events_after_a_seq(setup):
    server, root, _, task_id = setup
    base = (await server.store.get_task(task_id)).last_seq
    await server.store.append_events(
        task_id, [NewEvent("agent.text", {"text": f"step {i}"}) for i in range(3)]
    )
    async with server.client(root) as http:
        url = f"/admin/api/tasks/{task_id}/events"
        page = (await http.get(url, params={"after": base + 1})).json()
        assert [e["seq"] for e in page["events"]] == [base + 2, base + 3]
        assert page["events"][-1]["data"] == {"text": "step 2"} and page["next_after"] == base + 3
        empty = (await http.get(url, params={"after": base + 3})).json()
        assert empty == {"events": [], "next_after": base + 3}
        assert (await http.get(f"/admin/api/tasks/{MISSING}/events")).status_code == 404


async def test_cancel_stops_a_running_task_and_retry_queues_it_again(tmp_path):
    runner = Hang()
    async with running_daemon(tmp_path, runner) as server:
        _, alice = await server.user("alice")
        root = await operator(server)
        task_id = await submit(server, alice)
        with trio.fail_after(5):
            await wait_status(server.daemon.hub, task_id, TaskStatus.RUNNING)
        async with server.client(root) as http:
            assert (await http.post(f"/admin/api/tasks/{task_id}/retry")).status_code == 409
            response = await http.post(f"/admin/api/tasks/{task_id}/cancel")
            assert response.status_code == 202 and response.json()["status"] == "cancelled"
            assert runner.cancelled == [task_id]
            assert (await server.store.get_task(task_id)).status is TaskStatus.CANCELLED
            again = await http.post(f"/admin/api/tasks/{task_id}/cancel")
            assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"

            server.daemon.supervisor.drain()  # so the retried task stays visibly queued
            response = await http.post(f"/admin/api/tasks/{task_id}/retry")
            assert response.status_code == 202, response.text
            assert (response.json()["status"], response.json()["attempt"]) == ("queued", 0)
            task = await server.store.get_task(task_id)
            assert task.status is TaskStatus.QUEUED and task.reason == "retried by operator root"
            assert (await http.post(f"/admin/api/tasks/{MISSING}/retry")).status_code == 404
            server.daemon.supervisor.resume()  # and it runs again
            with trio.fail_after(5):
                await runner.wait_until(lambda: len(runner.starts) == 2)


async def test_the_old_page_sends_a_browser_to_the_apps_operator_view(setup):
    server, *_ = setup
    async with server.client(follow_redirects=False) as http:  # no token needed: it holds nothing
        page = await http.get("/admin")
        assert page.status_code == 302 and page.headers["location"] == "/#/ops"
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["x-frame-options"] == "DENY" and page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["cache-control"] == "no-store"
        for name in ["admin.js", "admin.css", "admin.html"]:  # its files are gone with it
            assert (await http.get(f"/admin/static/{name}")).status_code == 404
