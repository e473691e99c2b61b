"""Share links (issue 22): the store on both backends, and the HTTP routes of a real daemon.

A share link is a read-only, expiring, revocable token for one task. Its holder reads that one
task (``/api/shared/...`` with ``Authorization: Share <token>``) and nothing else; an unknown,
expired or revoked link is 401 ``share_link_gone``; another user's task is 404 to every share
route, as to every task route. Expiry is made by moving the store's clock (``store.now``), not
by waiting.
"""

from __future__ import annotations

import argparse

import pytest

from control.cli import build_parser
from control.client import CommandRefused, ControlClient
from control.share_cli import duration
from daemon.errors import NotFound
from daemon.store.share_queries import SHARE_ID_PREFIX
from daemon.tokens import hash_token
from daemon.usecases import policy, shares
from daemon.usecases.policy import Viewer

from .conftest import fake_wall
from .fakes.phone import running_daemon

DAY = 86400.0


def share_header(token: str) -> dict[str, str]:
    return {"Authorization": f"Share {token}"}


# -- the store, on SQLite and PostgreSQL ---------------------------------------------------------


async def test_a_link_resolves_while_live_and_revoking_is_idempotent(store, alice):
    task, _ = await store.create_task(user_id=alice.id, repo_url="file:///r", prompt="p")
    now = store.now()
    store.now = lambda: now
    link = await store.add_share_link(task.id, alice.id, hash_token("t1"), expires_at=now + 60, live_cap=5)
    assert link is not None and link.id.startswith(SHARE_ID_PREFIX) and link.created_at == now
    assert await store.share_link_by_token_hash(hash_token("t1")) == link
    assert await store.share_link_by_token_hash(hash_token("t2")) is None
    assert await store.list_share_links(task.id) == [link]

    revoked = await store.revoke_share_link(task.id, link.id)
    assert revoked is not None and revoked.revoked_at == now and not revoked.live(now)
    store.now = lambda: now + 5
    again = await store.revoke_share_link(task.id, link.id)
    assert again == revoked  # the first revocation stands
    assert await store.share_link_by_token_hash(hash_token("t1")) is None
    assert await store.revoke_share_link("another-task", link.id) is None
    assert await store.revoke_share_link(task.id, "sh_unknown") is None


async def test_an_expired_link_or_one_whose_maker_is_disabled_opens_nothing(store, alice, bob):
    task, _ = await store.create_task(user_id=alice.id, repo_url="file:///r", prompt="p")
    now = store.now()
    await store.add_share_link(task.id, alice.id, hash_token("soon"), expires_at=now + 10, live_cap=5)
    await store.add_share_link(task.id, bob.id, hash_token("bobs"), expires_at=now + 100, live_cap=5)
    store.now = lambda: now + 10  # expires_at is the first instant it no longer works
    assert await store.share_link_by_token_hash(hash_token("soon")) is None
    assert await store.share_link_by_token_hash(hash_token("bobs")) is not None
    await store.revoke_user("bob")
    assert await store.share_link_by_token_hash(hash_token("bobs")) is None
    assert [link.live(store.now()) for link in await store.list_share_links(task.id)] == [False, True]


async def test_a_task_has_at_most_its_cap_of_live_links(store, alice):
    task, _ = await store.create_task(user_id=alice.id, repo_url="file:///r", prompt="p")
    now = fake_wall()
    links = [
        await store.add_share_link(task.id, alice.id, hash_token(f"t{i}"), expires_at=now + 60, live_cap=2)
        for i in range(3)
    ]
    assert links[0] is not None and links[1] is not None and links[2] is None
    await store.revoke_share_link(task.id, links[0].id)
    assert await store.add_share_link(task.id, alice.id, hash_token("t9"), expires_at=now + 60, live_cap=2)


async def test_a_share_viewer_sees_its_one_task_by_its_whole_id_and_lists_nothing(store, alice):
    task, _ = await store.create_task(user_id=alice.id, repo_url="file:///r", prompt="p")
    other, _ = await store.create_task(user_id=alice.id, repo_url="file:///r", prompt="q")
    viewer = Viewer.shared(task.id)
    assert policy.may_see(viewer, task) and not policy.may_see(viewer, other)
    assert (await policy.visible_task(store, viewer, task.id)).id == task.id
    for ref in (other.id, policy.IdPrefix(other.id[:10]), policy.IdPrefix(task.id[:10])):
        with pytest.raises(NotFound):
            await policy.visible_task(store, viewer, ref)  # no prefix look-up either
    with pytest.raises(NotFound):
        policy.owner_filter(viewer, None, mine=True)
    with pytest.raises(ValueError):
        Viewer(alice.id, "alice", False, shared_task=task.id)  # a user is no share viewer


