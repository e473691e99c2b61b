"""GitHub sign-in end to end against a fake GitHub OAuth server, and the phone's PKCE leg."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import trio

from control.client import CommandRefused, ControlClient
from daemon.errors import AgentdError, Forbidden, NotFound
from daemon.maintenance import collect_periodically, forget_expired
from daemon.secrets import load_secret_box
from daemon.web.github_oauth import CODE_TTL_S

from .fakes.github_oauth import FakeGitHubOAuth
from .fakes.phone import running_daemon

APP = "agentd-phone://signed-in"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@asynccontextmanager
async def daemon_with_github(tmp_path, **settings) -> AsyncIterator[tuple[Any, FakeGitHubOAuth]]:
    """A daemon whose GitHub (sign-in and API) is a ``FakeGitHubOAuth``: (server, github)."""
    github = FakeGitHubOAuth(client_id="cid", client_secret="csecret")
    async with trio.open_nursery() as nursery:
        github_url = await nursery.start(github.serve)
        async with running_daemon(
            tmp_path,
            github_oauth_url=github_url,
            github_api=github_url,
            github_client_id="cid",
            github_client_secret="csecret",
            oauth_login_ttl_s=60,
            **settings,
        ) as server:
            yield server, github
        nursery.cancel_scope.cancel()


@pytest.fixture
async def world(tmp_path):
    async with daemon_with_github(tmp_path, app_redirects=(APP,)) as pair:
        yield pair


def on(server, location: str) -> str:
    """``location`` (an address of some node) on ``server`` instead: a load balancer's choice."""
    parts = urlsplit(location)
    return f"{server.url}{parts.path}?{parts.query}"


async def sign_in(
    server, github, verifier_challenge=None, *, app_state="s1", callback_on=None, app_redirect=APP
) -> dict[str, str]:
    """Walk the browser through login -> GitHub -> callback to ``app_redirect``; return its query.
    ``callback_on``: the daemon GitHub's redirect back reaches (another node), else ``server``."""
    verifier, challenge = verifier_challenge or pkce()
    async with server.client() as browser:
        start = await browser.get(
            "/auth/github/login",
            params={
                "app_redirect": app_redirect,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "state": app_state,
            },
        )
        assert start.status_code == 302, start.text
        at_github = await browser.get(start.headers["Location"])
        assert at_github.status_code == 302
        back = await browser.get(on(callback_on or server, at_github.headers["Location"]))
        assert back.status_code == 302
        assert back.headers["Location"].startswith(app_redirect + "?")
        return {**query(back.headers["Location"]), "_verifier": verifier}


async def redeem(server, answer: dict[str, str], verifier: str | None = None, *, ok: bool = True) -> dict:
    """The app's last leg: the one-time code for an API token; the token response's body.
    ``ok`` False: the code is refused (an ``invalid_grant`` error's body)."""
    assert "code" in answer, answer
    async with server.client() as phone:
        issued = await phone.post(
            "/auth/token", json={"code": answer["code"], "code_verifier": verifier or answer["_verifier"]}
        )
    assert issued.status_code == (200 if ok else 400), issued.text
    assert ok or issued.json()["error"]["code"] == "invalid_grant"
    return issued.json()


async def test_phone_sign_in_end_to_end(world):
    server, github = world
    verifier, challenge = pkce()
    answer = await sign_in(server, github, (verifier, challenge))
    assert answer["state"] == "s1" and "code" in answer
    authorize = github.authorize_requests[-1]
    assert authorize["code_challenge_method"] == "S256" and authorize["client_id"] == "cid"
    assert authorize["redirect_uri"] == server.url + "/auth/github/callback"
    async with server.client() as phone:
        issued = await phone.post("/auth/token", json={"code": answer["code"], "code_verifier": verifier})
        assert issued.status_code == 200, issued.text
        body = issued.json()
        assert body["user"]["login"] == "octocat" and body["token_type"] == "bearer"
        again = await phone.post("/auth/token", json={"code": answer["code"], "code_verifier": verifier})
        assert again.status_code == 400 and again.json()["error"]["code"] == "invalid_grant"
    async with server.client(body["token"]) as phone:
        assert (await phone.get("/api/tasks")).status_code == 200
    user = await server.store.user_by_login("octocat")
    assert (user.github_id, user.name) == (583231, "The Octocat")
    stored = await server.store.github_token_enc(user.id)
    (plain,) = github.tokens
    assert plain.encode() not in stored  # encrypted at rest
    assert load_secret_box(server.daemon.settings).decrypt(stored) == plain


