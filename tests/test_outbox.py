"""The durable outbox on both backends: rows written with the events that cause them, one
delivery each, retries with growing backoff under MockClock, give-up, redelivery with the same
id, and the per-user scope of targets and deliveries."""

from __future__ import annotations

import itertools
import json
import types

import pytest
import trio
from cryptography.fernet import Fernet

from daemon.config import Settings
from daemon.errors import NotFound, PermanentError
from daemon.notify import outbox
from daemon.notify.outbox import KINDS, plan_notifications
from daemon.notify.sender import Sender
from daemon.secrets import SecretBox
from daemon.states import TaskStatus
from daemon.store import NewEvent, Transition
from daemon.usecases import notify as uc
from daemon.usecases.policy import Viewer
from tests.fakes.webhook_receiver import WebhookReceiver


def settings(**overrides) -> Settings:
    values = dict(
        allow_private_remotes=True,
        notify_retry_base_s=10.0,
        notify_retry_cap_s=1000.0,
        notify_max_attempts=4,
    )
    values.update(overrides)
    return Settings(**values)


def services(store, **overrides):
    return types.SimpleNamespace(
        settings=settings(**overrides), store=store, secrets=SecretBox([Fernet.generate_key()])
    )


async def finish(store, task_id: str, status: TaskStatus = TaskStatus.SUCCEEDED, **kwargs) -> None:
    await store.transition(Transition(task_id, TaskStatus.RUNNING, attempt_delta=1))
    await store.transition(Transition(task_id, status, **kwargs))


async def start_sender(nursery, svc, **kwargs) -> Sender:
    sender = Sender(svc.store, svc.settings, svc.secrets, claimer="node-a", **kwargs)
    await nursery.start(sender.run)
    return sender


async def wait_delivery(store, delivery_id: str, *statuses: str):
    """The delivery once its status is one of ``statuses`` (polls the store on the test clock)."""
    while True:
        delivery = await store.get_delivery(delivery_id)
        if delivery is not None and delivery.status in statuses:
            return delivery
        await trio.sleep(1.0)  # test-clock seconds: the sender waits its own times meanwhile


# -- the planning function (no I/O) ---------------------------------------------------------------


def _task(**fields):
    from daemon.store.models import Task

    base = dict(
        id="t1", user_id=7, repo_url="https://github.com/me/calc.git", prompt="p", base_branch=None,
        status=TaskStatus.FAILED, attempt=1, created_at=1.0, updated_at=2.0,
    )  # fmt: skip
    base.update(fields)
    return Task(**base)


def test_plan_finished_waiting_and_pr_but_nothing_else():
    task = _task(error="x" * 5000)
    (note,) = plan_notifications(
        task,
        [NewEvent("task.status", {"status": "failed"}), NewEvent("task.finished", {"status": "failed"})],
        5.0,
    )
    payload = json.loads(note.payload)
    assert (note.kind, note.user_id, note.task_id) == ("task.failed", 7, "t1")
    assert payload["task"]["status"] == "failed" and len(payload["task"]["error"]) == outbox.TEXT_CAP
    asked = _task(status=TaskStatus.WAITING_INPUT, reason="Shall I?")
    (note,) = plan_notifications(asked, [NewEvent("task.status", {"status": "waiting_input"})], 5.0)
    assert json.loads(note.payload)["question"] == "Shall I?"
    (note,) = plan_notifications(
        _task(status=TaskStatus.RUNNING), [NewEvent("git.pr_opened", {"url": "https://x/pr/1"})], 5.0
    )
    assert json.loads(note.payload)["task"]["pr_url"] == "https://x/pr/1"
    quiet = [NewEvent("task.status", {"status": "running"}), NewEvent("agent.text", {"text": "hi"})]
    assert plan_notifications(_task(status=TaskStatus.RUNNING), quiet, 5.0) == []


