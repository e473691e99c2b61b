"""The phone client's files, read as text: what its service worker keeps is the whole shell, and
no file holds what would let markup from a task run (innerHTML and its kin, eval, inline script
or style: the Content-Security-Policy would refuse the latter, but nothing should rely on it)."""

from __future__ import annotations

import json
import re

from daemon.web.client import APP_DIR, AT_ROOT

SCRIPTS = sorted(APP_DIR.glob("*.js"))


def shell_list() -> list[str]:
    text = (APP_DIR / "sw.js").read_text()
    body = re.search(r"const SHELL = \[(.*?)\];", text, re.S)
    assert body is not None
    return json.loads("[" + body.group(1).rstrip().rstrip(",") + "]")


def test_the_service_worker_keeps_every_file_of_the_shell_and_nothing_else():
    served = {f"/app/{path.name}" for path in APP_DIR.iterdir() if path.is_file()}
    at_root = {f"/app/{name}" for name in AT_ROOT.values()}
    expected = (served - at_root) | {"/", "/manifest.webmanifest"}
    shell = shell_list()
    assert len(shell) == len(set(shell))
    assert set(shell) == expected


def test_no_script_puts_markup_into_the_page_or_evaluates_text():
    forbidden = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|setTimeout\(\s*[\"'`]"
        r"|\.style\.|setAttribute\(\s*[\"']on|console\.(log|info|debug)"
    )
    for path in SCRIPTS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("//", 1)[0] if not line.lstrip().startswith("//") else ""
            assert not forbidden.search(code), f"{path.name}:{number}: {line.strip()}"


def test_the_page_has_no_inline_script_style_or_handler():
    html = (APP_DIR / "index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", html) == ['<script type="module" src="/app/app.js">']
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+\s*=", html)
    css = (APP_DIR / "app.css").read_text()
    assert "@import" not in css and "url(" not in css


def test_every_input_of_the_page_has_a_label():
    html = (APP_DIR / "index.html").read_text()
    ids = re.findall(r"<(?:input|select|textarea)\b[^>]*\bid=\"([^\"]+)\"", html)
    assert len(ids) == len(re.findall(r"<(?:input|select|textarea)\b", html))  # each has an id
    for name in ids:
        assert f'<label for="{name}"' in html, name
