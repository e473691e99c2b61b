"""The README's "Running the daemon" walkthrough, its commands run as written, and the examples.

The walkthrough runs in a fresh directory under /tmp holding only what a checkout has there
(``.venv`` and ``examples``, linked), with no API key and no agentd settings in the environment:
the first ``sh`` block starts the daemon (its own process group, stopped as Ctrl-C would), the
others run in order in one bash, as a person would type them in a second terminal. The one
liberty taken: port 8080 becomes a free one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from daemon.agent.scripted_provider import ScriptedProvider
from daemon.notify.signing import sign

from .daemon_process import READY, ROOT

README = (ROOT / "README.md").read_text()
EXAMPLES = ROOT / "examples"
SECTION = README.split("\n## Running the daemon\n", 1)[1].split("\n### Configuration\n", 1)[0]
EVENT = re.compile(r"^ *(\d+)  (?:\d\d:\d\d:\d\d|--:--:--)  ([a-z_]+\.[a-z_]+)", re.M)
TIMEOUT = 120  # a guard against hangs, never a wait for something to happen


def fenced(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fresh_env() -> dict[str, str]:
    """This environment without the settings a test run or a developer's shell may hold."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENTD_", "ANTHROPIC_", "STATE_DIRECTORY", "RUNTIME_DIRECTORY"))
    }
    # The source tree under test, whatever the venv's editable install points at.
    return {**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def venv_dir() -> Path:
    for candidate in (ROOT / ".venv", Path(sys.prefix)):
        if (candidate / "bin" / "agentd").exists() and (candidate / "bin" / "agentctl").exists():
            return candidate
    pytest.skip("no venv with agentd and agentctl (make test makes .venv)")


class Serving:
    """A long-running command of the walkthrough (``agentd serve``, the webhook receiver), started
    in ``cwd`` in its own process group, ready once a line of its output matches ``ready``."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str], ready: re.Pattern[str] = READY) -> None:
        self.log: list[str] = []
        self._changed = threading.Condition()
        self._ended = False
        self.proc = subprocess.Popen(
            ["bash", "-c", command],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.wait_for(ready)
        except AssertionError:
            self.stop()
            raise

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.log.append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended = True  # it ended: wait_for reports the log
            self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str]) -> str:
        """The first line of its output matching ``pattern``, once it is printed."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: self._ended or any(pattern.search(line) for line in self.log), TIMEOUT
            )
            line = next((line for line in self.log if pattern.search(line)), None)
            if not found or line is None:
                raise AssertionError(
                    f"{self.proc.args[-1]}: no line like {pattern.pattern}:\n" + "".join(self.log)
                )
            return line

    def stop(self) -> int:
        """Ctrl-C in its terminal (SIGINT to its process group); the exit status."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise


@contextmanager
def walkthrough(serve: str) -> Iterator[tuple[Path, dict[str, str], Serving]]:
    """A fresh directory, the daemon started there by ``serve``; stopped (cleanly) and removed after."""
    work = Path(tempfile.mkdtemp(prefix="agentd-walk-", dir="/tmp"))  # short socket paths
    try:
        (work / ".venv").symlink_to(venv_dir())
        (work / "examples").symlink_to(EXAMPLES)
        env = fresh_env()
        daemon = Serving(serve, work, env)
        try:
            yield work, env, daemon
        finally:
            stopped = daemon.stop()
        assert stopped == 0, "".join(daemon.log)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_steps(steps: list[str], work: Path, env: dict[str, str], daemon: Serving) -> str:
    """``steps`` in one bash, as typed in a second terminal; their output, or a failure showing all."""
    done = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + "\n".join(steps)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    log = "".join(daemon.log)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n--- agentd:\n{log}"
    return done.stdout + done.stderr


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_written():
    if shutil.which("curl") is None:
        pytest.skip("the walkthrough uses curl")
    serve, *steps = fenced(SECTION, "sh")
    assert "agentd serve" in serve and not any("agentd serve" in step for step in steps)
    port = free_port()

    def on_free_port(text: str) -> str:
        return text.replace("127.0.0.1:8080", f"127.0.0.1:{port}")

    with walkthrough(on_free_port(serve.strip())) as (work, env, daemon):
        printed = run_steps([on_free_port(step) for step in steps], work, env, daemon)

    out = printed
    lines = [line for line in out.splitlines() if EVENT.match(line)]
    events = [(int(seq), kind) for seq, kind in EVENT.findall("\n".join(lines))]
    # The first tail stops where the task waits; the second (--after) takes it to the end.
    assert [seq for seq, _ in events] == list(range(1, len(events) + 1)), out
    shown = [(int(seq), kind) for block in fenced(SECTION, "text") for seq, kind in EVENT.findall(block)]
    assert shown and events[: len(shown)] == shown, "the README's sample output is stale"
    assert shown[-1][1] == "task.status" and "waiting_input" in lines[len(shown) - 1]
    assert "waits for input" in printed
    kinds = [kind for _, kind in events]
    assert kinds[-1] == "task.finished" and "git.pushed" in kinds
    assert re.search(r"^status: +succeeded$", out, re.M), out
    assert re.search(r"^ HELLO\.md \| 3 \+\+\+$", out, re.M), out


def test_every_script_in_the_examples_is_one_the_daemon_accepts(tmp_path):
    assert len(ScriptedProvider.from_file(EXAMPLES / "hello.json")) == 5
    documented = fenced((EXAMPLES / "README.md").read_text(), "json")
    assert documented
    for n, text in enumerate(documented):
        path = tmp_path / f"script{n}.json"
        path.write_text(text)
        assert len(ScriptedProvider.from_file(path)) == len(json.loads(text)["turns"])


WEBHOOK_STEPS = (EXAMPLES / "README.md").read_text().split("\n## Get told when a task finishes\n", 1)[1]


def post_hook(port: int, body: bytes, signature: str, delivery_id: str) -> int:
    """POST ``body`` to the receiver as agentd would; its answer's status."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/hook",
        data=body,
        headers={"Agentd-Signature": signature, "Agentd-Delivery": delivery_id, "Agentd-Event": "test"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return refused.code


@pytest.mark.slow
def test_the_webhook_steps_run_as_written():
    """examples/README.md's webhook steps against the walkthrough's daemon and task, then the
    receiver's own checks: a forged or stale signature is refused, a repeated delivery dropped."""
    if shutil.which("curl") is None:
        pytest.skip("the walkthrough uses curl")
    serve, *task_steps = fenced(SECTION, "sh")
    add, receive, deliveries = fenced(WEBHOOK_STEPS, "sh")
    port, hook_port = free_port(), free_port()

    def on_free_ports(text: str) -> str:
        return text.replace("127.0.0.1:8080", f"127.0.0.1:{port}").replace("8081", str(hook_port))

    with walkthrough(on_free_ports(serve.strip())) as (work, env, daemon):
        run_steps([on_free_ports(add)], work, env, daemon)
        secret_file = work / "webhook.secret"
        assert secret_file.stat().st_mode & 0o077 == 0
        receiver = Serving(on_free_ports(receive.strip()), work, env, ready=re.compile("^listening on"))
        try:
            run_steps([on_free_ports(step) for step in task_steps], work, env, daemon)
            asked = receiver.wait_for(re.compile(r"^task\.waiting_input \S+ waiting_input$"))
            ended = receiver.wait_for(re.compile(r"^task\.succeeded \S+ succeeded$"))
            assert asked.split()[1] == ended.split()[1]
            secret = secret_file.read_text().strip()
            body = json.dumps({"id": "d-1", "kind": "test", "task": {"id": "t-1", "status": "x"}}).encode()
            now = int(time.time())
            assert post_hook(hook_port, body, sign("not-the-secret", body, now), "d-1") == 401
            assert post_hook(hook_port, body, sign(secret, body, now - 301), "d-1") == 401
            signature = sign(secret, body, now)
            assert post_hook(hook_port, body, signature, "d-1") == 204
            assert post_hook(hook_port, body, signature, "d-1") == 200  # replayed: dropped
            last = body.replace(b"t-1", b"t-2")
            assert post_hook(hook_port, last, sign(secret, last, now), "d-2") == 204
            # Each line is printed before its answer: once t-2's is out, every earlier one is too.
            receiver.wait_for(re.compile(r"^test t-2 x$"))
            # The daemon records the attempt just after the receiver's answer, which nothing tells
            # a shell about: the step runs again (bounded) until it shows both delivered.
            for _ in range(20):
                log = run_steps([deliveries], work, env, daemon)
                if len(re.findall(r" delivered +1 +204 ", log)) == 2:
                    break
            else:
                raise AssertionError(f"not both delivered:\n{log}")
        finally:
            assert receiver.stop() == 0, "".join(receiver.log)
    printed = "".join(receiver.log)
    assert len(re.findall(r"^test t-1 x$", printed, re.M)) == 1, printed
    assert len(re.findall(r"^401: bad or stale signature$", printed, re.M)) == 2, printed
    assert "repeated delivery d-1, dropped" in printed, printed