def test_render_adds_id_and_task_link():
    task = _task(status=TaskStatus.SUCCEEDED)
    (note,) = plan_notifications(task, [NewEvent("task.finished", {"status": "succeeded"})], 5.0)
    row = outbox.Delivery(
        outbox.delivery_id(note.nonce, "wh_abc"), "wh_abc", 7, "t1", note.kind, note.payload,
        "pending", 0, 5.0, None, None, None, None, 5.0, None, 5.0,
    )  # fmt: skip
    body = outbox.render(row, "https://agentd.example/")
    assert list(body)[:2] == ["id", "kind"] and body["id"] == f"dlv_{note.nonce}abc"
    assert body["task"]["url"] == "https://agentd.example/#/task/t1"
    assert outbox.render(row, None)["task"]["url"] is None


# -- the store and the sender, on both backends ----------------------------------------------------


async def test_a_finished_task_notifies_once(store, alice, bob, autojump_clock):
    svc = services(store)
    async with trio.open_nursery() as nursery:
        receiver = WebhookReceiver(now=store.now)
        url = await nursery.start(receiver.serve)
        made = await uc.add_webhook(svc, Viewer.of(alice), f"{url}/hook")
        receiver.secret = made.secret
        await uc.add_webhook(svc, Viewer.of(bob), f"{url}/bob")  # bob's: never for alice's task
        task, _ = await store.create_task(user_id=alice.id, repo_url="https://github.com/a/b", prompt="p")
        await finish(store, task.id)
        (row,) = await store.list_deliveries(alice.id)
        assert (row.kind, row.task_id, row.status, row.target_id) == (
            "task.succeeded",
            task.id,
            "pending",
            made.target.id,
        )
        await start_sender(nursery, svc)
        delivered = await wait_delivery(store, row.id, "delivered")
        (got,) = receiver.requests
        assert got.verified and got.target == "/hook" and got.headers["agentd-event"] == "task.succeeded"
        body = json.loads(got.body)
        assert body["id"] == row.id == got.headers["agentd-delivery"] and body["task"]["id"] == task.id
        assert delivered.attempts == 1 and receiver.accepted == [row.id]
        assert await store.list_deliveries(bob.id) == []
        nursery.cancel_scope.cancel()


async def test_no_targets_no_rows(store, alice):
    task, _ = await store.create_task(user_id=alice.id, repo_url="https://github.com/a/b", prompt="p")
    await finish(store, task.id, TaskStatus.FAILED, error="boom")
    assert await store.list_deliveries("all") == []


async def test_failing_receiver_retries_with_growing_backoff_then_fails(store, alice, autojump_clock):
    svc = services(store)
    async with trio.open_nursery() as nursery:
        receiver = WebhookReceiver(answers=[500] * 10, now=store.now)
        url = await nursery.start(receiver.serve)
        made = await uc.add_webhook(svc, Viewer.of(alice), url, ["task.failed"])
        receiver.secret = made.secret
        task, _ = await store.create_task(user_id=alice.id, repo_url="https://github.com/a/b", prompt="p")
        await finish(store, task.id, TaskStatus.FAILED, error="it broke")
        (row,) = await store.list_deliveries(alice.id)
        await start_sender(nursery, svc)
        failed = await wait_delivery(store, row.id, "failed")
        times = [r.at for r in receiver.requests]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(times) == 4 and failed.attempts == 4 and failed.last_status == 500
        assert all(later >= earlier for earlier, later in itertools.pairwise(gaps)), gaps
        assert 5 <= gaps[0] <= 10 and 20 <= gaps[2] <= 40  # [c/2, c] with c = 10 * 2^(n-1)
        assert "gave up after 4 attempts" in failed.last_error
        assert [d.id for d in await uc.list_deliveries(svc, Viewer.of(alice), status="failed")] == [row.id]
        # Redelivered: the same id, delivered this time.
        receiver.answers.clear()
        again = await uc.redeliver(svc, Viewer.of(alice), row.id)
        assert again.id == row.id and again.status == "pending"
        done = await wait_delivery(store, row.id, "delivered")
        assert done.id == row.id and receiver.requests[-1].headers["agentd-delivery"] == row.id
        assert receiver.accepted == [row.id]
        nursery.cancel_scope.cancel()


