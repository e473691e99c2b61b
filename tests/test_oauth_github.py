"""GitHub sign-in end to end against a fake GitHub OAuth server, and the phone's PKCE leg."""

from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import parse_qs, urlsplit

import pytest
import trio

from daemon.secrets import load_secret_box

from .fakes.github_oauth import FakeGitHubOAuth
from .fakes.phone import running_daemon

APP = "agentd-phone://signed-in"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@pytest.fixture
async def world(tmp_path):
    github = FakeGitHubOAuth(client_id="cid", client_secret="csecret")
    async with trio.open_nursery() as nursery:
        github_url = await nursery.start(github.serve)
        async with running_daemon(
            tmp_path, github_oauth_url=github_url, github_api=github_url, github_client_id="cid",
            github_client_secret="csecret", app_redirects=(APP,), oauth_login_ttl_s=60,
        ) as server:
            yield server, github
        nursery.cancel_scope.cancel()


async def sign_in(server, github, verifier_challenge=None, *, app_state="s1") -> dict[str, str]:
    """Walk the browser through login -> GitHub -> callback; return the app redirect's query."""
    verifier, challenge = verifier_challenge or pkce()
    async with server.client() as browser:
        start = await browser.get("/auth/github/login", params={
            "app_redirect": APP, "code_challenge": challenge, "code_challenge_method": "S256",
            "state": app_state})
        assert start.status_code == 302, start.text
        at_github = await browser.get(start.headers["Location"])
        assert at_github.status_code == 302
        back = await browser.get(at_github.headers["Location"])
        assert back.status_code == 302
        assert back.headers["Location"].startswith(APP + "?")
        return query(back.headers["Location"])


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
        start = await browser.get("/auth/github/login", params={"app_redirect": APP, "code_challenge": challenge})
        at_github = await browser.get(start.headers["Location"])
        assert (await browser.get(at_github.headers["Location"])).status_code == 302
        replay = await browser.get(at_github.headers["Location"])
        assert replay.status_code == 400 and replay.json()["error"]["code"] == "invalid_state"
        forged = await browser.get("/auth/github/callback", params={"code": "x", "state": "forged"})
        assert forged.status_code == 400
    github.deny = True
    answer = await sign_in(server, github)
    assert answer == {"error": "access_denied", "state": "s1"}


async def test_a_disabled_account_cannot_sign_in_again(world):
    server, github = world
    await server.store.upsert_user("octocat")
    await server.store.revoke_user("octocat")
    answer = await sign_in(server, github)
    assert answer["error"] == "account_disabled" and "code" not in answer


async def test_sign_in_is_404_when_not_configured(tmp_path):
    async with running_daemon(tmp_path) as server:
        async with server.client() as browser:
            response = await browser.get("/auth/github/login", params={"app_redirect": APP})
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_configured"
