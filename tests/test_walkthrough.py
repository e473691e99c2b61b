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
from pathlib import Path

import pytest

from daemon.agent.scripted_provider import ScriptedProvider

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
    """The walkthrough's ``agentd serve`` line, started in ``cwd``, ready once it logs so."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str]) -> None:
        self.log: list[str] = []
        self._ready = threading.Event()
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
        if not self._ready.wait(TIMEOUT):
            self.stop()
            raise AssertionError("agentd did not start:\n" + "".join(self.log))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)
            if READY.search(line):
                self._ready.set()
        self._ready.set()  # it ended: start() reports the log

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


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_written():
    if shutil.which("curl") is None:
        pytest.skip("the walkthrough uses curl")
    serve, *steps = fenced(SECTION, "sh")
    assert "agentd serve" in serve and not any("agentd serve" in step for step in steps)
    port = free_port()

    def on_free_port(text: str) -> str:
        return text.replace("127.0.0.1:8080", f"127.0.0.1:{port}")

    work = Path(tempfile.mkdtemp(prefix="agentd-walk-", dir="/tmp"))  # short socket paths
    try:
        (work / ".venv").symlink_to(venv_dir())
        (work / "examples").symlink_to(EXAMPLES)
        env = fresh_env()
        daemon = Serving(on_free_port(serve.strip()), work, env)
        try:
            script = "set -euo pipefail\n" + "\n".join(on_free_port(step) for step in steps)
            done = subprocess.run(
                ["bash", "-c", script],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        finally:
            stopped = daemon.stop()
        log = "".join(daemon.log)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n--- agentd:\n{log}"
        assert stopped == 0, log
    finally:
        shutil.rmtree(work, ignore_errors=True)

    out = done.stdout
    lines = [line for line in out.splitlines() if EVENT.match(line)]
    events = [(int(seq), kind) for seq, kind in EVENT.findall("\n".join(lines))]
    # The first tail stops where the task waits; the second (--after) takes it to the end.
    assert [seq for seq, _ in events] == list(range(1, len(events) + 1)), out
    shown = [(int(seq), kind) for block in fenced(SECTION, "text") for seq, kind in EVENT.findall(block)]
    assert shown and events[: len(shown)] == shown, "the README's sample output is stale"
    assert shown[-1][1] == "task.status" and "waiting_input" in lines[len(shown) - 1]
    assert "waits for input" in done.stderr
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
