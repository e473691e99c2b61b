"""ntfy as a user's notification channel: one message to their topic with ntfy's headers, the
model-influenced text in the body only, and the topic URL held to the address rules."""

from __future__ import annotations

import pytest
import trio

from daemon.errors import PermanentError
from daemon.notify.ntfy import message_for
from daemon.states import TaskStatus
from daemon.usecases import notify as uc
from daemon.usecases.policy import Viewer
from tests.fakes.phone import running_daemon
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.test_outbox import finish, services, start_sender, wait_delivery


def test_message_headers_are_fixed_words_and_the_repo_name():
    payload = {
        "kind": "task.failed",
        "task": {
            "id": "t1",
            "repo_url": "https://github.com/me/ca\u00e9l\r\nX-Evil: 1.git",
            "error": "line one\r\nTitle: injected",
            "url": "https://agentd.example/#/task/t1",
        },
    }
    headers, text = message_for(payload)
    assert headers["Title"].startswith("Task failed: ") and headers["Tags"] == "x"
    assert headers["Priority"] == "high" and headers["Click"] == "https://agentd.example/#/task/t1"
    assert all(value.isascii() and "\n" not in value and "\r" not in value for value in headers.values())
    assert text == "line one\r\nTitle: injected"  # the body: plain text, as given
    asked, question = message_for({"kind": "task.waiting_input", "task": {"repo_url": "x"}, "question": "Q?"})
    assert asked["Tags"] == "question" and question == "Q?" and "Click" not in asked


async def test_a_failed_task_notifies_the_users_topic(store, alice, autojump_clock):
    svc = services(store, public_url="https://agentd.example")
    async with trio.open_nursery() as nursery:
        topic = WebhookReceiver(now=store.now)
        url = await nursery.start(topic.serve)
        first = await uc.set_ntfy(svc, Viewer.of(alice), f"{url}/old-topic")
        target = await uc.set_ntfy(
            svc, Viewer.of(alice), f"{url}/alice-topic", token="tk_secret", events=["task.failed"]
        )
        assert [t.id for t in await uc.list_targets(svc, Viewer.of(alice))] == [target.id] != [first.id]
        task, _ = await store.create_task(
            user_id=alice.id, repo_url="https://github.com/me/calc.git", prompt="p"
        )
        await finish(store, task.id, TaskStatus.FAILED, error="the tests fail")
        other, _ = await store.create_task(
            user_id=alice.id, repo_url="https://github.com/me/calc.git", prompt="p"
        )
        await finish(store, other.id)  # succeeded: not one of the topic's events
        (row,) = await store.list_deliveries(alice.id)
        await start_sender(nursery, svc)
        await wait_delivery(store, row.id, "delivered")
        (got,) = topic.requests
        assert got.target == "/alice-topic" and got.body == b"the tests fail"
        assert got.headers["authorization"] == "Bearer tk_secret"
        assert got.headers["title"] == "Task failed: calc" and got.headers["tags"] == "x"
        assert got.headers["click"] == f"https://agentd.example/#/task/{task.id}"
        nursery.cancel_scope.cancel()
    await uc.remove_ntfy(svc, Viewer.of(alice))
    assert await uc.list_targets(svc, Viewer.of(alice)) == []


async def test_topic_urls_follow_the_address_rules(store, alice):
    svc = services(store, allow_private_remotes=False)
    with pytest.raises(PermanentError, match="allow_private_remotes"):
        await uc.set_ntfy(svc, Viewer.of(alice), "https://127.0.0.1/topic")
    with pytest.raises(PermanentError, match="https"):
        await uc.set_ntfy(svc, Viewer.of(alice), "http://ntfy.sh/topic")


async def test_the_topic_route_answers_null_when_none_is_set(tmp_path):
    """GET is a 200 whether a topic is set or not (a settings view asks before there is one);
    DELETE of no topic is still a 404."""
    async with running_daemon(tmp_path) as server:
        _, token = await server.user("alice")
        async with server.client(token) as http:
            none = await http.get("/api/notify/ntfy")
            assert (none.status_code, none.json()) == (200, {"topic": None})
            assert (await http.delete("/api/notify/ntfy")).status_code == 404
            put = await http.put("/api/notify/ntfy", json={"url": "https://127.0.0.1/t", "token": "tk_x"})
            assert put.status_code == 200, put.text
            got = (await http.get("/api/notify/ntfy")).json()["topic"]
            assert got == put.json() and got["url"] == "https://127.0.0.1/t" and "tk_x" not in str(got)
            assert (await http.delete("/api/notify/ntfy")).status_code == 204
            assert (await http.get("/api/notify/ntfy")).json() == {"topic": None}
            spec = (await http.get("/openapi.json")).json()
    get = spec["paths"]["/api/notify/ntfy"]["get"]
    assert '{"topic": null}' in get["description"] and "404" not in get["description"]
