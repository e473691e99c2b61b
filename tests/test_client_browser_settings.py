"""The phone client's "Notifications" view and its review button, in Debian's Chromium at phone
sizes against the real daemon in-process (issues 22 and 19): an ntfy topic set from the page
gets the test it sends; a webhook added from the page shows its signing secret once, and its
test arrives signed with that secret (the receiver verifies it); the delivery log shows each
delivery, and a failing receiver's as failed with Redeliver, which delivers it; a webhook is
removed after a confirmation. On a task with a pull request on the fake GitHub, "Address
review comments" says the server's refusal while there is nothing to address, then starts a
review round that pushes to the same branch and pull request.

Receivers are ``WebhookReceiver`` on 127.0.0.1 (allowed: ``allow_local_remotes``); every wait is
Playwright's auto-waiting ``expect`` or the receiver's own event.
"""

from __future__ import annotations

import re
from functools import partial

import trio

from daemon.agent.scripted_provider import ScriptedProvider
from daemon.states import TaskStatus

from .client_browser import BROWSER_TEST, check_view, phone, run, screenshot_dir, sign_in
from .fakes.phone import running_daemon
from .fakes.webhook_receiver import WebhookReceiver
from .github_env import daemon_on_github
from .helpers import wait_status
from .test_review_round import SCRIPT, TOKEN

pytestmark = BROWSER_TEST


async def test_ntfy_and_webhooks_are_set_tested_and_redelivered_from_the_page(tmp_path):
    topic, good, bad = WebhookReceiver(), WebhookReceiver(), WebhookReceiver(answers=[500])
    async with trio.open_nursery() as nursery:
        for receiver in (topic, good, bad):
            await nursery.start(receiver.serve)
        # One attempt: the failing receiver's delivery is failed at its first 500.
        async with running_daemon(tmp_path, notify_max_attempts=1) as server:
            alice, token = await server.user("alice")
            with trio.fail_after(120):
                await trio.to_thread.run_sync(_settings, server, token, (topic, good, bad), tmp_path)
            (ntfy,) = await server.store.list_targets(alice.id, kind="ntfy")
            hooks = await server.store.list_targets(alice.id, kind="webhook")
        nursery.cancel_scope.cancel()
    assert "task.cancelled" not in ntfy.events and "task.failed" in ntfy.events
    assert [hook.url for hook in hooks] == [f"{good.url}/hook"]  # the failing one was removed
    (tested,) = good.requests
    assert tested.verified and tested.headers["agentd-event"] == "test"
    assert [r.target for r in bad.requests] == ["/down", "/down"]  # failed, then redelivered
    assert bad.requests[0].headers["agentd-delivery"] == bad.requests[1].headers["agentd-delivery"]


