"""Web Push end to end: a real daemon (store, supervisor, agent loop on the scripted model, git
on a local bare repository, the outbox's sender) and a local push service that checks the
VAPID signature and decrypts what it is sent, as a browser's push service and the browser do."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio

from daemon.states import TaskStatus

from .agent_env import FIX_SCRIPT, bare_repo
from .client_browser import scripted_runner
from .fakes.phone import running_daemon
from .fakes.push_service import FakePushService
from .helpers import wait_status

pytestmark = pytest.mark.slow


class Settled:
    """Counts what the outbox's sender wrote to the store (attempts recorded, targets disabled)
    and lets a test wait for a count, woken by the writes themselves: no polling."""

    def __init__(self, store) -> None:
        self.counts = {"record_attempt": 0, "disable_target": 0}
        self._changed = trio.Event()
        for name in self.counts:
            setattr(store, name, self._counted(name, getattr(store, name)))

    def _counted(self, name, write):
        async def counted(*args, **kwargs):
            await write(*args, **kwargs)
            self.counts[name] += 1
            self._changed.set()
            self._changed = trio.Event()

        return counted

    async def wait(self, *, attempts: int, disabled: int = 0) -> None:
        with trio.fail_after(30):
            while self.counts["record_attempt"] < attempts or self.counts["disable_target"] < disabled:
                await self._changed.wait()


@asynccontextmanager
async def _daemon_and_push_service(tmp_path):
    """A push service and a daemon running the fix script, alice signed in: yields the push
    service, the daemon's ``Server``, alice, her HTTP client, a ``Settled`` on the store and a
    repository to fix. The push service outlives the daemon, so what the daemon sends as it
    stops is still recorded."""
    push = FakePushService()
    with push:
        repo = str(bare_repo(tmp_path))
        async with running_daemon(tmp_path, scripted_runner(tmp_path, FIX_SCRIPT)) as server:
            alice, token = await server.user("alice")
            settled = Settled(server.store)
            async with server.client(token) as http:
                yield push, server, alice, http, settled, repo


async def _finish_a_task(server, http, repo: str, prompt: str = "fix the failing test") -> str:
    # Each task of a test has its own prompt: the branch is named after it (and the second).
    created = await http.post("/api/tasks", json={"repo_url": repo, "prompt": prompt})
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    status = await wait_status(server.daemon.hub, task_id, TaskStatus.SUCCEEDED, TaskStatus.FAILED)
    assert status is TaskStatus.SUCCEEDED, (await server.store.get_task(task_id)).error
    return task_id


async def test_a_finished_task_makes_exactly_one_push_that_opens_the_task(tmp_path):
    async with _daemon_and_push_service(tmp_path) as (push, server, alice, http, settled, repo):
        key = (await http.get("/api/push/key")).json()["public_key"]
        sub = push.subscribe(server_key=key)  # as the browser does, with the server's key
        made = await http.post("/api/push/subscriptions", json=sub.as_browser_json())
        assert made.status_code == 201, made.text

        task_id = await _finish_a_task(server, http, repo)
        await settled.wait(attempts=1)
        [request] = push.requests
        assert request.status == 201, request.reason
        deliveries = await server.store.list_deliveries(alice.id)
        assert [(d.kind, d.status) for d in deliveries] == [("task.succeeded", "delivered")]

    [message] = push.messages_for(sub.id)
    assert message.notification["title"] == "Task finished: project"
    assert message.notification["url"] == f"/#/task/{task_id}"
    assert message.notification["tag"] == f"task-{task_id}"
    assert message.notification["body"].startswith("Branch agentd/")
    assert message.headers["topic"] == task_id and message.headers["ttl"] == "86400"
    assert len(push.requests) == 1  # exactly one push, and nothing after it


async def test_a_subscription_the_push_service_calls_gone_is_disabled_and_sent_nothing_more(tmp_path):
    async with _daemon_and_push_service(tmp_path) as (push, server, alice, http, settled, repo):
        gone, live = push.subscribe(), push.subscribe()
        for sub in (gone, live):
            made = await http.post("/api/push/subscriptions", json=sub.as_browser_json())
            assert made.status_code == 201, made.text
        push.answer(gone.id, 410)

        await _finish_a_task(server, http, repo)
        await settled.wait(attempts=2, disabled=1)
        listed = {
            s["endpoint"]: s for s in (await http.get("/api/push/subscriptions")).json()["subscriptions"]
        }
        assert listed[gone.endpoint]["disabled_at"] is not None
        assert listed[live.endpoint]["disabled_at"] is None

        await _finish_a_task(server, http, repo, "fix it again")
        await settled.wait(attempts=3)
        deliveries = await server.store.list_deliveries(alice.id)
        assert sorted((d.target_id == listed[gone.endpoint]["id"], d.status) for d in deliveries) == [
            (False, "delivered"),
            (False, "delivered"),
            (True, "failed"),
        ]

    assert [r.status for r in push.requests if r.subscription_id == gone.id] == [410]  # once only
    assert len(push.messages_for(live.id)) == 2
