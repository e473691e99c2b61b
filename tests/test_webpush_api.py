"""The Web Push routes of a real daemon over real HTTP: the VAPID key, subscribing (idempotent
per endpoint), listing and unsubscribing, each person's own only, and the address rule."""

from __future__ import annotations

import base64
from contextlib import asynccontextmanager

import trio
from cryptography.fernet import Fernet

from .fakes.phone import running_daemon
from .fakes.push_service import FakePushService
from .test_api_tasks import undescribed


def browser_subscription(push: FakePushService, **extra):
    sub = push.subscribe()
    return sub, {**sub.as_browser_json(), "expirationTime": None, **extra}


@asynccontextmanager
async def _alice_with_a_subscription(tmp_path):
    """A push service and a daemon, alice signed in: yields the push service, the daemon's
    ``Server``, alice, her HTTP client, and the body a browser posts to subscribe (a
    subscription of that push service)."""
    push = FakePushService()
    with push:
        async with running_daemon(tmp_path) as server:
            alice, token = await server.user("alice")
            async with server.client(token) as http:
                _sub, body = browser_subscription(push)
                yield push, server, alice, http, body


async def test_subscribe_list_and_unsubscribe_each_only_ones_own(tmp_path):
    push = FakePushService()
    with push:
        async with running_daemon(tmp_path) as server:
            _alice, alice_token = await server.user("alice")
            _bob, bob_token = await server.user("bob")
            async with server.client(alice_token) as alice, server.client(bob_token) as bob:
                key = (await alice.get("/api/push/key")).json()["public_key"]
                raw = base64.urlsafe_b64decode(key + "=")
                assert len(raw) == 65 and raw[0] == 4  # an uncompressed P-256 point
                assert (await bob.get("/api/push/key")).json()["public_key"] == key  # the server's one key

                sub, body = browser_subscription(push)
                made = await alice.post("/api/push/subscriptions", json=body)
                assert made.status_code == 201, made.text
                made = made.json()
                assert made["id"].startswith("wp_") and made["endpoint"] == sub.endpoint
                assert made["events"] == [
                    "task.succeeded", "task.failed", "task.cancelled", "task.waiting_input", "task.pr_opened"
                ]  # fmt: skip
                again = await alice.post("/api/push/subscriptions", json=body)
                assert (again.status_code, again.json()["id"]) == (200, made["id"])  # idempotent
                fewer = await alice.post(
                    "/api/push/subscriptions", json={**body, "events": ["task.waiting_input"]}
                )
                assert fewer.status_code == 201 and fewer.json()["events"] == ["task.waiting_input"]
                listed = (await alice.get("/api/push/subscriptions")).json()["subscriptions"]
                assert [s["id"] for s in listed] == [fewer.json()["id"]]  # replaced, not added
                assert "keys" not in listed[0] and "p256dh" not in str(listed)

                # Bob sees none of it and can remove none of it; he is told there is no such thing.
                assert (await bob.get("/api/push/subscriptions")).json() == {"subscriptions": []}
                gone = await bob.request("DELETE", "/api/push/subscriptions", json={"endpoint": sub.endpoint})
                assert gone.status_code == 404
                assert (await bob.delete(f"/api/push/subscriptions/{fewer.json()['id']}")).status_code == 404
                assert len((await alice.get("/api/push/subscriptions")).json()["subscriptions"]) == 1
                stored = await server.store.list_targets(_alice.id, kind="webpush")
                assert sub.auth not in str(stored[0].secret_enc)  # the keys are kept encrypted

                other, body2 = browser_subscription(push)
                second = (await alice.post("/api/push/subscriptions", json=body2)).json()
                ended = await alice.request(
                    "DELETE", "/api/push/subscriptions", json={"endpoint": other.endpoint}
                )
                assert ended.status_code == 204
                assert (
                    await alice.delete(f"/api/push/subscriptions/{fewer.json()['id']}")
                ).status_code == 204
                assert (await alice.get("/api/push/subscriptions")).json() == {"subscriptions": []}
                assert (await alice.delete(f"/api/push/subscriptions/{second['id']}")).status_code == 404

                async with server.client() as anonymous:
                    assert (await anonymous.get("/api/push/key")).status_code == 401
                    assert (await anonymous.post("/api/push/subscriptions", json=body)).status_code == 401