async def test_retry_after_is_honoured(store, alice, autojump_clock):
    svc = services(store)
    async with trio.open_nursery() as nursery:
        receiver = WebhookReceiver(answers=[429], retry_after="300", now=store.now)
        url = await nursery.start(receiver.serve)
        await uc.add_webhook(svc, Viewer.of(alice), url)
        delivery = await uc.send_test(
            svc, Viewer.of(alice), (await uc.list_targets(svc, Viewer.of(alice)))[0].id
        )
        await start_sender(nursery, svc)
        await wait_delivery(store, delivery.id, "delivered")
        first, second = receiver.requests
        assert 300 <= second.at - first.at < 310
        nursery.cancel_scope.cancel()


async def test_another_users_targets_and_deliveries_are_not_found(store, alice, bob):
    svc = services(store)
    made = await uc.add_webhook(svc, Viewer.of(alice), "http://127.0.0.1:9/hook")
    delivery = await uc.send_test(svc, Viewer.of(alice), made.target.id)
    as_bob = Viewer.of(bob)
    for call in (
        uc.send_test(svc, as_bob, made.target.id),
        uc.remove_target(svc, as_bob, made.target.id),
        uc.redeliver(svc, as_bob, delivery.id),
        uc.list_deliveries(svc, as_bob, target_id=made.target.id),
    ):
        with pytest.raises(NotFound):
            await call
    assert await uc.list_deliveries(svc, as_bob) == [] and await uc.list_targets(svc, as_bob) == []
    operator = Viewer(None, None, True)
    assert [t.id for t in await uc.list_targets(svc, operator)] == [made.target.id]
    assert [d.id for d in await uc.list_deliveries(svc, operator)] == [delivery.id]


async def test_private_addresses_are_refused_unless_allowed(store, alice):
    svc = services(store, allow_private_remotes=False)
    for url in (
        "http://127.0.0.1:8080/hook",
        "https://127.0.0.1/hook",
        "https://10.1.2.3/x",
        "https://[::1]/x",
    ):
        with pytest.raises(PermanentError) as refused:
            await uc.add_webhook(svc, Viewer.of(alice), url)
        assert refused.value.code in ("address_refused", "invalid_url")
    assert await store.list_targets("all") == []
    allowed = services(store)
    assert (await uc.add_webhook(allowed, Viewer.of(alice), "http://127.0.0.1:8080/hook")).secret.startswith(
        "whsec_"
    )


async def test_events_are_checked(store, alice):
    from daemon.errors import BadArguments

    with pytest.raises(BadArguments, match="task.succeeded"):
        await uc.add_webhook(services(store), Viewer.of(alice), "http://127.0.0.1:9/", ["task.exploded"])
    assert set(KINDS) == {
        "task.succeeded",
        "task.failed",
        "task.cancelled",
        "task.waiting_input",
        "task.pr_opened",
    }