async def test_a_wrong_verifier_spends_the_code(world):
    server, github = world
    verifier, challenge = pkce()
    answer = await sign_in(server, github, (verifier, challenge))
    async with server.client() as phone:
        wrong = await phone.post("/auth/token", json={"code": answer["code"], "code_verifier": pkce()[0]})
        assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "invalid_grant"
        right = await phone.post("/auth/token", json={"code": answer["code"], "code_verifier": verifier})
        assert right.status_code == 400


async def test_login_refuses_unlisted_redirects_and_missing_pkce(world):
    server, _ = world
    _, challenge = pkce()
    async with server.client() as browser:
        for params in [
            {"app_redirect": "https://evil.example/cb", "code_challenge": challenge},
            {"app_redirect": APP},
            {"app_redirect": APP, "code_challenge": challenge, "code_challenge_method": "plain"},
        ]:
            response = await browser.get("/auth/github/login", params=params)
            assert response.status_code == 400, params
            assert response.json()["error"]["code"] in ("invalid_redirect", "invalid_request")


async def test_callback_state_is_single_use_and_denial_reaches_the_app(world):
    server, github = world
    _, challenge = pkce()
    async with server.client() as browser:
        start = await browser.get(
            "/auth/github/login", params={"app_redirect": APP, "code_challenge": challenge}
        )
        at_github = await browser.get(start.headers["Location"])
        assert (await browser.get(at_github.headers["Location"])).status_code == 302
        replay = await browser.get(at_github.headers["Location"])
        assert replay.status_code == 400 and replay.json()["error"]["code"] == "invalid_state"
        forged = await browser.get("/auth/github/callback", params={"code": "x", "state": "forged"})
        assert forged.status_code == 400
    github.deny = True
    answer = await sign_in(server, github)
    assert answer == {"error": "access_denied", "state": "s1", "_verifier": answer["_verifier"]}


async def test_a_code_or_a_sign_in_past_its_deadline_is_refused(world, monkeypatch):
    server, github = world
    answer = await sign_in(server, github)
    wall = server.store.now
    monkeypatch.setattr(server.store, "now", lambda: wall() + CODE_TTL_S)  # the store's clock
    async with server.client() as phone:
        late = await phone.post(
            "/auth/token", json={"code": answer["code"], "code_verifier": answer["_verifier"]}
        )
    assert late.status_code == 400 and late.json()["error"]["code"] == "invalid_grant"
    monkeypatch.setattr(server.store, "now", wall)
    _, challenge = pkce()
    async with server.client() as browser:
        start = await browser.get(
            "/auth/github/login", params={"app_redirect": APP, "code_challenge": challenge}
        )
        at_github = await browser.get(start.headers["Location"])
        monkeypatch.setattr(server.store, "now", lambda: wall() + 60)  # oauth_login_ttl_s
        late = await browser.get(at_github.headers["Location"])
    assert late.status_code == 400 and late.json()["error"]["code"] == "invalid_state"


async def test_sign_ins_in_progress_are_bounded(world):
    server, github = world
    server.web.oauth.max_pending = 2
    _, challenge = pkce()
    params = {"app_redirect": APP, "code_challenge": challenge}
    async with server.client() as browser:
        first, second, third = [await browser.get("/auth/github/login", params=params) for _ in range(3)]
        assert (first.status_code, second.status_code, third.status_code) == (302, 302, 429)
        assert third.headers["Retry-After"] == "60"
        finished = await browser.get((await browser.get(first.headers["Location"])).headers["Location"])
        assert finished.headers["Location"].startswith(APP + "?code=")
        assert (await browser.get("/auth/github/login", params=params)).status_code == 302  # its place


async def test_a_disabled_account_cannot_sign_in_again(world):
    server, github = world
    await redeem(server, await sign_in(server, github))
    await server.store.revoke_user("octocat")
    answer = await sign_in(server, github)
    assert answer["error"] == "account_disabled" and "code" not in answer
    assert [u.login for u in await server.store.list_users()] == ["octocat"]


async def test_sign_in_is_404_when_not_configured(tmp_path):
    async with running_daemon(tmp_path) as server:
        async with server.client() as browser:
            response = await browser.get("/auth/github/login", params={"app_redirect": APP})
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_configured"


