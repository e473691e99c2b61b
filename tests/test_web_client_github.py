"""The web client's GitHub parts on a real daemon: ``/api/repos`` against the fake GitHub REST
API (pages, search, no token, refusals and outages), and the browser's GitHub sign-in back to
the client's own origin against the fake GitHub OAuth server (a foreign redirect refused)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import trio

from daemon.web.github_oauth import own_client_redirect

from .fakes.github_api import FakeGitHubAPI
from .fakes.phone import running_daemon
from .test_oauth_github import daemon_with_github, pkce, query, redeem, sign_in

# -- repositories -------------------------------------------------------------------------------

GITHUB_TOKEN = "gho_" + "7" * 36


@pytest.fixture
async def github(tmp_path):
    """A daemon whose GitHub API is the fake, alice with a GitHub token there, bob without;
    130 repositories of alice's (octo/repo-000 pushed first) and 5 of acme's, older."""
    api = FakeGitHubAPI(GITHUB_TOKEN)
    for i in range(130):
        api.add_repo(f"octo/repo-{i:03d}", pushed_at=f"2025-01-01T00:{i // 60:02d}:{i % 60:02d}Z")
    for i in range(5):
        api.add_repo(f"acme/Widget-{i}", pushed_at=f"2024-06-0{i + 1}T00:00:00Z", private=True)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(api.serve)
        async with running_daemon(tmp_path, github_api=url) as server:
            alice, alice_token = await server.user("alice")
            _, bob_token = await server.user("bob")
            await server.store.set_github_token(alice.id, server.daemon.secrets.encrypt(GITHUB_TOKEN))
            yield server, api, alice_token, bob_token
        nursery.cancel_scope.cancel()


async def test_repositories_newest_first_a_page_at_a_time(github):
    server, api, token, _ = github
    async with server.client(token) as http:
        first = (await http.get("/api/repos")).json()
        assert first["github_linked"] is True and (first["page"], first["next_page"]) == (1, 2)
        assert [r["full_name"] for r in first["repos"][:2]] == ["octo/repo-129", "octo/repo-128"]
        assert len(first["repos"]) == 30
        assert first["repos"][0] == {
            "full_name": "octo/repo-129",
            "name": "repo-129",
            "owner": "octo",
            "private": False,
            "default_branch": "main",
            "clone_url": "https://github.example/octo/repo-129.git",
            "html_url": "https://github.example/octo/repo-129",
            "description": "",
            "pushed_at": "2025-01-01T00:02:09Z",
        }
        last = (await http.get("/api/repos", params={"page": 5})).json()
        assert last["next_page"] is None and [r["name"] for r in last["repos"]][-1] == "Widget-0"
        assert len(last["repos"]) == 135 - 4 * 30
    sent = api.requests[0]
    assert sent.query == {"sort": "pushed", "direction": "desc", "per_page": "30", "page": "1"}
    assert sent.headers["Authorization"] == f"Bearer {GITHUB_TOKEN}"  # decrypted for the call only
    assert GITHUB_TOKEN not in str(first)


async def test_a_search_ignores_case_and_reads_github_pages_until_it_has_enough(github):
    server, api, token, _ = github
    async with server.client(token) as http:
        widgets = (await http.get("/api/repos", params={"q": "WIDGET"})).json()
        # The oldest: on GitHub's second page of 100, which the search had to read.
        assert [r["full_name"] for r in widgets["repos"]] == [f"acme/Widget-{i}" for i in range(4, -1, -1)]
        assert widgets["next_page"] is None and widgets["repos"][0]["private"] is True
        assert [r.query["page"] for r in api.requests] == ["1", "2"]
        assert {r.query["per_page"] for r in api.requests} == {"100"}
        del api.requests[:]
        zeros = (await http.get("/api/repos", params={"q": "repo-0"})).json()  # repo-000..099
        assert len(zeros["repos"]) == 30 and zeros["next_page"] == 2
        assert zeros["repos"][0]["name"] == "repo-099"
        fourth = (await http.get("/api/repos", params={"q": "repo-0", "page": 4})).json()
        assert [r["name"] for r in fourth["repos"]] == [f"repo-{i:03d}" for i in range(9, -1, -1)]
        assert fourth["next_page"] is None
        none = (await http.get("/api/repos", params={"q": "no such thing"})).json()
        assert none["repos"] == [] and none["next_page"] is None
        for bad in [{"page": 0}, {"page": 101}, {"q": "x" * 101}, {"page": "two"}]:
            assert (await http.get("/api/repos", params=bad)).status_code == 422, bad


async def test_without_a_github_token_there_are_no_repositories_and_no_call(github):
    server, api, _, bob_token = github
    async with server.client(bob_token) as http:
        answer = (await http.get("/api/repos", params={"q": "repo"})).json()
    assert answer == {"github_linked": False, "repos": [], "page": 1, "next_page": None}
    assert api.requests == []
    async with server.client() as anonymous:
        assert (await anonymous.get("/api/repos")).status_code == 401


async def test_githubs_refusals_and_outages_are_told_apart(github):
    server, api, token, _ = github
    async with server.client(token) as http:
        api.fail_with(503)
        down = await http.get("/api/repos")
        assert down.status_code == 503 and down.json()["error"]["code"] == "github_unavailable"
        assert down.headers["retry-after"] == "30"
        api.fail_with(403, headers={"X-RateLimit-Remaining": "0", "Retry-After": "120"})
        limited = await http.get("/api/repos")
        assert (limited.status_code, limited.headers["retry-after"]) == (503, "120")
        api.token = "gho_rotated"  # the user revoked agentd's token at GitHub
        refused = await http.get("/api/repos")
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "github_auth"
        assert "sign in with GitHub again" in refused.json()["error"]["message"]


# -- GitHub sign-in from the web client ---------------------------------------------------------


def test_the_own_client_redirect_is_public_urls_or_a_loopback_requests():
    assert own_client_redirect("https://agentd.example.com/", "http://10.0.0.5/") == (
        "https://agentd.example.com/"
    )
    assert own_client_redirect("https://x.example/agentd", "http://127.0.0.1/") == "https://x.example/agentd/"
    for loopback in [
        "http://127.0.0.1:8080/",
        "http://127.9.9.9/",
        "http://[::1]:80/",
        "http://localhost:1/",
    ]:
        assert own_client_redirect(None, loopback) == loopback
    for foreign in [
        "http://agentd.example.com/",
        "http://10.0.0.5:8080/",
        "http://127.0.0.1.evil.example/",
        "http://localhost.evil.example/",
        "http://[::ffff:10.0.0.1]/",
        "http://0.0.0.0/",
    ]:
        assert own_client_redirect(None, foreign) is None, foreign


@pytest.fixture
async def oauth(tmp_path):
    async with daemon_with_github(tmp_path) as pair:
        yield pair


async def test_the_web_client_signs_in_with_github_back_to_its_own_origin(oauth):
    server, _ = oauth
    answer = await sign_in(server, None, app_state="s", app_redirect=server.url + "/")
    assert answer["state"] == "s"
    issued = await redeem(server, answer)
    async with server.client(issued["token"]) as http:
        me = (await http.get("/api/me")).json()
    assert me["login"] == "octocat" and me["github_linked"] is True


async def test_a_foreign_redirect_is_refused(oauth, tmp_path):
    server, github = oauth
    _, challenge = pkce()
    port = urlsplit(server.url).port
    async with server.client() as browser:
        for app_redirect, host in [
            ("https://evil.example/", None),
            (server.url, None),  # not the client's address: no slash
            (server.url + "/evil", None),
            (server.url + "//evil.example/", None),
            (f"http://localhost:{port}/", None),  # the browser came to 127.0.0.1
            ("http://agentd.example.com/", "agentd.example.com"),  # a Host that is not loopback
            ("http://evil.example/", "evil.example"),  # DNS pointed at this server
        ]:
            headers = {"Host": host} if host else {}
            params = {"app_redirect": app_redirect, "code_challenge": challenge}
            refused = await browser.get("/auth/github/login", params=params, headers=headers)
            assert refused.status_code == 400, (app_redirect, host)
            assert refused.json()["error"]["code"] == "invalid_redirect"
    assert github.authorize_requests == []


async def test_with_public_url_only_its_address_is_the_clients(tmp_path):
    settings = dict(github_client_id="cid", github_client_secret="s", github_oauth_url="http://127.0.0.1:9")
    async with running_daemon(tmp_path, public_url="https://agentd.example.com", **settings) as server:
        _, challenge = pkce()
        async with server.client() as browser:
            params = {"app_redirect": "https://agentd.example.com/", "code_challenge": challenge}
            allowed = await browser.get("/auth/github/login", params=params)
            # Loopback, but public_url says where the client is.
            params["app_redirect"] = server.url + "/"
            refused = await browser.get("/auth/github/login", params=params)
    assert allowed.status_code == 302
    callback = query(allowed.headers["Location"])["redirect_uri"]
    assert callback == "https://agentd.example.com/auth/github/callback"
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_redirect"