async def test_two_senders_on_one_postgresql_store_deliver_each_row_once(store, alice):
    if store.backend != "postgresql":
        pytest.skip("one SQLite file has one daemon: there is no second sender to race")
    from daemon.store.postgres import PostgresStore

    svc = services(store, notify_concurrency=3)
    other = await PostgresStore.open(store.dsn, node_id="node-b")
    other.now = store.now
    try:
        async with trio.open_nursery() as nursery:
            receiver = WebhookReceiver(now=store.now)
            url = await nursery.start(receiver.serve)
            made = await uc.add_webhook(svc, Viewer.of(alice), url)
            receiver.secret = made.secret
            sent = [await uc.send_test(svc, Viewer.of(alice), made.target.id) for _ in range(24)]
            senders = [
                Sender(s, svc.settings, svc.secrets, claimer=name)
                for s, name in ((store, "node-a"), (other, "node-b"))
            ]
            for sender in senders:
                await nursery.start(sender.run)
            with trio.fail_after(60):
                await receiver.wait_for(len(sent))
                # The last records commit after the last answers: no event marks them.
                while await store.count_pending_deliveries():  # noqa: ASYNC110
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    finally:
        await other.aclose()
    ids = [r.headers["agentd-delivery"] for r in receiver.requests]
    assert sorted(ids) == sorted(d.id for d in sent) == sorted(receiver.accepted)  # each once
    by = {d.claimed_by for d in await store.list_deliveries("all", limit=100)}
    assert by == {None}  # every claim released with its result


async def test_questions_prs_and_changes_written_together_each_make_their_rows(store, alice, bob):
    svc = services(store)
    await uc.add_webhook(
        svc, Viewer.of(alice), "http://127.0.0.1:9/a", ["task.waiting_input", "task.pr_opened", "task.failed"]
    )
    operator = await uc.add_webhook(
        svc, Viewer(None, None, True), "http://127.0.0.1:9/ops", ["task.failed"], operator_wide=True
    )
    asked, _ = await store.create_task(user_id=alice.id, repo_url="https://github.com/a/b", prompt="p")
    await store.transition(Transition(asked.id, TaskStatus.RUNNING, attempt_delta=1))
    await store.transition(
        Transition(asked.id, TaskStatus.WAITING_INPUT, reason="Shall I?", attempt_delta=-1)
    )
    opened, _ = await store.create_task(user_id=alice.id, repo_url="https://github.com/a/b", prompt="p")
    await store.update_task(
        opened.id,
        pr_url="https://github.com/a/b/pull/1",
        events=[NewEvent("git.pr_opened", {"url": "https://github.com/a/b/pull/1"})],
    )
    await store.append_events(
        opened.id, [NewEvent("git.pr_opened", {"url": "https://github.com/a/b/pull/2"})]
    )
    # Status changes asked for at once (PostgreSQL writes them in one statement).
    tasks = []
    for owner in (alice, bob, alice, bob):
        task, _ = await store.create_task(user_id=owner.id, repo_url="https://github.com/a/b", prompt="p")
        await store.transition(Transition(task.id, TaskStatus.RUNNING, attempt_delta=1))
        tasks.append(task)
    async with trio.open_nursery() as nursery:
        for task in tasks:
            nursery.start_soon(
                store.transition, Transition(task.id, TaskStatus.FAILED, error=f"{task.id} broke")
            )
    rows = await store.list_deliveries("all", limit=100)
    by_task: dict[str, list[str]] = {}
    for row in rows:
        by_task.setdefault(row.task_id, []).append(f"{row.kind}>{row.target_id[:3]}")
    assert sorted(by_task[asked.id]) == ["task.waiting_input>wh_"]
    (question,) = [r for r in rows if r.task_id == asked.id]
    assert json.loads(question.payload)["question"] == "Shall I?"
    assert sorted(json.loads(r.payload)["task"]["pr_url"] for r in rows if r.task_id == opened.id) == [
        "https://github.com/a/b/pull/1", "https://github.com/a/b/pull/2",
    ]  # fmt: skip
    for task, owner in zip(tasks, (alice, bob, alice, bob), strict=True):
        expected = 2 if owner is alice else 1  # alice's webhook and the operator's; bob: the operator's
        assert len(by_task[task.id]) == expected, (owner.login, by_task[task.id])
        assert {json.loads(r.payload)["task"]["error"] for r in rows if r.task_id == task.id} == {
            f"{task.id} broke"
        }
    assert len({r.id for r in rows}) == len(rows)
    assert {r.target_id for r in rows if r.user_id == bob.id} == {operator.target.id}