# -- HTTP, against a real daemon -------------------------------------------------------------------

TASK = {"repo_url": "file:///repo", "prompt": "Add a HELLO.md"}


async def two_tasks_and_a_link(server, token: str, **share: object) -> tuple[str, str, dict]:
    async with server.client(token) as http:
        shared = (await http.post("/api/tasks", json=TASK)).json()["id"]
        other = (await http.post("/api/tasks", json={**TASK, "prompt": "another"})).json()["id"]
        made = await http.post(f"/api/tasks/{shared}/shares", json=share)
        assert made.status_code == 201, made.text
        return shared, other, made.json()


async def test_a_share_link_shows_its_one_task_and_nothing_else(tmp_path):
    async with running_daemon(tmp_path, public_url="https://agentd.example") as server:
        _, token = await server.user("alice")
        shared, other, made = await two_tasks_and_a_link(server, token)
        link_token = made["token"]
        assert made["url"] == "https://agentd.example/#/s/" + link_token  # in the fragment
        assert made["expires_at"] == pytest.approx(made["created_at"] + 7 * DAY)
        async with server.client(headers=share_header(link_token)) as viewer:
            task = await viewer.get("/api/shared/task")
            assert task.status_code == 200, task.text
            body = task.json()
            async with server.client(token) as owner:  # what the owner sees of it, no more
                assert body == (await owner.get(f"/api/tasks/{shared}")).json()
            assert body["id"] == shared and body["prompt"] == TASK["prompt"]
            events = (await viewer.get("/api/shared/events", params={"after": 0})).json()
            assert [e["event"] for e in events["events"]][:1] == ["task.created"]
            assert {e["task_id"] for e in events["events"]} == {shared}
            # Nothing else answers to a share token: every other route wants a bearer token.
            for method, path, body_ in [
                ("GET", "/api/tasks", None),
                ("GET", f"/api/tasks/{shared}", None),
                ("GET", f"/api/tasks/{other}", None),
                ("GET", f"/api/tasks/{other}/events", None),
                ("POST", f"/api/tasks/{shared}/messages", {"text": "do more"}),
                ("POST", f"/api/tasks/{shared}/cancel", None),
                ("POST", f"/api/tasks/{shared}/shares", {}),
                ("GET", f"/api/tasks/{shared}/shares", None),
                ("GET", "/api/me", None),
            ]:
                answer = await viewer.request(method, path, json=body_)
                assert answer.status_code == 401, (method, path, answer.text)
        # Nor does it work as a bearer token, or from a query string.
        async with server.client(link_token) as http:
            assert (await http.get("/api/tasks")).status_code == 401
            assert (await http.get("/api/shared/task")).status_code == 401
        async with server.client() as http:
            answer = await http.get("/api/shared/task", params={"token": link_token, "share": link_token})
            assert answer.status_code == 401 and answer.json()["error"]["code"] == "share_link_gone"
        # Nothing was cancelled or written to the task.
        assert (await server.store.get_task(shared)).status.value != "cancelled"
        assert "user.message" not in {event.type for event in await server.store.read_events(shared)}


async def test_revoked_and_expired_links_are_refused_alike(tmp_path):
    async with running_daemon(tmp_path) as server:
        _, token = await server.user("alice")
        shared, _, first = await two_tasks_and_a_link(server, token)
        async with server.client(token) as http:
            second = (await http.post(f"/api/tasks/{shared}/shares", json={"ttl_s": 60})).json()
            assert second["expires_at"] == pytest.approx(second["created_at"] + 60)
            for _ in range(2):  # idempotent
                gone = await http.delete(f"/api/tasks/{shared}/shares/{first['id']}")
                assert gone.status_code == 204, gone.text
            listed = (await http.get(f"/api/tasks/{shared}/shares")).json()["shares"]
            assert [(s["id"], s["live"], s["revoked_at"] is not None) for s in listed] == [
                (first["id"], False, True),
                (second["id"], True, False),
            ]
            assert "token" not in listed[0]
        async with server.client(headers=share_header(first["token"])) as viewer:
            revoked = await viewer.get("/api/shared/task")
        async with server.client(headers=share_header(second["token"])) as viewer:
            assert (await viewer.get("/api/shared/task")).status_code == 200
            now = server.store.now()
            server.store.now = lambda: now + 61  # past its ttl
            expired = await viewer.get("/api/shared/events")
        async with server.client(headers=share_header("agentd_share_unknown")) as viewer:
            unknown = await viewer.get("/api/shared/task")
        for answer in (revoked, expired, unknown):
            assert answer.status_code == 401
            assert answer.json()["error"] == revoked.json()["error"]  # nothing tells them apart
            assert answer.json()["error"]["code"] == "share_link_gone"
            assert answer.headers["WWW-Authenticate"].startswith("Share")


