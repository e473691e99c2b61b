"""The phone client when the network misbehaves, in Debian's Chromium at 390x844: a connection
closed by the server in the middle of a stream of events, the phone going offline and back, a
reload, and a POST whose answer is lost. Each time the page shows every event exactly once, in
order (their seqs are 1..last, no gap, no duplicate), and a retried create gives the same task.

The browser runs in a worker thread and reaches the daemon with ``trio.from_thread``; every wait
is an auto-waiting ``expect``.
"""

from __future__ import annotations

import json

import trio

from daemon.states import TaskStatus
from daemon.store import NewEvent
from daemon.supervisor import RunResult
from daemon.web.session import CLOSE_GOING_AWAY

from .client_browser import BROWSER_TEST, phone, run, shown_seqs, sign_in
from .fakes.phone import running_daemon
from .helpers import wait_status
from .runners import Hang
from .test_admin_api import submit

pytestmark = BROWSER_TEST


class Stream:
    """A runner whose model "writes" ``count`` lines, one every few milliseconds, once ``go`` is
    set; then it waits for ``release``."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.go = trio.Event()
        self.written = trio.Event()
        self.release = trio.Event()

    async def run(self, ctx) -> RunResult:
        await self.go.wait()
        for i in range(self.count):
            await ctx.store.append_events(ctx.task.id, [NewEvent("agent.text", {"text": f"line {i}"})])
            await trio.sleep(0.004)
        self.written.set()
        await self.release.wait()
        return RunResult()


def close_sockets(server) -> int:
    """Close every WebSocket from the server's side (as a restarting proxy would)."""
    sessions = list(server.web.sessions)
    for session in sessions:
        session.close(CLOSE_GOING_AWAY, "test: connection dropped")
    return len(sessions)


async def test_a_dropped_connection_and_going_offline_lose_no_event_and_show_none_twice(tmp_path):
    runner = Stream(150)
    async with running_daemon(tmp_path, runner) as server:
        _, token = await server.user("alice")
        task_id = await submit(server, token, prompt="Write 150 lines")
        with trio.fail_after(90):
            await wait_status(server.daemon.hub, task_id, TaskStatus.RUNNING)
            await trio.to_thread.run_sync(_drop_and_resume, server, runner, token, task_id, tmp_path)
            await wait_status(server.daemon.hub, task_id, TaskStatus.SUCCEEDED)


def _drop_and_resume(server, runner: Stream, token: str, task_id: str, tmp_path) -> None:
    from playwright.sync_api import expect

    def last_seq() -> int:
        return run(server.store.get_task, task_id).last_seq

    def shows_all() -> None:
        last = last_seq()
        expect(page.locator("#t-events [data-seq]").last).to_have_attribute("data-seq", str(last))
        assert shown_seqs(page) == list(range(1, last + 1))

    with phone(tmp_path / "profile") as browser:
        page = browser.page
        sign_in(page, server.url, token)
        page.goto(f"{server.url}/#/task/{task_id}")
        expect(page.locator("#t-status")).to_have_text("running")
        expect(page.locator("#t-events [data-seq]")).to_have_count(3)  # created, queued, running

        # The server drops the connection while the lines stream in: the page reconnects and
        # asks for what came after the last seq it shows.
        trio.from_thread.run_sync(runner.go.set)
        expect(page.locator("#t-events")).to_contain_text("line 40")
        assert trio.from_thread.run_sync(close_sockets, server) == 1
        expect(page.locator("#live")).to_have_text("reconnecting")
        expect(page.locator("#live")).to_have_text("live")
        trio.from_thread.run(runner.written.wait)
        shows_all()
        resumed = [json.loads(m) for m in browser.sent if '"subscribe"' in m]
        assert len(resumed) == 2  # the task opened, then again on the second connection...
        assert resumed[0]["after"] == 0 and 40 < resumed[1]["after"] < last_seq()  # ...from where it was

        # Offline: the page says so; what happens meanwhile shows once it is back.
        page.context.set_offline(True)
        expect(page.locator("#banner")).to_be_visible()
        expect(page.locator("#banner")).to_contain_text("offline")
        expect(page.locator("#live")).to_have_text("offline")
        for i in range(5):
            run(server.store.append_events, task_id, [NewEvent("agent.text", {"text": f"while away {i}"})])
        page.context.set_offline(False)
        expect(page.locator("#live")).to_have_text("live")
        expect(page.locator("#banner")).to_be_hidden()
        expect(page.locator("#t-events")).to_contain_text("while away 4")
        shows_all()

        # A reload: the events kept for offline use are shown at once, the rest come from the
        # seq after them.
        held = last_seq()
        run(server.store.append_events, task_id, [NewEvent("agent.text", {"text": "after the reload"})])
        browser.sent.clear()
        page.reload()
        expect(page.locator("#t-events")).to_contain_text("after the reload")
        shows_all()
        (subscribe,) = [json.loads(m) for m in browser.sent if '"subscribe"' in m]
        assert subscribe["after"] >= held  # all it showed was kept (saved as the page went away)

        trio.from_thread.run_sync(runner.release.set)
        expect(page.locator("#t-status")).to_have_text("succeeded")
        shows_all()
        assert browser.sockets == [server.ws_url] * 4  # one at a time: first, after the drop, online, reload
        browser.check_clean()