# ------------------------------------------------ identity: GitHub's numeric id, never the login

OCTOCAT_ID = 583231


async def test_a_login_that_names_a_local_account_gets_a_new_account(world):
    server, github = world
    local = await server.store.upsert_user("octocat")  # agentctl user-add octocat
    body = await redeem(server, await sign_in(server, github))
    assert body["user"]["login"] == f"octocat-gh{OCTOCAT_ID}" and body["user"]["id"] != local.id
    assert await server.store.user_by_login("octocat") == local  # untouched: no id, no token
    assert await server.store.github_token_enc(local.id) is None
    made = await server.store.user_by_github_id(OCTOCAT_ID)
    assert (made.id, made.is_operator) == (body["user"]["id"], False)


async def test_an_operator_account_is_not_reached_by_a_sign_in_with_its_login(world):
    server, github = world
    await server.store.upsert_user("octocat", is_operator=True)
    body = await redeem(server, await sign_in(server, github))
    assert body["user"]["login"] == f"octocat-gh{OCTOCAT_ID}"
    async with server.client(body["token"]) as phone:
        assert (await phone.get("/admin/api/tasks")).status_code == 403
        assert (await phone.get("/api/tasks")).status_code == 200


async def test_when_the_login_and_its_fallback_are_taken_the_sign_in_is_refused(world):
    server, github = world
    await server.store.upsert_user("octocat")
    await server.store.upsert_user(f"octocat-gh{OCTOCAT_ID}")
    answer = await sign_in(server, github)
    assert answer["error"] == "login_taken" and "code" not in answer
    assert f"agentctl user-link LOGIN {OCTOCAT_ID}" in answer["error_description"]
    assert await server.store.user_by_github_id(OCTOCAT_ID) is None


async def test_a_renamed_github_user_keeps_their_account(world):
    server, github = world
    first = await redeem(server, await sign_in(server, github))
    github.profile = {"login": "octo-renamed", "id": OCTOCAT_ID, "name": "Octo"}
    again = await redeem(server, await sign_in(server, github))
    assert again["user"] == {"id": first["user"]["id"], "login": "octocat", "name": "Octo"}
    assert [u.login for u in await server.store.list_users()] == ["octocat"]


async def test_a_reused_login_never_reaches_the_account_of_its_former_owner(world):
    server, github = world
    former = await redeem(server, await sign_in(server, github))
    github.profile = {"login": "octocat", "id": 999, "name": "Not the Octocat"}  # took the name
    newcomer = await redeem(server, await sign_in(server, github))
    assert newcomer["user"]["login"] == "octocat-gh999"
    assert newcomer["user"]["id"] != former["user"]["id"]


async def test_an_operator_links_an_account_and_that_github_user_reaches_it(world):
    server, github = world
    admin = await server.store.upsert_user("admin", is_operator=True)
    async with await ControlClient.connect(server.daemon.settings.control_socket_path) as ctl:
        linked = await ctl.call("users.link", login="admin", github_id=OCTOCAT_ID)
        assert linked == {"login": "admin", "user_id": admin.id, "github_id": OCTOCAT_ID, "is_operator": True}
        await server.store.upsert_user("bob")
        with pytest.raises(CommandRefused, match="already linked to the account 'admin'") as info:
            await ctl.call("users.link", login="bob", github_id=OCTOCAT_ID)
        assert info.value.code == "github_id_taken"
        with pytest.raises(CommandRefused) as info:
            await ctl.call("users.link", login="nobody-here", github_id=7)
        assert info.value.code == "not_found"
    body = await redeem(server, await sign_in(server, github))
    assert (body["user"]["id"], body["user"]["login"]) == (admin.id, "admin")
    async with server.client(body["token"]) as phone:
        assert (await phone.get("/admin/api/tasks")).status_code == 200


async def test_user_add_operator_refuses_an_account_a_sign_in_made(world):
    server, github = world
    await redeem(server, await sign_in(server, github))
    async with await ControlClient.connect(server.daemon.settings.control_socket_path) as ctl:
        with pytest.raises(CommandRefused, match=f"user-link octocat {OCTOCAT_ID} --operator"):
            await ctl.call("users.add", login="octocat", operator=True)
        assert not (await server.store.user_by_login("octocat")).is_operator
        confirmed = await ctl.call("users.link", login="octocat", github_id=OCTOCAT_ID, operator=True)
        assert confirmed["is_operator"] is True


