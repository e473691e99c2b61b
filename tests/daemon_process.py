"""The real ``agentd serve`` as a subprocess: started on a free port, stopped by signal.

Readiness is read from the daemon's own log line ("agentd serving on URL"), never guessed with a
sleep. Teardown is terminate -> wait -> kill.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from .fakes import phone

ROOT = Path(__file__).resolve().parents[1]
# The line may be a JSON log line: the URL ends at a quote or a comma as well as at a space.
READY = re.compile(r"agentd serving on (http://[^\s\",]+)")


@asynccontextmanager
async def stand_in(script: str, *args: str) -> AsyncIterator[tuple[subprocess.Popen[str], Any]]:
    """``python -c script ARGS...`` on the source tree (a stand-in for the daemon), and the JSON
    it prints as its first line; killed with SIGKILL and reaped when the block ends, however."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        yield proc, json.loads(await trio.to_thread.run_sync(proc.stdout.readline))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()


def short_socket_dir() -> Path:
    """Unix socket paths are limited to 108 bytes; pytest's tmp paths can be longer."""
    return Path(tempfile.mkdtemp(prefix="agentd-", dir="/tmp"))


class DaemonProcess:
    def __init__(
        self,
        data_dir: Path,
        *,
        script: dict[str, Any] | None = None,
        extra_env: dict[str, str] | None = None,
        args: list[str] | None = None,
        anthropic_key: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.socket = short_socket_dir() / "agentd.sock"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.script_path = data_dir / "script.json"
        self.script_path.write_text(json.dumps(script or {"turns": []}))
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "AGENTD_ALLOW_LOCAL_REMOTES": "1",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        if phone.STORE_URL and "AGENTD_STORE" not in self.env:  # the test's backend
            self.env["AGENTD_STORE"] = phone.STORE_URL
        self.env.pop("ANTHROPIC_API_KEY", None)
        self.model_args = ["--model", "scripted", "--script", str(self.script_path)]
        if anthropic_key is not None:  # Claude's provider (ANTHROPIC_BASE_URL from extra_env, say)
            self.env["ANTHROPIC_API_KEY"] = anthropic_key
            self.model_args = ["--model", "anthropic"]
        self.args = args or []
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.log: list[str] = []
        self._ready = threading.Event()
        self._logged = threading.Condition()
        self._ended = False

    def start(self, timeout: float = 60) -> DaemonProcess:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daemon.cli",
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--http",
                "127.0.0.1:0",
                "--control-socket",
                str(self.socket),
                *self.model_args,
                *self.args,
            ],
            env=self.env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self._ready.wait(timeout) or not self.url:
            self.kill()
            raise AssertionError("agentd did not start:\n" + "".join(self.log))
        return self

    def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                with self._logged:
                    self.log.append(line)
                    self._logged.notify_all()
                match = READY.search(line)
                if match and not self.url:
                    self.url = match.group(1)
                    self._ready.set()
        finally:
            self._ready.set()  # the process ended: unblock start()
            with self._logged:
                self._ended = True
                self._logged.notify_all()

    def wait_for_log(self, text: str, timeout: float = 60) -> bool:
        """Whether a log line containing ``text`` came within ``timeout`` (False once it exited)."""
        with self._logged:
            return self._logged.wait_for(
                lambda: self._ended or any(text in line for line in self.log), timeout
            ) and any(text in line for line in self.log)

    def agentctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "control.cli", "--socket", str(self.socket), *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
