"""The setup phase in the phone client's task timeline, in Debian's Chromium at 390x844: its
steps as one collapsed line like a tool call, its output (sent in parts) inside it as text, and a
line saying how it ended and what the proxy refused. Every event keeps its element and seq.

The events are the ones ``daemon/agent/setup_phase.py`` emits, written by a runner of the test's
own on the real daemon (the setup itself is tested in ``test_setup_phase.py``).
"""

from __future__ import annotations

import trio

from daemon.states import TaskStatus
from daemon.supervisor import RunContext, RunResult

from .client_browser import BROWSER_TEST, check_view, phone, run, shown_seqs, sign_in
from .fakes.phone import running_daemon
from .helpers import wait_status
from .test_admin_api import submit

pytestmark = BROWSER_TEST

OUTPUT = ["Collecting <b>tinypkg</b>\n", "<script>window.__pwned=1</script>\nerror: no wheel\n"]
FINISHED = {
    "exit_code": 1,
    "duration_s": 2.5,
    "timed_out": False,
    "steps": [".agentd/setup.sh"],
    "output_bytes": 64,
    "refused": [{"host": "pypi.example.org", "port": 443, "reason": "not_allowed", "detail": "not allowed"}],
    "refused_total": 1,
    "proxy_connections": 2,
    "proxy_bytes": 900,
}


class SetupEvents:
    """A runner whose attempt is a setup phase that fails, as its events tell it."""

    async def run(self, ctx: RunContext) -> RunResult:
        await ctx.emit("setup.started", {"steps": [".agentd/setup.sh"], "timeout_s": 600.0})
        for text in OUTPUT:
            await ctx.emit("setup.output", {"text": text})
        await ctx.emit("setup.finished", FINISHED)
        return RunResult()


async def test_the_setup_shows_as_a_collapsed_line_with_its_output_and_how_it_ended(tmp_path):
    async with running_daemon(tmp_path, SetupEvents()) as server:
        _, token = await server.user("alice")
        task_id = await submit(server, token, prompt="Install it")
        with trio.fail_after(60):
            await wait_status(server.daemon.hub, task_id, TaskStatus.SUCCEEDED)
            await trio.to_thread.run_sync(_look_at_the_setup, server, token, task_id, tmp_path)


def _look_at_the_setup(server, token: str, task_id: str, tmp_path) -> None:
    from playwright.sync_api import expect

    with phone(tmp_path / "profile") as browser:
        page = browser.page
        sign_in(page, server.url, token)
        page.goto(f"{server.url}/#/task/{task_id}")
        expect(page.locator("#t-status")).to_have_text("succeeded")
        events = page.locator("#t-events")
        setup = events.locator("li.ev-tool.setup")
        expect(setup.locator(".tool-line")).to_have_text("setup: .agentd/setup.sh")
        expect(setup).to_have_class("ev ev-tool setup failed")
        output = setup.locator("pre.out")
        expect(output).to_be_hidden()  # collapsed until tapped
        setup.locator("summary").click()
        expect(output).to_have_text("".join(OUTPUT))
        ended = setup.locator("xpath=following-sibling::li[1]")  # the line after it
        expect(ended).to_have_class("ev ev-note")
        expect(ended).to_contain_text(
            "Setup failed with exit code 1 after 2.5 s; the proxy refused 1 request (pypi.example.org:443)"
        )
        last = run(server.store.get_task, task_id).last_seq
        assert shown_seqs(page) == list(range(1, last + 1))  # each output part is an element too
        assert output.locator("[data-seq]").count() == len(OUTPUT)
        assert page.evaluate("window.__pwned") is None
        assert page.locator("#t-events b, #t-events script").count() == 0
        check_view(page, "a task with a failed setup")
        browser.check_clean()
