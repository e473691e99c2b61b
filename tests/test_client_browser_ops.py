"""The phone client's operator view (``#/ops``, where ``/admin`` now sends a browser) in Debian's
Chromium at 360x740, against the real daemon in-process: a person who is no operator is shown no
operator view, even by its address; an operator sees every user's tasks live (another user's new
task comes in by itself), follows another user's task as its events are appended, cancels and
retries it, reads each task's id in a form ``agentctl`` takes, and is signed out by the live
feed itself when the token is revoked.

The browser runs in a worker thread and reaches the daemon with ``trio.from_thread``; every wait
is an auto-waiting ``expect``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import trio

from daemon.states import TaskStatus
from daemon.store import NewEvent

from .client_browser import BROWSER_TEST, SMALL_PHONE, check_view, phone, run, shown_seqs, sign_in
from .fakes.phone import running_daemon
from .helpers import wait_status
from .runners import Hang
from .test_admin_api import operator, submit

pytestmark = BROWSER_TEST

# What the agent of alice's task "does" while the operator watches, appended to the store.
STEPS = [
    NewEvent("agent.text", {"text": "Looking at tests/test_checkout.py first."}),
    NewEvent(
        "agent.tool_call",
        {"id": "t1", "name": "bash", "input": {"command": "pytest -q tests/test_checkout.py"}},
    ),
    NewEvent("agent.tool_result", {"id": "t1", "is_error": False, "output": "1 failed, 12 passed in 0.31s"}),
    NewEvent("agent.text", {"text": "<b>The rounding is off by one cent.</b>"}),
]


async def test_an_operator_sees_every_users_tasks_follows_one_cancels_and_retries_it(tmp_path):
    runner = Hang()
    async with running_daemon(tmp_path, runner, ws_reauth_interval_s=0.5) as server:
        _, alice = await server.user("alice")
        _, bob = await server.user("bob")
        root = await operator(server)
        task_id = await submit(
            server, alice, repo_url="https://github.com/acme/shop.git", prompt="Fix checkout"
        )
        with trio.fail_after(90):
            await wait_status(server.daemon.hub, task_id, TaskStatus.RUNNING)
            await trio.to_thread.run_sync(_operate, server, runner, alice, bob, root, task_id, tmp_path)
        async with server.client(alice) as http:  # signing out revoked alice's token
            assert (await http.get("/api/me")).status_code == 401


def _operate(server, runner: Hang, alice: str, bob: str, root: str, task_id: str, tmp_path) -> None:
    from playwright.sync_api import expect

    clipboard = ["clipboard-read", "clipboard-write"]
    with phone(tmp_path / "profile", SMALL_PHONE, permissions=clipboard) as browser:
        page = browser.page
        operator_api: list[str] = []
        page.on("request", lambda r: operator_api.append(r.url) if "/admin/api/" in r.url else None)
        # The keyboard goes through the sign-in view in reading order from its heading (where
        # the app puts the focus on each view), its focus in sight.
        page.goto(server.url + "/")
        expect(page.locator("#signin-h")).to_be_focused()
        check_view(page, "the sign-in view")
        order = []
        for _ in range(3):
            page.keyboard.press("Tab")
            order.append(
                page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()")
            )
            assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid", order
        assert order == ["remember", "token", "Sign in with the token"]

        # A person who is no operator sees no operator view, even by its address (the old
        # page's, which sends a browser to #/ops), and the app asks nothing of the operator API.
        sign_in(page, server.url, alice)
        expect(page.locator("#nav-ops")).to_be_hidden()
        page.goto(f"{server.url}/admin")
        expect(page).to_have_url(f"{server.url}/#/ops")
        expect(page.locator("#v-list")).to_be_visible()
        expect(page.locator(f'#tasks li[data-task-id="{task_id}"]')).to_contain_text("running")
        expect(page.locator("#v-ops")).to_be_hidden()
        assert operator_api == []
        page.click("#signout")
        expect(page.locator("#v-signin")).to_be_visible()
        assert page.evaluate("sessionStorage.length + localStorage.length") == 0

        # The operator: every user's tasks, each with its owner and the start of its id, which
        # agentctl takes for the whole id.
        sockets = len(browser.sockets)
        sign_in(page, server.url, root)
        assert page.evaluate("sessionStorage.getItem('agentd.token')") == root
        page.click("#nav-ops")
        row = page.locator(f'#ops-tasks li[data-task-id="{task_id}"]')
        expect(row).to_contain_text("running")
        expect(row.locator(".meta")).to_contain_text("alice")
        expect(row.locator(".repo")).to_have_text("acme/shop")
        expect(row.locator(".tid")).to_have_text(task_id[:12])
        expect(row.locator(".tid")).to_have_attribute("title", task_id)
        assert _agentctl_names(server, row.locator(".tid").inner_text()) == task_id
        expect(row.get_by_role("button", name="Retry task acme/shop")).to_be_disabled()  # running
        check_view(page, "the operator view")

        # Alice's task, followed live: what is stored shows at once, then each event as it is
        # appended, once and in order; the agent's text is text, never markup.
        row.locator("a").click()
        expect(page.locator("#t-owner")).to_have_text("alice")
        events = page.locator("#t-events")
        expect(events).to_contain_text("Task created")
        expect(events).to_contain_text("running (attempt 1)")
        for step in STEPS:
            seq = run(server.store.append_events, task_id, [step])[-1].seq
            expect(events.locator("[data-seq]").last).to_have_attribute("data-seq", str(seq))
        expect(events.locator(".ev-text").first).to_have_text("agent" + STEPS[0].data["text"])
        tool = events.locator(".ev-tool")
        expect(tool.locator("summary")).to_have_text("$ pytest -q tests/test_checkout.py")
        tool.locator("summary").click()
        expect(tool.locator("pre.out")).to_have_text("1 failed, 12 passed in 0.31s")
        expect(events.locator(".ev-text").last).to_contain_text("<b>The rounding is off by one cent.</b>")
        assert events.locator("b").count() == 0
        assert shown_seqs(page) == list(range(1, seq + 1))

        # Its id: the same start as the list's, the whole of it one tap away.
        expect(page.locator("#t-id .tid")).to_have_text(task_id[:12])
        page.get_by_role("button", name="Copy id").click()
        expect(page.get_by_role("button", name="Copied")).to_be_visible()
        assert page.evaluate("navigator.clipboard.readText()") == task_id
        check_view(page, "another user's task, seen by an operator")

        # Another user's new task comes into the list by itself (the daemon drained, it stays
        # queued), and a live change elsewhere in the list leaves the keyboard's focus alone.
        page.click("#nav-ops")
        trio.from_thread.run_sync(server.daemon.supervisor.drain)
        cancel = row.get_by_role("button", name="Cancel task acme/shop")
        cancel.focus()
        other = run(submit, server, bob, repo_url="https://github.com/acme/blog.git")
        expect(page.locator("#ops-tasks li").first).to_have_attribute("data-task-id", other)
        other_row = page.locator(f'#ops-tasks li[data-task-id="{other}"]')
        expect(other_row.locator(".status")).to_have_text("queued")
        expect(other_row.locator(".meta")).to_contain_text("bob")
        expect(cancel).to_be_focused()

        # Cancel, from the list: the runner is cancelled, the store and the page say so.
        page.keyboard.press("Enter")
        expect(row.locator(".status")).to_have_text("cancelled")
        expect(row.get_by_role("button", name="Cancel task acme/shop")).to_be_disabled()
        task = run(server.store.get_task, task_id)
        assert task.status is TaskStatus.CANCELLED and runner.cancelled == [task_id]

        # Retry, from the task itself: queued again with fresh attempts.
        row.locator("a").click()
        expect(events).to_contain_text("cancelled by request")
        page.click("#t-retry")
        expect(page.locator("#t-status")).to_have_text("queued")
        expect(events).to_contain_text("retried by operator root")
        task = run(server.store.get_task, task_id)
        assert task.status is TaskStatus.QUEUED and task.attempt == 0
        expect(page.locator("#t-retry")).to_be_disabled()
        assert browser.sockets[sockets:] == [server.ws_url]  # one live connection all along

        # The token is revoked: the live feed closes (4401) and the page signs out by itself,
        # saying why, with nothing asked over HTTP meanwhile and no new connection tried.
        asked: list[str] = []
        page.on("request", lambda r: asked.append(r.url))
        run(server.store.revoke_user, "root")
        expect(page.locator("#v-signin")).to_be_visible()
        expect(page.locator("#signin-error")).to_contain_text("sign-in has ended")
        expect(page.locator("#nav")).to_be_hidden()
        assert [url for url in asked if "/api/client-config" not in url] == []
        assert browser.sockets[sockets:] == [server.ws_url]
        assert page.evaluate("sessionStorage.length + localStorage.length") == 0
        browser.check_clean()


def _agentctl_names(server, shown: str) -> str:
    """The id of the task ``agentctl task SHOWN --json`` prints, run against the daemon's control
    socket (the page's short id, as an operator would paste it)."""
    socket = str(server.daemon.settings.control_socket)
    done = subprocess.run(
        [sys.executable, "-m", "control.cli", "--socket", socket, "task", shown, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["id"]
