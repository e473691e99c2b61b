"""Structured logs: JSON lines off a terminal, console lines on one, task_id bound, no secrets."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
import urllib.request
from datetime import datetime

import pytest
import structlog
import trio

from daemon import logs
from daemon.cli import main
from daemon.states import TaskStatus
from daemon.supervisor import RunContext, RunResult

from .daemon_process import READY, ROOT, DaemonProcess
from .helpers import running_supervisor, submit, wait_status

log = logging.getLogger("tests.logs")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def capture():
    """Install the real setup on a buffer; put the previous root logger setup back afterwards."""
    root = logging.getLogger()
    level = root.level
    installed: list[logging.Handler] = []

    def install(level: str = "INFO", fmt: logs.LogFormat = "json", stream=None) -> io.StringIO:
        stream = io.StringIO() if stream is None else stream
        installed.append(logs.configure(level, fmt, stream))
        return stream

    yield install
    for handler in installed:
        root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_say_when_how_bad_who_and_what(capture):
    out = capture("INFO", "json")
    log.info("cloned %s", "example/repo", extra={"commit": "abc123", "files": 3})
    (line,) = lines(out)
    assert list(line)[:4] == ["timestamp", "level", "logger", "message"]
    assert line["level"] == "info" and line["logger"] == "tests.logs"
    assert line["message"] == "cloned example/repo"
    assert line["commit"] == "abc123" and line["files"] == 3
    assert datetime.fromisoformat(line["timestamp"]).utcoffset().total_seconds() == 0


def test_an_exception_is_one_field_of_its_line(capture):
    out = capture("INFO", "json")
    try:
        raise RuntimeError("the disk is full")
    except RuntimeError:
        log.exception("writing failed")
    (line,) = lines(out)
    assert line["level"] == "error" and line["message"] == "writing failed"
    assert line["exception"].startswith("Traceback")
    assert "RuntimeError: the disk is full" in line["exception"]


def test_auto_writes_console_lines_on_a_terminal_and_json_elsewhere(capture):
    terminal = capture("INFO", "auto", Terminal())
    log.info("hello there")
    text = terminal.getvalue()
    assert "hello there" in text and "info" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    pipe = capture("INFO", "auto", io.StringIO())
    log.info("hello there")
    assert lines(pipe)[0]["message"] == "hello there"


def test_the_log_level_is_honoured(capture):
    out = capture("warning", "json")
    log.info("not shown")
    log.warning("shown")
    assert [line["message"] for line in lines(out)] == ["shown"]


SECRETS = [
    ("agentd_" + "Ab3_-x" * 8, "agentd_[REDACTED]"),
    ("sk-ant-api03-" + "k" * 40, "sk-ant-[REDACTED]"),
    ("ghp_" + "A1b2" * 9, "ghp_[REDACTED]"),
    ("gho_" + "Z9y8" * 9, "gho_[REDACTED]"),
    ("github_pat_11ABCDEFG0" + "x" * 60, "github_pat_[REDACTED]"),
    ("Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "Bearer [REDACTED]"),
]


@pytest.mark.parametrize(("secret", "shown"), SECRETS)
def test_tokens_never_reach_a_log_line(capture, secret, shown):
    out = capture("INFO", "json")
    log.info("request with %s failed", secret, extra={"headers": {"x-echo": [secret]}})
    try:
        raise ValueError(f"bad credentials: {secret}")
    except ValueError:
        log.exception("push failed")
    text = out.getvalue()
    assert secret not in text
    first, second = lines(out)
    assert first["message"] == f"request with {shown} failed"
    assert first["headers"] == {"x-echo": [shown]}
    assert shown in second["exception"]


def test_fields_named_like_secrets_are_hidden_whatever_they_hold(capture):
    out = capture("INFO", "json")
    log.info("calling GitHub", extra={"authorization": "token abc", "api_key": "short"})
    (line,) = lines(out)
    assert line["authorization"] == "[REDACTED]" and line["api_key"] == "[REDACTED]"


def test_console_lines_are_redacted_too(capture):
    out = capture("INFO", "console", Terminal())
    log.info("key %s", "sk-ant-api03-" + "k" * 40)
    assert "kkkk" not in out.getvalue() and "sk-ant-[REDACTED]" in out.getvalue()


class Chatty:
    """Logs from the attempt's own task and from a task it spawns."""

    async def run(self, ctx: RunContext) -> RunResult:
        log.info("working")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._helper)
        return RunResult()

    async def _helper(self) -> None:
        await trio.sleep(1)
        log.info("helping")


async def test_every_line_logged_while_a_task_runs_carries_its_task_id(
    capture, store, hub, alice, autojump_clock
):
    out = capture("INFO", "json")
    async with running_supervisor(store, hub, Chatty(), concurrency=2) as supervisor:
        first, second = await submit(supervisor, alice), await submit(supervisor, alice)
        for task in (first, second):
            await wait_status(hub, task.id, TaskStatus.SUCCEEDED)
        log.info("outside any task")
    by_message: dict[str, list] = {}
    for line in lines(out):
        by_message.setdefault(line["message"], []).append(line.get("task_id"))
    assert sorted(by_message["working"]) == sorted([first.id, second.id])
    assert sorted(by_message["helping"]) == sorted([first.id, second.id])  # children inherit it
    assert by_message["outside any task"] == [None]  # and it does not leak out


def test_an_unknown_log_level_is_a_config_error(tmp_path, capsys):
    assert main(["serve", "--data-dir", str(tmp_path), "--log-level", "loud"]) == 2
    assert "log_level" in capsys.readouterr().err


@pytest.mark.slow
def test_the_real_daemon_writes_only_json_lines_and_no_hypercorn_banner(tmp_path):
    """``agentd serve --log-format json``: every line it writes is a JSON object, and
    Hypercorn's "Running on ... (CTRL + C to quit)" is not among them."""
    with DaemonProcess(tmp_path / "data", args=["--log-format", "json"]) as daemon:
        with urllib.request.urlopen(f"{daemon.url}/healthz", timeout=30) as response:
            assert response.status == 200  # a request Hypercorn serves
        assert daemon.stop(signal.SIGTERM) == 0
    parsed = [json.loads(line) for line in daemon.log]  # stdout and stderr, one pipe
    assert parsed and all(isinstance(line, dict) for line in parsed)
    assert [line for line in parsed if "CTRL + C" in line["message"]] == []
    serving = [line for line in parsed if line["message"].startswith("agentd serving on")]
    assert len(serving) == 1
    assert READY.search(json.dumps(serving[0])).group(1) == daemon.url


async def test_hypercorns_log_lines_are_json_lines_like_ours(capture, tmp_path):
    from daemon.config import Settings
    from daemon.web.app import hypercorn_config

    out = capture("INFO", "json")
    config = hypercorn_config(Settings(data_dir=tmp_path))
    await config.log.warning("ASGI Framework Lifespan error, continuing without Lifespan support")
    (line,) = lines(out)
    assert (line["logger"], line["level"]) == ("hypercorn.error", "warning")
    assert line["message"].startswith("ASGI Framework Lifespan error")


def test_python_warnings_are_json_lines_too():
    code = (
        "import warnings; from daemon import logs; logs.configure('INFO', 'json'); "
        "warnings.warn('an old API', DeprecationWarning)"
    )
    run = subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        cwd=ROOT,
        timeout=60,
        capture_output=True,
        text=True,
        check=True,
    )
    (line,) = [json.loads(text) for text in run.stderr.splitlines()]
    assert line["logger"] == "py.warnings" and "DeprecationWarning: an old API" in line["message"]
