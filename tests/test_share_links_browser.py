"""Share links in the phone client, in Debian's Chromium at 390x844.

The owner makes a link from the task's "Share" box; another tab opens it: that one task, live
(status, the tool line, the agent's text, markup in it shown as text, the owner's message as
the owner's, not "you wrote"), and nothing else of the app (no navigation, no cancel, retry or
follow-up), with the owner's own token, kept in the same browser, never read or sent. Revoking
the link from the owner's tab ends the share tab's view at once ("expired or was revoked"); a
link that expired shows the same message on opening.
"""

from __future__ import annotations

import trio

from daemon.states import TaskStatus
from daemon.tokens import hash_token
from daemon.usecases.shares import SHARE_TOKEN_PREFIX

from .client_browser import BROWSER_TEST, check_view, phone, run, sign_in
from .fakes.phone import running_daemon
from .helpers import wait_status
from .test_admin_api import submit
from .test_share_links_ws import Gated

pytestmark = BROWSER_TEST

MARKUP = '<img src=x onerror="window.__pwned=1"><b>bold</b>'


async def test_a_share_link_opens_its_one_task_live_and_ends_when_revoked_or_expired(tmp_path):
    runner = Gated(texts=("Looking at the repository.", MARKUP, "Done for now."))
    async with running_daemon(tmp_path, runner) as server:
        alice, token = await server.user("alice")
        task_id = await submit(server, token, prompt="Say hello")
        expired = SHARE_TOKEN_PREFIX + "expired-already"
        now = server.store.now()
        await server.store.add_share_link(
            task_id, alice.id, hash_token(expired), expires_at=now - 1, live_cap=9
        )
        with trio.fail_after(120):
            await wait_status(server.daemon.hub, task_id, TaskStatus.RUNNING)
            await trio.to_thread.run_sync(
                _share_watch_revoke, server, runner, token, task_id, expired, tmp_path
            )
        runner.finish.set()


def _share_watch_revoke(server, runner: Gated, token: str, task_id: str, expired: str, tmp_path) -> None:
    from playwright.sync_api import expect

    with phone(tmp_path / "profile") as browser:
        owner = browser.page
        sign_in(owner, server.url, token, remember=True)  # in localStorage: the share tab must not use it
        owner.goto(f"{server.url}/#/task/{task_id}")
        expect(owner.locator("#t-status")).to_have_text("running")
        run(server.store.add_input, task_id, "Greet in French too")  # the owner's follow-up
        expect(owner.locator("#t-events .ev-user .who")).to_have_text("you wrote")
        owner.click("#t-share")
        owner.click("#t-share-new")
        url = owner.locator("#t-share-url").input_value()
        assert url.startswith(server.url + "/#/s/" + SHARE_TOKEN_PREFIX)
        rows = owner.locator("#t-shares li")  # newest first: this one, live; the expired one
        expect(rows).to_have_count(2)
        expect(rows.first.locator("button")).to_have_text("Revoke")
        expect(rows.last).to_contain_text("expired")
        check_view(owner, "the task's share box")

        # Another tab of the same browser opens the link.
        shared = browser.context.new_page()
        sent_headers: list[dict[str, str]] = []
        frames_sent: list[str] = []
        problems: list[str] = []
        shared.on("request", lambda request: sent_headers.append(request.headers))
        shared.on(
            "websocket", lambda ws: ws.on("framesent", lambda payload: frames_sent.append(str(payload)))
        )
        shared.on("pageerror", lambda error: problems.append(str(error)))
        shared.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        shared.goto(url)
        expect(shared.locator("#v-share")).to_be_visible()
        expect(shared.locator("#s-status")).to_have_text("running")
        expect(shared.locator("#s-prompt")).to_have_text("Say hello")
        expect(shared.locator("#live")).to_have_text("live")
        assert shared.url.endswith("/#/s")  # the token left the address bar and the history
        trio.from_thread.run_sync(runner.go.set)
        events = shared.locator("#s-events")
        expect(events).to_contain_text("Done for now.")
        expect(events.locator(".ev-tool summary")).to_have_text("$ ls")
        expect(events.locator(".ev-text .text").nth(1)).to_have_text(MARKUP)  # as text
        expect(events.locator(".ev-user .who")).to_have_text("the owner wrote")
        expect(events.locator(".ev-user .text")).to_have_text("Greet in French too")
        assert events.locator("img").count() == 0 and shared.evaluate("window.__pwned") is None
        check_view(shared, "share view")

        # Nothing else of the app: no navigation, no action on the task.
        for hidden in ("#nav", "#account", "#v-list", "#v-task", "#v-signin", "#t-cancel", "#t-follow-form"):
            expect(shared.locator(hidden)).to_be_hidden()
        assert shared.locator("a[href]:visible").count() == 0  # not even the brand goes anywhere
        assert shared.evaluate("localStorage.getItem('agentd.share')") is None
        assert shared.evaluate("sessionStorage.getItem('agentd.share')").startswith(SHARE_TOKEN_PREFIX)
        assert not any(token in value for headers in sent_headers for value in headers.values())
        assert not any(token in frame for frame in frames_sent)
        assert any('"share"' in frame for frame in frames_sent)
        assert not any("subscribe_tasks" in frame for frame in frames_sent)

        # The owner revokes it: the share tab says so at once (its WebSocket closed with 4401).
        owner.bring_to_front()
        rows.first.locator("button").click()
        expect(rows.first).to_contain_text("revoked")
        expect(shared.locator("#s-error")).to_contain_text("expired or was revoked")
        expect(shared.locator("#s-body")).to_be_hidden()
        shared.reload()  # and again after a reload
        expect(shared.locator("#s-error")).to_contain_text("expired or was revoked")

        # A link that expired before it was opened.
        gone = browser.context.new_page()
        gone.goto(f"{server.url}/#/s/{expired}")
        expect(gone.locator("#s-error")).to_contain_text("expired or was revoked")
        expect(gone.locator("#s-title")).to_have_text("Link expired")
        check_view(gone, "expired share link")
        assert run(server.store.get_task, task_id).status is TaskStatus.RUNNING  # nothing acted on it
        browser.check_clean()
        assert shared.evaluate("window.__csp") == [] and gone.evaluate("window.__csp") == []
        assert [p for p in problems if "401" not in p] == []  # the refused reads log a 401, nothing else
