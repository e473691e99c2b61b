"""The admin page in a real headless Chromium (Debian's), driven by Playwright, against the real
daemon in-process: sign-in (refused for a non-operator), the live task list, one task's events
as they are appended, Cancel and Retry.

Playwright's sync API runs in a worker thread (it has its own event loop); it reaches back into
the daemon's Trio loop with ``trio.from_thread``. Every wait is Playwright's auto-waiting
``expect``: no sleeps. Only Chromium from the system is used (never ``playwright install``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import trio

from daemon.states import TaskStatus
from daemon.store import NewEvent

from .fakes.phone import running_daemon
from .helpers import wait_status
from .runners import Hang
from .test_admin_api import operator, submit

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path(tempfile.gettempdir()) / "agentd-admin.png"
# Nothing but 127.0.0.1: no updates, sync, QUIC probes or first-run pages.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"),
]


async def test_an_operator_watches_a_task_live_cancels_and_retries_it(tmp_path):
    runner = Hang()
    async with running_daemon(tmp_path, runner) as server:
        _, alice = await server.user("alice")
        _, bob = await server.user("bob")
        root = await operator(server)
        task_id = await submit(server, alice, repo_url="file:///srv/git/shop.git",
                               prompt="make the checkout test pass")
        with trio.fail_after(5):
            await wait_status(server.daemon.hub, task_id, TaskStatus.RUNNING)
        await trio.to_thread.run_sync(_drive, server, runner, root, bob, alice, task_id,
                                      tmp_path / "chromium-profile")


def _drive(server, runner, root: str, bob: str, alice: str, task_id: str, profile: Path) -> None:
    """The browser side, in a worker thread; ``trio.from_thread`` reaches the daemon."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=10_000)
    problems: list[str] = []  # console errors and CSP violations: none expected
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            page = context.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(server.url + "/admin")

            # A non-operator's token is refused, and the page says why.
            page.fill("#token", bob)
            page.click("#signin-form button")
            expect(page.locator("#signin-error")).to_contain_text("not an operator")
            expect(page.locator("#console")).to_be_hidden()
            problems.clear()  # the refused request's 403 is logged by the browser: expected

            # The operator sees every user's running task in the list, live.
            page.fill("#token", root)
            page.press("#token", "Enter")
            expect(page.locator("#whoami")).to_have_text("root")
            expect(page.locator("#live")).to_have_text("live")
            row = page.locator(f'#tasks tr[data-task-id="{task_id}"]')
            expect(row).to_contain_text("running")
            expect(row).to_contain_text("alice")
            expect(row).to_contain_text("file:///srv/git/shop")  # ".git" is trimmed
            assert root not in page.url  # the token is never in a URL...
            assert page.evaluate("sessionStorage.getItem('agentd.admin.token')") == root

            # Open it: replay, then events as they are appended.
            row.click()
            expect(page.locator("#detail-status")).to_have_text("running")
            events = page.locator("#events")
            expect(events).to_contain_text("task.created")
            expect(events).to_contain_text("running (attempt 1)")
            steps = [
                NewEvent("agent.text", {"text": "Looking at tests/test_checkout.py first."}),
                NewEvent("agent.tool_call", {"id": "t1", "name": "bash",
                                             "input": {"command": "pytest -q tests/test_checkout.py"}}),
                NewEvent("agent.tool_result", {"id": "t1", "is_error": False,
                                               "output": "1 failed, 12 passed in 0.31s"}),
                NewEvent("agent.text", {"text": "<b>The rounding is off by one cent.</b>"}),
            ]
            for step in steps:
                trio.from_thread.run(server.store.append_events, task_id, [step])
                expect(events.locator("li").last).to_contain_text(step.type)
            expect(events).to_contain_text("pytest -q tests/test_checkout.py")
            expect(events).to_contain_text("1 failed, 12 passed")
            # Agent text is shown as text, never parsed as markup.
            expect(events).to_contain_text("<b>The rounding is off by one cent.</b>")
            assert events.locator("b").count() == 0

            # Another user's new task shows up in the list by itself (the daemon is drained so
            # it stays queued).
            trio.from_thread.run_sync(server.daemon.supervisor.drain)
            other = trio.from_thread.run(submit, server, bob)
            other_row = page.locator(f'#tasks tr[data-task-id="{other}"]')
            expect(other_row).to_contain_text("queued")
            expect(other_row).to_contain_text("bob")
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            # Cancel: the runner is cancelled, the store and the page say cancelled.
            expect(page.locator("#retry")).to_be_disabled()
            page.click("#cancel")
            expect(page.locator("#detail-status")).to_have_text("cancelled")
            expect(row).to_contain_text("cancelled")
            expect(events).to_contain_text("cancelled by request")
            task = trio.from_thread.run(server.store.get_task, task_id)
            assert task.status is TaskStatus.CANCELLED and runner.cancelled == [task_id]

            # Retry: queued again with fresh attempts, in the store and on the page.
            expect(page.locator("#cancel")).to_be_disabled()
            page.click("#retry")
            expect(page.locator("#detail-status")).to_have_text("queued")
            expect(row).to_contain_text("queued")
            expect(events).to_contain_text("retried by operator root")
            task = trio.from_thread.run(server.store.get_task, task_id)
            assert task.status is TaskStatus.QUEUED and task.attempt == 0

            # A revoked token ends the session with a message, at the next request.
            trio.from_thread.run(server.store.revoke_user, "root")
            page.select_option("#filter", "queued")
            expect(page.locator("#signin-error")).to_contain_text("not valid")
            expect(page.locator("#console")).to_be_hidden()
            assert page.evaluate("sessionStorage.getItem('agentd.admin.token')") is None
            problems[:] = [p for p in problems if "401" not in p]  # that refusal, logged
        finally:
            context.close()
    assert problems == []