# ------------------------------------------------------------- the store, on every backend


async def test_sign_in_finds_by_id_and_link_moves_no_one_else(store):
    local = await store.upsert_user("octocat")
    made = await store.sign_in_github(1, "octocat", name="O", token_enc=b"t1")
    assert (made.login, made.github_id, made.name) == ("octocat-gh1", 1, "O")
    assert await store.github_token_enc(made.id) == b"t1"
    renamed = await store.sign_in_github(1, "octo2", name=None, token_enc=b"t2")
    assert (renamed.id, renamed.login, renamed.name) == (made.id, "octocat-gh1", "O")
    assert await store.github_token_enc(made.id) == b"t2"
    with pytest.raises(AgentdError) as info:
        await store.link_github("octocat", 1)
    assert info.value.code == "github_id_taken"
    with pytest.raises(NotFound):
        await store.link_github("ghost", 5)
    linked = await store.link_github("octocat", 2, operator=True)
    assert (linked.id, linked.github_id, linked.is_operator) == (local.id, 2, True)
    assert (await store.sign_in_github(2, "whoever", name=None, token_enc=b"t3")).id == local.id
    relinked = await store.link_github("octocat", 3)
    assert relinked.github_id == 3 and await store.github_token_enc(local.id) is None  # not 2's
    assert await store.user_by_github_id(2) is None


async def test_a_refused_sign_in_writes_nothing(store):
    await store.upsert_user("a")
    await store.upsert_user("a-gh7")
    with pytest.raises(Forbidden) as info:
        await store.sign_in_github(7, "a", name="A", token_enc=b"t")
    assert info.value.code == "login_taken"
    assert [u.login for u in await store.list_users()] == ["a", "a-gh7"]
    made = await store.sign_in_github(8, "b", name=None, token_enc=None)
    await store.revoke_user("b")
    with pytest.raises(Forbidden) as info:
        await store.sign_in_github(8, "b", name="changed", token_enc=b"t")
    assert info.value.code == "account_disabled"
    assert (await store.user_by_id(made.id)).name is None


async def test_concurrent_first_sign_ins_of_one_github_user_make_one_account(store):
    users = []

    async def sign_in_once() -> None:
        users.append(await store.sign_in_github(42, "dup", name=None, token_enc=b"t"))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(sign_in_once)
    assert len({u.id for u in users}) == 1 and users[0].login == "dup"
    assert [u.login for u in await store.list_users()] == ["dup"]


async def test_one_time_values_are_taken_once_before_their_deadline(store, autojump_clock):
    assert await store.put_one_time("k", "a", "A", ttl_s=10, limit=2)
    assert await store.put_one_time("k", "b", "B", ttl_s=20, limit=2)
    assert not await store.put_one_time("k", "c", "C", ttl_s=10, limit=2)  # two kept: full
    assert await store.put_one_time("other", "a", "X", ttl_s=10, limit=1)  # each kind its own
    assert await store.take_one_time("k", "a") == "A"
    assert await store.take_one_time("k", "a") is None  # once
    assert await store.take_one_time("k", "nothing") is None
    await trio.sleep(19.9)
    assert await store.take_one_time("other", "a") is None  # expired at 10, deleted by the take
    await trio.sleep(0.1)
    assert await store.take_one_time("k", "b") is None  # at its deadline exactly: expired
    assert await store.put_one_time("k", "c", "C", ttl_s=10, limit=1)
    await trio.sleep(10)
    assert await store.put_one_time("k", "d", "D", ttl_s=10, limit=1)  # c expired: room again
    await trio.sleep(10)
    assert await forget_expired(store) == 1  # d
    assert await forget_expired(store) == 0


async def test_the_periodic_maintenance_forgets_expired_values(store, autojump_clock, tmp_path):
    rounds: list[tuple[float, int]] = []
    second_round = trio.Event()
    purge = store.purge_one_time

    async def counted() -> int:
        rounds.append((trio.current_time(), await purge()))
        if len(rounds) == 2:
            second_round.set()
        return rounds[-1][1]

    store.purge_one_time = counted
    await store.put_one_time("k", "a", "A", ttl_s=50, limit=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect_periodically, store, tmp_path / "workspaces", 7, 100)
        await second_round.wait()
        nursery.cancel_scope.cancel()
    assert rounds == [(0, 0), (100, 1)]
