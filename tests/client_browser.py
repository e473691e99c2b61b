"""What the phone client's browser tests share: Debian's Chromium at a phone's size (only the
system's, never ``playwright install``), driven by Playwright's sync API in a worker thread
(it has its own event loop; ``run`` reaches back into the daemon's Trio loop), with every console
error, page error and Content-Security-Policy violation collected; the checks every view must
pass (nothing wider than the screen, at 360 and 390 px); and a daemon whose tasks run the
scripted model on real git repositories.

Every wait is Playwright's auto-waiting ``expect``; nothing sleeps.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from daemon.agent.loop import AgentRunner
from daemon.agent.scripted_provider import ScriptedProvider

from .agent_env import agent_settings

CHROMIUM = "/usr/bin/chromium"
# Nothing but 127.0.0.1: no updates, sync, QUIC probes or first-run pages.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Every browser test module's marks: slow, and skipped where Debian's Chromium is not installed.
BROWSER_TEST = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    ),
]
PHONE = {"width": 390, "height": 844}
SMALL_PHONE = {"width": 360, "height": 740}
WIDTHS = (SMALL_PHONE, PHONE)
# Screenshots for the README: written to docs/screenshots when AGENTD_SCREENSHOTS is set (then
# commit them), else next to the test's other files.
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"

# Runs before any of the page's scripts (Playwright adds it outside the page's CSP): collect
# CSP violations, which an injected inline handler or script would cause.
WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__csp.push(e.violatedDirective + " " + e.blockedURI));
"""


def screenshot_dir(tmp_path: Path) -> Path:
    where = DOCS_SCREENSHOTS if os.environ.get("AGENTD_SCREENSHOTS") else tmp_path / "screenshots"
    where.mkdir(parents=True, exist_ok=True)
    return where


def scripted_runner(tmp_path: Path, script: dict[str, Any]) -> AgentRunner:
    """The agent on the scripted model, with its workspaces where ``running_daemon``'s daemon
    keeps them (so the diff route finds the repository agentd owns for each task)."""
    settings = agent_settings(tmp_path, workspace_root=tmp_path / "data" / "workspaces")
    return AgentRunner(ScriptedProvider(script), settings)


@dataclass
class Browser:
    page: Any
    context: Any
    problems: list[str] = field(default_factory=list)  # console errors, page errors
    frames: list[str] = field(default_factory=list)  # every WebSocket frame the page received
    sent: list[str] = field(default_factory=list)  # every WebSocket frame the page sent
    sockets: list[str] = field(default_factory=list)  # the URL of every WebSocket it opened

    def watch(self, ws: Any) -> None:
        self.sockets.append(ws.url)
        ws.on("framereceived", lambda payload: self.frames.append(str(payload)))
        ws.on("framesent", lambda payload: self.sent.append(str(payload)))

    def check_clean(self) -> None:
        """No console error, no page error, no CSP violation so far."""
        violations = self.page.evaluate("window.__csp")
        assert violations == [], violations
        assert self.problems == [], self.problems


@contextmanager
def phone(profile: Path, viewport: dict[str, int] = PHONE, **options: Any) -> Iterator[Browser]:
    """A fresh Chromium profile at a phone's size and one page in it."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=15_000)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=viewport,
            device_scale_factor=2,
            is_mobile=True,
            has_touch=True,
            **options,
        )
        try:
            context.add_init_script(WATCH)
            page = context.pages[0] if context.pages else context.new_page()
            browser = Browser(page, context)
            page.on("console", lambda m: browser.problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: browser.problems.append(str(e)))
            page.on("websocket", browser.watch)
            yield browser
        finally:
            context.close()


def sign_in(page: Any, url: str, token: str, *, remember: bool = False) -> None:
    from playwright.sync_api import expect

    page.goto(url + "/")
    expect(page.locator("#v-signin")).to_be_visible()
    if remember:
        page.check("#remember")
    page.fill("#token", token)
    page.click("#token-form button[type=submit]")
    expect(page.locator("#whoami")).to_be_visible()
    expect(page.locator("#live")).to_have_text("live")
    assert token not in page.url


def check_view(page: Any, where: str) -> None:
    """What every view must be: accessible (``ACCESSIBLE``) and no wider than the screen, at
    360 and at 390 px (then back to the size it had)."""
    problems = page.evaluate(ACCESSIBLE)
    assert not problems, f"{where}: {problems}"
    size = page.viewport_size
    for viewport in WIDTHS:
        page.set_viewport_size(viewport)
        width = page.evaluate("document.scrollingElement.scrollWidth")
        assert width <= viewport["width"], f"{where}: {width} px wide at {viewport['width']} px"
        wide = page.evaluate(WIDEST)
        assert not wide, f"{where}: wider than the screen at {viewport['width']} px: {wide}"
    page.set_viewport_size(size)


# The visible elements that stick out of the screen on the right (none expected).
WIDEST = """
(() => {
  const out = [];
  for (const el of document.querySelectorAll("body *")) {
    const r = el.getBoundingClientRect();
    if (r.width && r.right > innerWidth + 0.5 && el.offsetParent !== null) {
      let clipped = false;
      for (let p = el.parentElement; p; p = p.parentElement) {
        const s = getComputedStyle(p);
        if (s.overflowX !== "visible" && p.getBoundingClientRect().right <= innerWidth + 0.5) {
          clipped = true;
          break;
        }
      }
      if (!clipped) out.push(el.tagName + "#" + el.id + "." + el.className + " " + Math.round(r.right));
    }
  }
  return out.slice(0, 5);
})()
"""


# Every visible input has a label, every button and link a name, and every text its contrast
# (WCAG AA: 4.5:1, 3:1 for large text) against the first opaque background behind it.
ACCESSIBLE = """
(() => {
  const problems = [];
  const shown = (el) => el.offsetParent !== null;
  for (const el of document.querySelectorAll("input, select, textarea")) {
    if (shown(el) && !(el.labels && el.labels.length) && !el.getAttribute("aria-label")) {
      problems.push("no label: #" + el.id);
    }
  }
  for (const el of document.querySelectorAll("button, a, summary")) {
    if (shown(el) && !(el.getAttribute("aria-label") || el.textContent).trim()) {
      problems.push("no name: " + el.outerHTML.slice(0, 80));
    }
  }
  const rgb = (text) => {
    const inside = (text.match(/rgba?\\(([^)]*)\\)/) || [null, ""])[1];
    const parts = inside.split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    if (parts.length < 3) return null;
    return { r: parts[0], g: parts[1], b: parts[2], a: parts.length > 3 ? parts[3] : 1 };
  };
  const luminance = ({ r, g, b }) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0) return c;
    }
    return { r: 255, g: 255, b: 255, a: 1 };
  };
  for (const el of document.querySelectorAll("body *")) {
    if (!shown(el) || ![...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
    const style = getComputedStyle(el);
    const [hi, lo] = [luminance(rgb(style.color)), luminance(background(el))].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (Number(style.fontWeight) >= 700 && size >= 18.66);
    if (ratio < (large ? 3 : 4.5)) {
      const what = el.tagName + "." + el.className + " " + el.textContent.trim().slice(0, 30);
      problems.push("contrast " + ratio.toFixed(2) + ": " + what);
    }
  }
  return problems;
})()
"""


def shown_seqs(page: Any) -> list[int]:
    """The seq of every event element of the open task's timeline, in page order."""
    return page.eval_on_selector_all("#t-events [data-seq]", "els => els.map(e => Number(e.dataset.seq))")


def run(async_fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call into the daemon's Trio loop from the browser's thread."""
    return trio.from_thread.run(partial(async_fn, *args, **kwargs))
