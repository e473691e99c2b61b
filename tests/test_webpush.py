"""The Web Push channel against a local push service that checks VAPID and decrypts (RFC 8030,
8291, 8292): what a phone is sent, what each answer of the push service means, and the one
VAPID key pair of a store."""

from __future__ import annotations

import json

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric import ec

from daemon.config import Settings
from daemon.notify.channels import Verdict
from daemon.notify.outbox import Delivery, Target
from daemon.notify.vapid import VAPID_KEY, default_subject, vapid_keys
from daemon.notify.webpush import MAX_BODY_BYTES, WebPushChannel, notification_for
from daemon.secrets import SecretBox
from daemon.store import SqliteStore

from .fakes.push_service import FakePushService, PushSubscription

TASK_ID = "01kxyz0000000000000000abcd"
SUCCEEDED = {
    "kind": "task.succeeded",
    "task": {
        "id": TASK_ID,
        "status": "succeeded",
        "repo_url": "https://github.com/me/calc.git",
        "branch": "agentd/fix-add",
        "pr_url": None,
        "error": None,
        "cost_usd": 0.01,
    },
    "created_at": 1.0,
}


# A browser's subscription keys, for endpoints where nothing listens.
KEYS = PushSubscription("k", "", ec.generate_private_key(ec.SECP256R1()), b"0123456789abcdef")


@pytest.fixture
def box() -> SecretBox:
    return SecretBox([Fernet.generate_key()])


@pytest.fixture
def push_service():
    service = FakePushService()
    with service:
        yield service


def settings(tmp_path, **overrides) -> Settings:
    return Settings(data_dir=tmp_path / "data", allow_private_remotes=True, **overrides)


def delivery(payload: dict, n: int = 1) -> Delivery:
    return Delivery(
        f"dlv_{n}", "wp_1", 1, TASK_ID, payload["kind"], json.dumps(payload), "pending", 0, 0.0,
        None, None, None, None, 0.0, None, 0.0,
    )  # fmt: skip


def target(sub: PushSubscription) -> tuple[Target, str]:
    keys = json.dumps({"p256dh": sub.p256dh, "auth": sub.auth})
    return Target("wp_1", 1, "webpush", sub.endpoint, None, ("task.succeeded",), 0.0), keys


async def test_a_delivery_reaches_the_push_service_signed_encrypted_and_small(
    tmp_path, store, box, push_service
):
    keys = await vapid_keys(store, box)
    sub = push_service.subscribe(server_key=keys.application_server_key)
    channel = WebPushChannel(settings(tmp_path, push_ttl_s=600), store, box)
    try:
        attempt = await channel.deliver(delivery(SUCCEEDED), *target(sub))
    finally:
        await channel.aclose()
    assert attempt.verdict is Verdict.DELIVERED and attempt.status_code == 201
    [message] = push_service.messages_for(sub.id)
    assert message.notification == {
        "title": "Task finished: calc",
        "body": "Branch agentd/fix-add pushed.",
        "url": f"/#/task/{TASK_ID}",
        "tag": f"task-{TASK_ID}",
    }
    assert message.headers["ttl"] == "600"
    assert message.headers["urgency"] == "normal"
    assert message.headers["topic"] == TASK_ID  # a newer message of the task replaces this one
    assert message.headers["authorization"].startswith("vapid t=")
    assert message.encrypted_bytes < MAX_BODY_BYTES


@pytest.mark.parametrize(
    ("status", "retry_after", "verdict", "wait"),
    [
        (410, None, Verdict.GONE, None),
        (404, None, Verdict.GONE, None),
        (429, "120", Verdict.RETRY, 120.0),
        (503, None, Verdict.RETRY, None),
        (500, None, Verdict.RETRY, None),
        (413, None, Verdict.FAILED, None),
        (400, None, Verdict.FAILED, None),
    ],
)
async def test_each_answer_of_the_push_service_has_its_verdict(
    tmp_path, store, box, push_service, status, retry_after, verdict, wait
):
    sub = push_service.subscribe()
    push_service.answer(sub.id, status, retry_after=retry_after)
    channel = WebPushChannel(settings(tmp_path), store, box)
    try:
        attempt = await channel.deliver(delivery(SUCCEEDED), *target(sub))
    finally:
        await channel.aclose()
    assert (attempt.verdict, attempt.status_code, attempt.retry_after_s) == (verdict, status, wait)
    assert attempt.verdict is Verdict.DELIVERED or attempt.error


