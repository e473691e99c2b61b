"""The task routes of design §5 against the real daemon over real HTTP."""

from __future__ import annotations

import trio

from daemon import __version__
from daemon.states import TaskStatus
from daemon.supervisor import RunResult

from .fakes.phone import running_daemon
from .helpers import wait_status

TASK = {"repo_url": "file:///repo", "prompt": "fix the bug"}


class AskOnce:
    """First attempt asks the user a question; later attempts read the inbox and succeed."""

    def __init__(self) -> None:
        self.inputs: list[list[str]] = []

    async def run(self, ctx) -> RunResult:
        self.inputs.append(await ctx.store.take_inputs(ctx.task.id))
        if len(self.inputs) == 1:
            await ctx.emit("agent.question", {"text": "which file?"})
            return RunResult("waiting_input", reason="asked")
        return RunResult()


async def test_create_read_list_events_and_cancel(tmp_path):
    async with running_daemon(tmp_path, concurrency=1) as server:
        server.daemon.supervisor.drain()  # keep tasks queued: this test looks at them still
        alice, token = await server.user("alice")
        async with server.client(token) as http:
            created = await http.post(
                "/api/tasks", json={**TASK, "base_branch": "main", "budget": {"max_turns": 5, "max_usd": 0.5}}
            )
            assert created.status_code == 201
            task = created.json()
            assert task["status"] == "queued" and task["budget"] == {"max_turns": 5, "max_usd": 0.5}
            assert created.headers["Location"] == f"/api/tasks/{task['id']}"
            assert (await http.get(f"/api/tasks/{task['id']}")).json()["id"] == task["id"]

            ids = [task["id"]] + [(await http.post("/api/tasks", json=TASK)).json()["id"] for _ in range(4)]
            pages, cursor = [], None
            while True:
                page = (
                    await http.get(
                        "/api/tasks", params={"limit": 2, **({"cursor": cursor} if cursor else {})}
                    )
                ).json()
                pages.append([t["id"] for t in page["tasks"]])
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert pages == [ids[4:2:-1], ids[2:0:-1], ids[0:1]]  # newest first, no overlap
            queued = (await http.get("/api/tasks", params={"status": "queued"})).json()["tasks"]
            assert len(queued) == 5

            events = (
                await http.get(f"/api/tasks/{task['id']}/events", params={"after": 0, "limit": 1})
            ).json()
            assert [e["event"] for e in events["events"]] == ["task.created"] and events["next_after"] == 1
            rest = (await http.get(f"/api/tasks/{task['id']}/events", params={"after": 1})).json()
            assert rest["events"][0] == {
                "type": "event",
                "task_id": task["id"],
                "seq": 2,
                "event": "task.status",
                "ts": rest["events"][0]["ts"],
                "data": {"status": "queued", "attempt": 0, "user_id": alice.id},
            }

            await server.store.append_message(task["id"], "user", [{"type": "text", "text": "hi"}])
            conversation = (await http.get(f"/api/tasks/{task['id']}/messages")).json()
            assert conversation == {
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
            }

            cancelled = await http.post(f"/api/tasks/{task['id']}/cancel")
            assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
            again = await http.post(f"/api/tasks/{task['id']}/cancel")
            assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"


async def test_idempotency_key_under_concurrent_duplicates(tmp_path):
    async with running_daemon(tmp_path, rate_task_creates_burst=100) as server:
        alice, token = await server.user("alice")
        _, bob_token = await server.user("bob")
        answers = []
        async with server.client(token) as http:

            async def post() -> None:
                answers.append(await http.post("/api/tasks", json=TASK, headers={"Idempotency-Key": "k1"}))

            async with trio.open_nursery() as nursery:
                for _ in range(12):
                    nursery.start_soon(post)
            assert sorted(r.status_code for r in answers) == [200] * 11 + [201]
            assert len({r.json()["id"] for r in answers}) == 1
            assert all(
                r.headers.get("Idempotent-Replayed") == "true" for r in answers if r.status_code == 200
            )
            reused = await http.post(
                "/api/tasks", json={**TASK, "prompt": "other"}, headers={"Idempotency-Key": "k1"}
            )
            assert reused.status_code == 409 and reused.json()["error"]["code"] == "idempotency_conflict"
        async with server.client(bob_token) as http:  # keys are per user
            bobs = await http.post("/api/tasks", json=TASK, headers={"Idempotency-Key": "k1"})
            assert bobs.status_code == 201 and bobs.json()["id"] != answers[0].json()["id"]
        assert len(await server.store.list_tasks(user_id=alice.id)) == 1