async def test_malformed_subscriptions_are_refused_with_what_is_wrong(tmp_path):
    async with _alice_with_a_subscription(tmp_path) as (_push, _server, _alice, http, body):
        bad_key = {**body, "keys": {"p256dh": "B" * 87, "auth": body["keys"]["auth"]}}
        answer = await http.post("/api/push/subscriptions", json=bad_key)
        assert answer.status_code == 422 and "P-256" in answer.json()["error"]["message"]
        answer = await http.post("/api/push/subscriptions", json={**body, "events": ["task.exploded"]})
        assert answer.status_code == 422 and "task.exploded" in answer.json()["error"]["message"]
        answer = await http.post("/api/push/subscriptions", json={**body, "endpoint": "ftp://x/y"})
        assert answer.status_code == 422 and "https://" in answer.json()["error"]["message"]


async def test_an_endpoint_on_a_private_address_is_refused_unless_the_operator_allows_it(tmp_path):
    push = FakePushService()
    with push:
        _sub, body = browser_subscription(push)
        https_loopback = {**body, "endpoint": body["endpoint"].replace("http://", "https://")}
        keys = (Fernet.generate_key().decode(),)  # one store (on PostgreSQL), one key for both daemons
        async with running_daemon(tmp_path / "strict", allow_local_remotes=False, secret_keys=keys) as server:
            _alice, token = await server.user("alice")
            async with server.client(token) as http:
                for refused in (https_loopback, {**body, "endpoint": "https://10.0.0.8/push/1"}):
                    answer = await http.post("/api/push/subscriptions", json=refused)
                    assert answer.status_code == 422, answer.text
                    error = answer.json()["error"]
                    assert error["code"] == "address_refused" and "allow_private_remotes" in error["message"]
                assert (await http.get("/api/push/subscriptions")).json() == {"subscriptions": []}
        async with running_daemon(
            tmp_path / "lenient", allow_private_remotes=True, secret_keys=keys
        ) as server:
            _alice, token = await server.user("alice")
            async with server.client(token) as http:
                assert (await http.post("/api/push/subscriptions", json=https_loopback)).status_code == 201


async def test_the_push_routes_are_described_in_the_openapi_document(tmp_path):
    async with running_daemon(tmp_path) as server:
        async with server.client() as http:
            spec = (await http.get("/openapi.json")).json()
    paths = spec["paths"]
    assert {"get"} <= set(paths["/api/push/key"])
    assert {"get", "post", "delete"} <= set(paths["/api/push/subscriptions"])
    assert "delete" in paths["/api/push/subscriptions/{subscription_id}"]
    assert [m for m in undescribed(spec) if "push" in m.lower() or "Subscri" in m] == []


async def test_subscribe_calls_racing_for_one_endpoint_leave_one_subscription(tmp_path):
    """A browser retrying (or two tabs) posts one subscription at once several times: one row is
    kept, so each notification is pushed once (schema v15's unique index; a renewal with other
    keys replaces the row in the insert's own transaction)."""
    async with _alice_with_a_subscription(tmp_path) as (push, server, alice, client, body):
        answers: list[int] = []

        async def post(payload: dict) -> None:
            answers.append((await client.post("/api/push/subscriptions", json=payload)).status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(post, body)
        assert set(answers) <= {200, 201} and 201 in answers
        assert len(await server.store.list_targets(alice.id, kind="webpush")) == 1

        renewed, renewed_body = browser_subscription(push)
        renewed_body = {**renewed_body, "endpoint": body["endpoint"]}  # new keys, same endpoint
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(post, renewed_body)
        kept = await server.store.list_targets(alice.id, kind="webpush")
        assert len(kept) == 1 and renewed.auth in server.daemon.secrets.decrypt(kept[0].secret_enc)
