"""The web client's new-task form offers the operator's models with their prices, a pull request
title and a draft checkbox, and what a person picks there is the task's (issue 19). Debian's
Chromium through Playwright against the real daemon (tests/client_browser.py)."""

from __future__ import annotations

import trio

from .client_browser import BROWSER_TEST, check_view, phone, sign_in
from .fakes.phone import running_daemon
from .test_task_options import MODELS

pytestmark = BROWSER_TEST


async def test_the_new_task_form_offers_the_allowlist_with_prices_a_title_and_draft(tmp_path):
    async with running_daemon(tmp_path, **MODELS) as server:
        alice, token = await server.user("alice")
        with trio.fail_after(120):
            await trio.to_thread.run_sync(_start_on_house_model, server, token, tmp_path)
        (task,) = [task for _, task in await server.store.list_tasks(user_id=alice.id)]
    assert (task.model, task.draft, task.pr_title) == ("house-model", True, "Make add() add")


def _start_on_house_model(server, token: str, tmp_path) -> None:
    from playwright.sync_api import expect

    with phone(tmp_path / "profile") as browser:
        page = browser.page
        sign_in(page, server.url, token)
        page.click("#v-list .bar a")
        expect(page.locator("#new-h")).to_be_focused()
        select = page.locator("#model")
        expect(select).to_be_enabled()  # three models on offer: a choice
        expect(select.locator("option")).to_have_text(
            [
                "claude-sonnet-5-5 ($2 in / $10 out per Mtok)",
                "claude-haiku-4-5 ($1 in / $5 out per Mtok)",
                "house-model ($1 in / $2 out per Mtok)",
            ]
        )
        expect(select).to_have_value("claude-sonnet-5-5")  # the default, chosen
        select.select_option("house-model")
        expect(page.locator("#model-price")).to_have_text(
            "US$ per million tokens: 1 in, 2 out, 3 cache write, 0.5 cache read."
        )
        check_view(page, "new task form with models")
        page.fill("#repo-url", "file:///repo")
        page.fill("#prompt", "Fix add()")
        page.fill("#pr-title", "  Make add() add ")
        page.check("#pr-draft")
        page.click("#new-submit")
        expect(page.locator("#t-prompt")).to_have_text("Fix add()")