async def test_another_user_cannot_make_list_or_revoke_links_of_your_task(tmp_path):
    async with running_daemon(tmp_path) as server:
        _, alice = await server.user("alice")
        _, bob = await server.user("bob")
        shared, _, made = await two_tasks_and_a_link(server, alice)
        async with server.client(bob) as http:
            for method, path, body in [
                ("POST", f"/api/tasks/{shared}/shares", {}),
                ("GET", f"/api/tasks/{shared}/shares", None),
                ("DELETE", f"/api/tasks/{shared}/shares/{made['id']}", None),
                ("POST", "/api/tasks/no-such-task/shares", {}),
            ]:
                answer = await http.request(method, path, json=body)
                assert answer.status_code == 404, (method, path, answer.text)
                assert answer.json()["error"]["message"].startswith("no task ")
        # Named by the link alone (agentctl's way), another's link is no link at all.
        bob_user = await server.store.user_by_login("bob")
        with pytest.raises(NotFound, match=r"^no share link sh_"):
            await shares.revoke_share(server.web.services, Viewer.of(bob_user), None, made["id"])
        with pytest.raises(NotFound, match="cannot manage"):  # nor does a link manage links
            await shares.list_shares(server.web.services, Viewer.shared(shared), shared)
        async with server.client(alice) as http:
            assert (await http.delete(f"/api/tasks/{shared}/shares/sh_0000")).status_code == 404
            listed = (await http.get(f"/api/tasks/{shared}/shares")).json()["shares"]
            assert [s["live"] for s in listed] == [True]  # bob revoked nothing


async def test_lifetimes_are_capped_and_so_are_live_links_per_task(tmp_path):
    async with running_daemon(tmp_path, share_max_ttl_s=3600, share_links_per_task=2) as server:
        _, token = await server.user("alice")
        shared, _, made = await two_tasks_and_a_link(server, token)
        assert made["expires_at"] == pytest.approx(made["created_at"] + 3600)  # the default, capped
        async with server.client(token) as http:
            for ttl in (3601, 0, -1, "1d", True):
                answer = await http.post(f"/api/tasks/{shared}/shares", json={"ttl_s": ttl})
                assert answer.status_code in (400, 422), (ttl, answer.text)
            assert (await http.post(f"/api/tasks/{shared}/shares", json={"ttl_s": 3600})).status_code == 201
            third = await http.post(f"/api/tasks/{shared}/shares", json={})
            assert third.status_code == 409 and "revoke one" in third.json()["error"]["message"]


# -- agentctl ------------------------------------------------------------------------------------


async def test_agentctl_makes_lists_and_revokes_links_of_any_task(tmp_path):
    async with running_daemon(tmp_path, public_url="https://agentd.example") as server:
        _, token = await server.user("alice")
        shared, _, _ = await two_tasks_and_a_link(server, token)
        async with await ControlClient.connect(server.daemon.settings.control_socket) as control:
            made = await control.call("shares.create", id=shared[:10], ttl_s=duration("12h"))
            assert made["url"] == "https://agentd.example/#/s/" + made["token"]
            assert made["expires_at"] == pytest.approx(made["created_at"] + 12 * 3600)
            assert [s["live"] for s in await control.call("shares.list", id=shared)] == [True, True]
            revoked = await control.call("shares.revoke", id=made["id"])
            assert revoked["live"] is False and revoked["revoked_at"] is not None
            with pytest.raises(CommandRefused, match="no share link sh_nope"):
                await control.call("shares.revoke", id="sh_nope")
            with pytest.raises(CommandRefused, match="ttl_s must be a number"):
                await control.call("shares.create", id=shared, ttl_s="1d")
        async with server.client(headers=share_header(made["token"])) as viewer:
            assert (await viewer.get("/api/shared/task")).status_code == 401


def test_agentctl_reads_durations_as_people_write_them():
    assert [duration(text) for text in ("90", "90s", "15m", "12h", "1d", "1.5d")] == [
        90,
        90,
        900,
        43200,
        86400,
        129600,
    ]
    for bad in ("", "0", "-1d", "1w", "d", "1 d x"):
        with pytest.raises(argparse.ArgumentTypeError):
            duration(bad)
    parsed = build_parser().parse_args(["share", "01abcdef", "--ttl", "7d"])
    assert (parsed.id, parsed.ttl) == ("01abcdef", 7 * 86400)