def _settings(server, token: str, receivers, tmp_path) -> None:
    from playwright.sync_api import expect

    topic, good, bad = receivers
    with phone(tmp_path / "profile") as browser:
        page = browser.page
        sign_in(page, server.url, token)
        page.click("#settings-link")
        expect(page.locator("#settings-h")).to_be_focused()
        expect(page.locator("#ntfy-state")).to_have_text("No ntfy topic is set.")
        expect(page.locator("#push-toggle")).to_be_hidden()  # the view's own control instead
        expect(page.locator("#set-push")).to_have_text("Notify me on this device")
        check_view(page, "notification settings")
        assert browser.problems == []  # no topic yet is a 200, not a refusal the console logs

        # ntfy: a topic with an access token and one kind left out; its test arrives.
        page.fill("#ntfy-url", f"{topic.url}/alice-topic")
        page.fill("#ntfy-token", "tk_phone")
        page.uncheck("#ntfy-k-task-cancelled")
        page.click("#ntfy-save")
        expect(page.locator("#ntfy-state")).to_contain_text(f"{topic.url}/alice-topic")
        expect(page.locator("#ntfy-token")).to_have_value("")
        page.click("#ntfy-test")
        (got,) = run(topic.wait_for, 1)
        assert got.target == "/alice-topic" and got.headers["authorization"] == "Bearer tk_phone"
        log = page.locator("#deliveries li")
        expect(log.filter(has_text="ntfy")).to_have_attribute("data-status", "delivered")

        # A webhook: its secret shown once; the test it sends is signed with it.
        page.fill("#hook-url", f"{good.url}/hook")
        page.click("#hook-add")
        secret = page.locator("#hook-secret-value")
        expect(secret).to_have_text(re.compile(r"^whsec_\S+$"))
        expect(page.locator("#hook-secret")).to_contain_text("will not be shown again")
        expect(page.locator("#hook-secret-copy")).to_be_focused()
        check_view(page, "settings with a new webhook's secret")
        page.screenshot(path=str(screenshot_dir(tmp_path) / "settings-secret.png"))
        good.secret = secret.text_content()
        page.click("#hook-secret-done")
        expect(page.locator("#hook-secret")).to_be_hidden()
        assert good.secret not in page.content()
        hook = page.locator("#hooks li", has_text=f"{good.url}/hook")
        hook.get_by_role("button", name="Send a test").click()
        run(good.wait_for, 1)
        expect(log.filter(has_text=f"{good.url}/hook")).to_have_attribute("data-status", "delivered")

        # A receiver that fails: the delivery is failed, with Redeliver, which delivers it.
        page.fill("#hook-url", f"{bad.url}/down")
        page.click("#hook-add")
        expect(page.locator("#hook-secret")).to_be_visible()
        down = page.locator("#hooks li", has_text=f"{bad.url}/down")
        down.get_by_role("button", name="Send a test").click()
        failed = log.filter(has_text=f"{bad.url}/down")
        expect(failed).to_have_attribute("data-status", "failed")
        expect(failed).to_contain_text("HTTP 500")
        check_view(page, "settings with a failed delivery")
        page.screenshot(path=str(screenshot_dir(tmp_path) / "settings.png"), full_page=True)
        failed.get_by_role("button", name="Redeliver").click()
        expect(failed).to_have_attribute("data-status", "delivered")
        expect(failed.get_by_role("button", name="Redeliver")).to_have_count(0)

        # Removing asks first; "Keep it" keeps it.
        down.get_by_role("button", name="Remove").click()
        down.get_by_role("button", name="Keep it").click()
        expect(down.get_by_role("button", name="Remove")).to_be_focused()
        down.get_by_role("button", name="Remove").click()
        down.get_by_role("button", name="Yes, remove it").click()
        expect(page.locator("#hooks li")).to_have_count(1)
        expect(page.locator("#hooks-note")).to_contain_text("Removed the webhook")

        # Back to the view later: no secret anywhere; an error from the server is said as text.
        page.click("#nav a[data-route=list]")
        page.click("#nav a[data-route=settings]")
        expect(page.locator("#hooks li")).to_have_count(1)
        expect(page.locator("#hook-secret")).to_be_hidden()
        page.fill("#hook-url", "javascript:alert(1)")
        page.click("#hook-add")
        expect(page.locator("#hooks-error")).to_be_visible()
        assert page.locator("#hooks-error a").count() == 0
        expected_refusal(browser, 422)
        browser.check_clean()


def expected_refusal(browser, status: int) -> None:
    """The browser logs a refused request as a console error: the one expected here, then none."""
    logged = f"Failed to load resource: the server responded with a status of {status} ()"
    assert browser.problems == [logged], browser.problems
    browser.problems.clear()


async def test_address_review_comments_starts_a_review_round_on_the_same_pull_request(tmp_path):
    async with daemon_on_github(tmp_path, ScriptedProvider(SCRIPT), TOKEN) as gh:
        server = gh.server
        async with server.client(gh.token) as http:
            created = await http.post("/api/tasks", json={"repo_url": gh.repo_url, "prompt": "Fix add()"})
            task_id = created.json()["id"]
        with trio.fail_after(30):
            await wait_status(server.daemon.hub, task_id, TaskStatus.SUCCEEDED)
        with trio.fail_after(120):
            await trio.to_thread.run_sync(_review, server, gh.github, gh.token, task_id, tmp_path)
        task = await server.store.get_task(task_id)
        events = await server.store.read_events(task_id)
    pushed = [e.data["branch"] for e in events if e.type == "git.pushed"]
    assert pushed == [task.branch, task.branch] and task.status == TaskStatus.SUCCEEDED
    assert len(gh.github.pulls) == 1 and task.pr_url == gh.github.pulls[0]["html_url"]


def _review(server, github, token: str, task_id: str, tmp_path) -> None:
    from playwright.sync_api import expect

    with phone(tmp_path / "profile") as browser:
        page = browser.page
        sign_in(page, server.url, token)
        page.goto(f"{server.url}/#/task/{task_id}")
        button = page.locator("#t-review")
        expect(button).to_be_visible()
        check_view(page, "a task with a pull request")
        button.click()  # nothing to address yet: the server's refusal, as text
        expect(page.locator("#t-action-error")).to_have_text(
            "Review not started: the pull request has no review comments or failing checks"
        )
        expected_refusal(browser, 409)
        trio.from_thread.run_sync(
            partial(
                github.add_review,
                "acme",
                "calc",
                1,
                user="carol",
                state="CHANGES_REQUESTED",
                body="Add type hints.",
            )
        )
        button.click()
        expect(page.locator("#t-review-note")).to_contain_text("sent to the agent")
        expect(page.locator("#t-action-error")).to_be_hidden()
        expect(page.locator("#t-events .ev-user").last).to_contain_text("Add type hints.")
        expect(page.locator("#t-events")).to_contain_text("Added the type hints")
        expect(page.locator("#t-status")).to_have_text("succeeded")
        browser.check_clean()