async def test_offline_the_installed_app_opens_with_the_last_known_state(tmp_path):
    runner = Hang()
    async with running_daemon(tmp_path, runner) as server:
        _, token = await server.user("alice")
        task_id = await submit(
            server, token, repo_url="https://github.com/acme/shop.git", prompt="Fix checkout"
        )
        with trio.fail_after(60):
            await wait_status(server.daemon.hub, task_id, TaskStatus.RUNNING)
            await server.store.append_events(
                task_id, [NewEvent("agent.text", {"text": "Reading the tests."})]
            )
            await trio.to_thread.run_sync(_offline, server, token, task_id, tmp_path)
        async with server.client(token) as http:  # signing out revoked the token
            assert (await http.get("/api/me")).status_code == 401


def _offline(server, token: str, task_id: str, tmp_path) -> None:
    from playwright.sync_api import expect

    profile = tmp_path / "profile"
    with phone(profile) as browser:
        page = browser.page
        sign_in(page, server.url, token, remember=True)
        row = page.locator(f'#tasks li[data-task-id="{task_id}"]')
        expect(row).to_contain_text("running")
        row.locator("a").click()
        expect(page.locator("#t-events")).to_contain_text("Reading the tests.")
        # The service worker has the shell; the token is kept where "stay signed in" says, and
        # is in no URL and no cache.
        page.wait_for_function("navigator.serviceWorker.controller !== null")
        cached = page.evaluate(SHELL_CACHED)
        assert "/" in cached and "/app/app.js" in cached and not any("/api/" in url for url in cached)
        assert page.evaluate("localStorage.getItem('agentd.token')") == token
        assert page.evaluate("sessionStorage.getItem('agentd.token')") is None

        page.context.set_offline(True)
        page.reload()
        expect(page.locator("#banner")).to_contain_text("You are offline")
        expect(page.locator("#t-title")).to_have_text("acme/shop")
        expect(page.locator("#t-events")).to_contain_text("Reading the tests.")
        assert shown_seqs(page) == [1, 2, 3, 4]
        page.click("nav >> text=Tasks")
        expect(row).to_contain_text("running")
        expect(page.locator("#list-error")).to_contain_text("offline")
        page.context.set_offline(False)
        expect(page.locator("#live")).to_have_text("live")
        expect(page.locator("#banner")).to_be_hidden()
        assert page.evaluate("window.__csp") == []  # (offline, the console has failed loads: expected)

    # Launched again (a new browser on the same profile): still signed in, no token asked.
    with phone(profile) as browser:
        page = browser.page
        page.goto(server.url + "/")
        expect(page.locator("#whoami")).to_have_text("alice")
        expect(page.locator(f'#tasks li[data-task-id="{task_id}"]')).to_contain_text("running")
        page.click("#signout")
        expect(page.locator("#v-signin")).to_be_visible()
        assert page.evaluate("sessionStorage.length + localStorage.length") == 0
        browser.check_clean()


# The URLs the service worker's cache holds.
SHELL_CACHED = """
(async () => {
  const urls = [];
  for (const name of await caches.keys()) {
    for (const request of await (await caches.open(name)).keys()) urls.push(new URL(request.url).pathname);
  }
  return urls;
})()
"""


async def test_a_create_whose_answer_is_lost_is_sent_again_and_shows_the_same_task(tmp_path):
    async with running_daemon(tmp_path) as server:
        server.daemon.supervisor.drain()
        alice, token = await server.user("alice")
        for i in range(31):  # older tasks: a page of the list and one more
            task, _ = await server.daemon.supervisor.submit(
                user_id=alice.id, repo_url=f"file:///r{i}", prompt="old"
            )
            if i == 0:
                await server.daemon.supervisor.cancel(task.id)
        with trio.fail_after(60):
            await trio.to_thread.run_sync(_create_twice, server, token, tmp_path)
        tasks = await server.store.list_tasks(user_id=alice.id)
        assert [task.prompt for _, task in tasks].count("Fix the flaky test") == 1


def _create_twice(server, token: str, tmp_path) -> None:
    from playwright.sync_api import expect

    keys: list[str] = []
    answers: list[int] = []

    def lose_the_first_answer(route) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        keys.append(route.request.headers["idempotency-key"])
        if len(keys) == 1:
            answers.append(route.fetch().status)  # the server made the task...
            route.abort("connectionreset")  # ...and the phone never heard of it
        else:
            response = route.fetch()
            answers.append(response.status)
            route.fulfill(response=response)

    with phone(tmp_path / "profile") as browser:
        page = browser.page
        sign_in(page, server.url, token)
        page.route("**/api/tasks", lose_the_first_answer)
        page.click("#v-list .bar a")
        page.fill("#repo-url", "https://github.com/acme/shop.git")
        page.fill("#prompt", "Fix the flaky test")
        page.click("#new-submit")
        expect(page.locator("#v-task")).to_be_visible()
        expect(page.locator("#t-prompt")).to_have_text("Fix the flaky test")
        assert answers == [201, 200] and keys[0] == keys[1] and len(keys[0]) >= 20
        task_id = page.evaluate("decodeURIComponent(location.hash.split('/')[2])")
        browser.problems.clear()  # the aborted request is logged by the browser: expected

        # The list: newest first, a page at a time, filtered by status.
        page.click("nav >> text=Tasks")
        rows = page.locator("#tasks li")
        expect(rows).to_have_count(30)
        expect(rows.first).to_have_attribute("data-task-id", task_id)
        page.click("#tasks-more")
        expect(rows).to_have_count(32)
        expect(page.locator("#tasks-more")).to_be_hidden()
        page.select_option("#filter", "cancelled")
        expect(rows).to_have_count(1)
        expect(rows.first.locator(".status")).to_have_text("cancelled")
        browser.check_clean()