async def test_an_answer_requeues_a_waiting_task(tmp_path):
    runner = AskOnce()
    async with running_daemon(tmp_path, runner) as server:
        alice, token = await server.user("alice")
        async with server.client(token) as http:
            task_id = (await http.post("/api/tasks", json=TASK)).json()["id"]
            with trio.fail_after(5):
                await wait_status(server.daemon.hub, task_id, TaskStatus.WAITING_INPUT)
            caps = (await http.get("/api/client-config")).json()["budget"]["caps"]
            messages = f"/api/tasks/{task_id}/messages"
            above = {"text": "src/app.py", "budget": {"max_turns": caps["max_turns"] + 1}}
            refused = await http.post(messages, json=above)
            assert refused.status_code == 422, refused.text
            assert f"at most {caps['max_turns']}, the operator's cap" in refused.text
            raise_to = {"max_turns": caps["max_turns"], "max_usd": caps["max_usd"]}
            answer = await http.post(messages, json={"text": "src/app.py", "budget": raise_to})
            assert answer.status_code == 202
            assert answer.json()["event"]["event"] == "user.message"
            assert answer.json()["task"]["budget"] == raise_to
            with trio.fail_after(5):
                await wait_status(server.daemon.hub, task_id, TaskStatus.SUCCEEDED)
        assert runner.inputs == [[], ["src/app.py"]]  # the refused message was never written
        events = await server.store.read_events(task_id)
        status = [e.data for e in events if e.type == "task.status"]
        # The question spent no attempt: the answer queues the task at attempt 0, it runs as 1.
        assert {"status": "queued", "attempt": 0, "reason": "answered", "user_id": alice.id} in status
        assert [e.data for e in events if e.type == "task.budget"] == [{"budget": raise_to}]


async def test_a_follow_up_goes_on_with_a_finished_task_and_waits_for_a_running_one(tmp_path):
    runner = AskOnce()
    runner.inputs.append([])  # no question this time: every attempt succeeds
    async with running_daemon(tmp_path, runner) as server:
        _, token = await server.user("alice")
        async with server.client(token) as http:
            task_id = (await http.post("/api/tasks", json=TASK)).json()["id"]
            with trio.fail_after(5):
                await wait_status(server.daemon.hub, task_id, TaskStatus.SUCCEEDED)
            follow = await http.post(f"/api/tasks/{task_id}/messages", json={"text": "also add tests"})
            assert follow.status_code == 202
            assert follow.json()["task"]["status"] in ("queued", "running", "succeeded")
            with trio.fail_after(5):
                async for event in server.daemon.hub.follow(task_id):
                    if event.type == "task.finished" and event.seq > 5:
                        break
        assert runner.inputs[-1] == ["also add tests"]
        task = await server.store.get_task(task_id)
        assert task.status is TaskStatus.SUCCEEDED and task.attempt == 1  # fresh attempts


async def test_a_follow_up_to_a_queued_task_only_waits_in_its_inbox(tmp_path):
    async with running_daemon(tmp_path) as server:
        server.daemon.supervisor.drain()
        _, token = await server.user("alice")
        async with server.client(token) as http:
            task_id = (await http.post("/api/tasks", json=TASK)).json()["id"]
            answer = await http.post(f"/api/tasks/{task_id}/messages", json={"text": "more"})
            assert answer.status_code == 202 and answer.json()["task"]["status"] == "queued"
        assert await server.store.take_inputs(task_id) == ["more"]


async def test_openapi_describes_every_route(tmp_path):
    async with running_daemon(tmp_path) as server:
        async with server.client() as http:
            spec = (await http.get("/openapi.json")).json()
    paths = spec["paths"]
    for path, method in [
        ("/api/tasks", "post"),
        ("/api/tasks", "get"),
        ("/api/tasks/{task_id}", "get"),
        ("/api/tasks/{task_id}/events", "get"),
        ("/api/tasks/{task_id}/messages", "get"),
        ("/api/tasks/{task_id}/messages", "post"),
        ("/api/tasks/{task_id}/cancel", "post"),
        ("/auth/github/login", "get"),
        ("/auth/github/callback", "get"),
        ("/auth/token", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ]:
        assert method in paths[path], (path, method)
    create = paths["/api/tasks"]["post"]
    assert "CreateTask" in str(create["requestBody"]) and "201" in create["responses"]
    assert any(p["name"].lower() == "idempotency-key" for p in create.get("parameters", []))


def undescribed(spec: dict) -> list[str]:
    """Operations without a summary and description, and parameters and schema properties
    without a description, in an OpenAPI document. Path parameters (``task_id``) are named by
    the route alone: quart-schema gives them no description."""
    missing = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            if not operation.get("summary") or not operation.get("description"):
                missing.append(where)
            missing += [
                f"{where} {p['in']} {p['name']}"
                for p in operation.get("parameters", [])
                if p["in"] != "path" and not p.get("description")
            ]

    def walk(node: object, where: str) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, where)
        elif isinstance(node, dict):
            properties = node.get("properties")
            if isinstance(properties, dict):
                missing.extend(
                    f"{where}.{name}" for name, prop in properties.items() if not prop.get("description")
                )
            for key, value in node.items():
                walk(value, f"{where}/{key}")

    walk(spec, "")
    return missing


async def test_openapi_describes_every_operation_and_field_and_has_the_package_version(tmp_path):
    async with running_daemon(tmp_path) as server:
        async with server.client() as http:
            spec = (await http.get("/openapi.json")).json()
    assert spec["info"]["version"] == __version__
    assert undescribed(spec) == []
    # The check sees what it must: a field or an operation without words is named.
    spec["components"]["schemas"]["TaskOut"]["properties"]["id"].pop("description")
    spec["paths"]["/healthz"]["get"]["summary"] = ""
    assert undescribed(spec) == ["GET /healthz", "/components/schemas/TaskOut.id"]
