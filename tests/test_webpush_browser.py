"""The "Notify me on this device" control of the phone client in Debian's Chromium, against the
real daemon in-process.

What headless Chromium can do here: it has notifications and a service worker, but its push
manager subscribes only through the browser vendor's own push service (no way to point it at a
local one, and no network but loopback), so ``pushManager.subscribe`` fails. So this checks the
control itself, the refused permission's clear message, and, with the permission granted, that
the page asks this server's VAPID key and then says in words why this browser could not
subscribe (or, where a Chromium can subscribe, that the server has the subscription). The
subscription path from the server's side is ``test_webpush_e2e.py``'s.
"""

from __future__ import annotations

import re

import trio

from .client_browser import BROWSER_TEST, check_view, phone, run, sign_in
from .fakes.phone import running_daemon

pytestmark = BROWSER_TEST


async def test_the_notification_control_asks_for_permission_and_says_what_went_wrong(tmp_path):
    async with running_daemon(tmp_path) as server:
        alice, token = await server.user("alice")
        await trio.to_thread.run_sync(_look_at_the_control, server, alice.id, token, tmp_path)


def _look_at_the_control(server, user_id: int, token: str, tmp_path) -> None:
    from playwright.sync_api import expect

    with phone(tmp_path / "denied") as browser:
        page = browser.page
        sign_in(page, server.url, token)
        button = page.locator("#push-toggle")
        expect(button).to_have_text("Notify me on this device")
        expect(button).to_have_attribute("aria-pressed", "false")
        check_view(page, "account footer with the notification control")
        # Headless Chromium answers the permission prompt itself: no.
        page.evaluate("Notification.requestPermission()")
        button.click()
        note = page.locator("#push-note")
        expect(note).to_contain_text("Notifications")
        assert page.evaluate("Notification.permission") in ("denied", "default")
        expect(note).to_contain_text("Press the button again" if _default(page) else "site settings")
        expect(button).to_have_attribute("aria-pressed", "false")
        browser.check_clean()

    with phone(tmp_path / "granted") as browser:
        page = browser.page
        browser.context.grant_permissions(["notifications"], origin=server.url)
        sign_in(page, server.url, token)
        asked: list[str] = []
        page.on("request", lambda r: asked.append(r.url) if "/api/push/" in r.url else None)
        page.locator("#push-toggle").click()
        note = page.locator("#push-note")
        # The page gives the browser's push service 15 s to answer.
        expect(note).to_contain_text(re.compile("notified|Could not"), timeout=40_000)
        subscribed = run(server.store.list_targets, user_id, kind="webpush")
        if page.locator("#push-toggle").get_attribute("aria-pressed") == "true":
            # A Chromium that can reach a push service: the server has the subscription.
            expect(note).to_contain_text("This device is notified")
            assert len(subscribed) == 1
        else:
            expect(note).to_contain_text("Could not change notifications: this browser's push service")
            assert subscribed == []
        assert any(url.endswith("/api/push/key") for url in asked)
        browser.check_clean()


def _default(page) -> bool:
    return page.evaluate("Notification.permission") == "default"


async def test_the_service_worker_shows_a_push_as_text_and_opens_only_this_origins_task_page(tmp_path):
    async with running_daemon(tmp_path) as server:
        _alice, token = await server.user("alice")
        await trio.to_thread.run_sync(_push_to_the_worker, server, token, tmp_path)


HOSTILE = {
    "title": "<img src=x onerror=alert(1)>Task finished\u0007",
    "body": "<b>done</b>\n" + "y" * 500,
    "url": "https://evil.example/#/task/01kxyz",
    "tag": "task-01kxyz",
}


_SHOWN_TWO = """async () => {
  const registration = await navigator.serviceWorker.ready;
  for (let i = 0; i < 400; i++) {
    if ((await registration.getNotifications()).length === 2) return true;
    await new Promise((done) => setTimeout(done, 25));
  }
  return false;
}"""


def _push_to_the_worker(server, token: str, tmp_path) -> None:
    """DevTools' ServiceWorker.deliverPushMessage hands the worker a push event as a push
    service would (the payload already decrypted); the notification it shows is read back."""
    import json

    with phone(tmp_path / "worker") as browser:
        page = browser.page
        browser.context.grant_permissions(["notifications"], origin=server.url)
        sign_in(page, server.url, token)
        cdp = browser.context.new_cdp_session(page)
        registrations: list[str] = []
        cdp.on(
            "ServiceWorker.workerRegistrationUpdated",
            lambda event: registrations.extend(r["registrationId"] for r in event["registrations"]),
        )
        cdp.send("ServiceWorker.enable")
        page.evaluate("navigator.serviceWorker.ready.then(() => true)")
        assert registrations, "no service worker registration seen"
        question = {
            "title": "Task asks you: calc",
            "body": "Tabs?",
            "url": "/#/task/01kabc",
            "tag": "task-01kabc",
        }
        for payload in (HOSTILE, question):
            cdp.send(
                "ServiceWorker.deliverPushMessage",
                {"origin": server.url, "registrationId": registrations[-1], "data": json.dumps(payload)},
            )
        # wait_for_function does not await a promise (it takes the promise for a truthy value and
        # stops at once), and nothing signals a notification shown: the page polls, bounded.
        assert page.evaluate(_SHOWN_TWO), "the worker did not show both notifications within 10 s"
        shown = page.evaluate(
            """navigator.serviceWorker.ready.then(r => r.getNotifications()).then(list =>
                 list.map(n => ({title: n.title, body: n.body, tag: n.tag, url: n.data.url})))"""
        )
        by_tag = {n["tag"]: n for n in shown}
        hostile = by_tag["task-01kxyz"]
        assert hostile["title"] == "<img src=x onerror=alert(1)>Task finished"  # text, control char gone
        assert hostile["body"].startswith("<b>done</b> yyy") and len(hostile["body"]) == 240
        assert hostile["url"] == server.url + "/"  # another origin's URL: only this app's start
        assert by_tag["task-01kabc"]["url"] == server.url + "/#/task/01kabc"
        browser.check_clean()
