"""A compacted task in the phone client (Debian's Chromium at 390x844): it says its history was
removed instead of showing an empty log, shows the event that stayed, and a follow-up's events
come after it.
"""

from __future__ import annotations

import trio

from daemon.retention import run_retention

from .client_browser import BROWSER_TEST, check_view, phone, run, shown_seqs, sign_in
from .fakes.phone import running_daemon
from .test_retention_live import AGE_DAYS, _finished_with_events

pytestmark = BROWSER_TEST


async def test_a_compacted_task_says_so_and_goes_on_after_its_last_event(tmp_path):
    async with running_daemon(tmp_path) as server:
        user, token = await server.user("alice")
        server.daemon.supervisor.drain()  # the follow-up stays queued: its events are known
        task_id = await _finished_with_events(server.store, user.id, 30)
        assert (await run_retention(server.store, AGE_DAYS)).tasks_compacted == 1
        with trio.fail_after(90):
            await trio.to_thread.run_sync(_look_at_compacted_task, server, token, task_id, tmp_path)


def _look_at_compacted_task(server, token: str, task_id: str, tmp_path) -> None:
    from playwright.sync_api import expect

    last = run(server.store.get_task, task_id).last_seq
    with phone(tmp_path / "profile") as browser:
        page = browser.page
        sign_in(page, server.url, token)
        page.goto(f"{server.url}/#/task/{task_id}")
        expect(page.locator("#t-history")).to_contain_text("removed 0 days after it finished")
        expect(page.locator("#t-events")).to_contain_text("Earlier events were removed")
        expect(page.locator("#t-events [data-seq]").last).to_have_attribute("data-seq", str(last))
        assert shown_seqs(page) == [last]
        check_view(page, "a compacted task")
        page.fill("#t-follow", "and one more thing")
        page.click("#t-follow-form button[type=submit]")
        expect(page.locator("#t-events [data-seq]").last).to_have_attribute("data-seq", str(last + 2))
        assert shown_seqs(page) == [last, last + 1, last + 2]  # the message, queued again
        browser.check_clean()


async def test_a_jump_from_nothing_is_taken_only_once_the_task_says_it_was_compacted(tmp_path):
    """The timeline's one gap to take, in the page's own module: a stray live event (seq 7) that
    comes ahead of the replay from seq 1 is not shown as "history removed" (the replay fills the
    timeline); a compacted task's first stored event, skipped while the summary was not read,
    is asked for again once it is."""
    async with running_daemon(tmp_path) as server:
        _user, token = await server.user("alice")
        with trio.fail_after(90):
            await trio.to_thread.run_sync(_timeline_rule, server, token, tmp_path)


_TIMELINE_RULE = """async () => {
  const { Timeline } = await import("/app/timeline.js");
  const event = (seq) => ({ type: "event", seq, event: "agent.text", ts: 0, data: { text: "e" + seq } });
  const gaps = [];
  const fresh = () => new Timeline(document.createElement("ol"),
    { onGap: (after) => gaps.push(after), onChange: () => {} });
  const live = fresh();
  live.accept(event(7));
  const strayShown = live.lastSeq;
  for (const seq of [1, 2, 3, 4, 5, 6, 7, 8]) live.accept(event(seq));
  live.setCompacted(false);
  const compacted = fresh();
  compacted.accept(event(30));
  const beforeSummary = compacted.lastSeq;
  compacted.setCompacted(true);
  compacted.accept(event(30));
  return { strayShown, filled: live.lastSeq, removedNotes: live.root.querySelectorAll(".muted").length,
           beforeSummary, gaps, after: compacted.lastSeq,
           noted: compacted.root.querySelectorAll(".muted").length };
}"""


def _timeline_rule(server, token: str, tmp_path) -> None:
    with phone(tmp_path / "profile") as browser:
        page = browser.page
        sign_in(page, server.url, token)
        got = page.evaluate(_TIMELINE_RULE)
        assert got == {
            "strayShown": 0,  # not taken: the replay from seq 1 is on its way
            "filled": 8,
            "removedNotes": 0,
            "beforeSummary": 0,
            "gaps": [0],  # asked again once the summary said "compacted"
            "after": 30,
            "noted": 1,
        }
        browser.check_clean()