async def test_a_message_signed_with_another_key_is_refused(tmp_path, store, box, push_service):
    sub = push_service.subscribe(server_key="B" + "A" * 86)  # subscribed with some other server's key
    channel = WebPushChannel(settings(tmp_path), store, box)
    try:
        attempt = await channel.deliver(delivery(SUCCEEDED), *target(sub))
    finally:
        await channel.aclose()
    assert attempt.verdict is Verdict.FAILED and attempt.status_code == 403
    assert "another key" in (attempt.error or "")


@pytest.mark.parametrize(
    ("endpoint", "allowed", "words"),
    [
        ("https://127.0.0.1:9/push/x", False, "a loopback address"),
        ("https://10.1.2.3/push/x", False, "a private address"),
        ("https://localhost/push/x", False, "a loopback name"),
        ("https://0x7f.1/push/x", False, "resolves to 127.0.0.1, a loopback address"),
        ("https://192.168.1.1/push/x", False, "a private address"),
        ("https://169.254.169.254/latest", True, "cloud metadata"),  # even where allowed
        ("http://push.example/x", False, "must be an https:// URL"),
    ],
)
async def test_an_endpoint_on_a_private_address_is_not_sent_to_unless_allowed(
    tmp_path, store, box, endpoint, allowed, words
):
    channel = WebPushChannel(Settings(data_dir=tmp_path / "data", allow_private_remotes=allowed), store, box)
    keys = json.dumps({"p256dh": KEYS.p256dh, "auth": KEYS.auth})
    try:
        attempt = await channel.deliver(
            delivery(SUCCEEDED), Target("wp_1", 1, "webpush", endpoint, None, (), 0.0), keys
        )
    finally:
        await channel.aclose()
    assert attempt.verdict is Verdict.FAILED and attempt.status_code is None
    assert words in (attempt.error or "")


async def test_unreadable_keys_remove_the_subscription(tmp_path, store, box, push_service):
    sub = push_service.subscribe()
    channel = WebPushChannel(settings(tmp_path), store, box)
    try:
        attempt = await channel.deliver(delivery(SUCCEEDED), target(sub)[0], '{"p256dh": "x", "auth": "y"}')
    finally:
        await channel.aclose()
    assert attempt.verdict is Verdict.GONE and push_service.requests == []


async def test_every_daemon_on_a_store_signs_with_the_one_stored_pair(tmp_path, box):
    first = await SqliteStore.open(tmp_path / "data")
    try:
        keys = await vapid_keys(first, box)
        stored = await first.cluster_value(VAPID_KEY, b"other", node="n2")
        assert b"PRIVATE KEY" not in stored and "PRIVATE KEY" in box.decrypt(stored)  # encrypted at rest
    finally:
        await first.aclose()
    again = await SqliteStore.open(tmp_path / "data")  # a restart, or another node on the store
    try:
        assert (await vapid_keys(again, box)).application_server_key == keys.application_server_key
    finally:
        await again.aclose()


def test_model_written_text_is_plain_capped_and_the_url_is_only_the_tasks_own():
    question = "<b>Which</b>\x1b[31m file?\n\u2028" + "x" * 1000
    note = notification_for(
        {
            "kind": "task.waiting_input",
            "question": question,
            "task": {**SUCCEEDED["task"], "status": "waiting_input"},
        }
    )
    assert note["title"] == "Task asks you: calc"
    assert note["body"].startswith("<b>Which</b> [31m file? xxx") and len(note["body"]) == 240
    assert "\x1b" not in note["body"] and "\n" not in note["body"]
    assert note["url"] == f"/#/task/{TASK_ID}"
    evil = notification_for({"kind": "task.failed", "task": {"id": "../../evil.example/x", "error": "boom"}})
    assert evil["url"] == "/" and evil["body"] == "boom"
    secret_host = notification_for(
        {"kind": "task.failed", "task": {"id": TASK_ID, "repo_url": "https://user:tok@host.example/o/r.git"}}
    )
    assert secret_host["title"] == "Task failed: r"  # never the host or its credentials


def test_the_default_subject_is_the_public_origin_or_a_mailto():
    assert default_subject("https://agentd.example:8443/app") == "https://agentd.example:8443"
    assert default_subject("http://127.0.0.1:8080") == "mailto:agentd@localhost"
    assert default_subject(None) == "mailto:agentd@localhost"
