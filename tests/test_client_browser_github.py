"""The phone client with GitHub, in Debian's Chromium at 390x844: signing in with GitHub from
the page (authorization code with a PKCE pair the page makes with WebCrypto, against the fake
GitHub OAuth server, back to the page's own origin), and picking one of the person's
repositories, searched, for a new task (against the fake GitHub REST API).
"""

from __future__ import annotations

import trio

from .client_browser import BROWSER_TEST, check_view, phone, sign_in
from .fakes.github_api import FakeGitHubAPI
from .fakes.github_oauth import FakeGitHubOAuth
from .fakes.phone import running_daemon

pytestmark = BROWSER_TEST

GITHUB_TOKEN = "gho_" + "5" * 36


async def test_signing_in_with_github_from_the_page(tmp_path):
    github = FakeGitHubOAuth(client_id="cid", client_secret="csecret")
    async with trio.open_nursery() as nursery:
        url = await nursery.start(github.serve)
        settings = dict(
            github_oauth_url=url, github_api=url, github_client_id="cid", github_client_secret="csecret"
        )
        async with running_daemon(tmp_path, **settings) as server:
            with trio.fail_after(60):
                await trio.to_thread.run_sync(_sign_in_with_github, server, tmp_path)
            octocat = await server.store.user_by_login("octocat")
            assert octocat is not None and octocat.github_id == 583231
        nursery.cancel_scope.cancel()
    (asked,) = github.authorize_requests
    assert asked["code_challenge_method"] == "S256"  # the daemon's own PKCE with GitHub


def _sign_in_with_github(server, tmp_path) -> None:
    from playwright.sync_api import expect

    with phone(tmp_path / "profile") as browser:
        page = browser.page
        page.goto(server.url + "/")
        page.check("#remember")
        page.click("#gh-signin")  # to the daemon, GitHub (the fake says yes) and back
        expect(page.locator("#whoami")).to_have_text("octocat")
        expect(page.locator("#live")).to_have_text("live")
        # The one-time code left the address at once; the token is in no address at all.
        token = page.evaluate("localStorage.getItem('agentd.token')")
        assert token and token not in page.url and "code=" not in page.url
        assert page.evaluate("history.length") >= 1 and page.url == server.url + "/"
        assert page.evaluate("sessionStorage.getItem('agentd.signin')") is None  # the verifier is gone
        # A sign-in that comes back with a state this page did not make is refused.
        page.goto(server.url + "/?code=forged&state=forged")
        expect(page.locator("#signin-error")).to_contain_text("not started from this page")
        browser.check_clean()


async def test_a_repository_is_picked_from_the_persons_github_repositories(tmp_path):
    api = FakeGitHubAPI(GITHUB_TOKEN)
    api.add_repo("acme/shop", pushed_at="2026-01-02T00:00:00Z", private=True, default_branch="trunk")
    api.add_repo("acme/website-with-a-very-long-name-for-a-phone-screen", pushed_at="2026-01-01T00:00:00Z")
    api.add_repo("octo/dotfiles", pushed_at="2025-12-01T00:00:00Z")
    async with trio.open_nursery() as nursery:
        url = await nursery.start(api.serve)
        async with running_daemon(tmp_path, github_api=url) as server:
            server.daemon.supervisor.drain()
            alice, token = await server.user("alice")
            await server.store.set_github_token(alice.id, server.daemon.secrets.encrypt(GITHUB_TOKEN))
            with trio.fail_after(60):
                await trio.to_thread.run_sync(_pick, server, token, tmp_path)
            ((_, task),) = await server.store.list_tasks(user_id=alice.id)
            assert (task.repo_url, task.base_branch) == ("https://github.example/acme/shop.git", None)
        nursery.cancel_scope.cancel()


def _pick(server, token: str, tmp_path) -> None:
    from playwright.sync_api import expect

    with phone(tmp_path / "profile") as browser:
        page = browser.page
        sign_in(page, server.url, token)
        page.click("#v-list .bar a")
        picks = page.locator("#repo-results button")
        expect(picks).to_have_count(3)
        expect(picks.first).to_contain_text("acme/shop")
        expect(picks.first).to_contain_text("private")
        check_view(page, "the new task form with repositories")
        page.fill("#repo-q", "SHOP")
        expect(picks).to_have_count(1)
        picks.first.click()
        expect(picks.first).to_have_attribute("aria-pressed", "true")
        expect(page.locator("#repo-url")).to_have_value("https://github.example/acme/shop.git")
        expect(page.locator("#base-branch")).to_have_attribute("placeholder", "default: trunk")
        page.fill("#prompt", "Make the checkout faster")
        page.click("#new-submit")
        expect(page.locator("#t-title")).to_have_text("github.example/acme/shop")
        browser.check_clean()
