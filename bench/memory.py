"""Memory of ``agentd serve`` for the smallest VMs: idle, and with 10 tasks running.

Each measurement starts the real daemon (``tests/daemon_process.py``) on a fresh data dir:

- idle, scripted model: sampled after "agentd serving on";
- idle, Claude configured: a fake key and ``ANTHROPIC_BASE_URL`` pointing at a fake Messages API
  on 127.0.0.1 (in a process of its own; nothing calls it while idle), sampled after "model
  provider anthropic loaded";
- the same, with the whole SDK imported as before issue 23 (a ``sitecustomize`` that runs
  ``import anthropic`` at the interpreter's start, so the daemon's lean import finds it there):
  the reference for what the lean import saves, in the same run;
- 10 running tasks, Claude configured: the fake API answers each task's first turn with a
  ``bash`` call that sleeps, so every task holds its sandbox (bubblewrap, the shell, the
  ``sleep``); sampled once all 10 ``sleep`` processes run. RSS is summed over the daemon and
  every process below it (shared pages count once per process, so the sum overstates what
  they take together; PSS, the proportional share, is given beside it).

"Sampled": every ``SAMPLE_EVERY_S`` for ``--settle`` seconds; the largest sample is reported,
with the smallest as the spread. Bounded: every wait has a timeout, tasks sleep at most
``--hold`` seconds, and the daemon stops with no grace period (its tasks cancelled).

    .venv/bin/python bench/memory.py [--tasks 10] [--settle 3] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import ROOT, emit, machine
from slow_fake_anthropic import SlowFakeAnthropicAPI, serve_until_stdin_closes

from daemon.agent.tools.procs import descendants, proc_file
from tests.daemon_process import DaemonProcess
from tests.fakes.anthropic_api import message, text, tool_use
from tests.fakes.git_http import make_bare_repo

MIB = 1024 * 1024
SAMPLE_EVERY_S = 0.2
WAIT_S = 120.0
FAKE_KEY = "sk-ant-bench-memory"


class HoldingFakeAnthropicAPI(SlowFakeAnthropicAPI):
    """Answers a task's first turn with ``bash: sleep HOLD`` (the task then runs in its sandbox
    until cancelled or HOLD seconds pass), and its next turn with the end."""

    def __init__(self, *, hold_s: float) -> None:
        super().__init__(delay_s=0, turns=2)
        self.hold_s = hold_s

    def reply_for(self, body: dict[str, Any]) -> Any:
        if any(m.get("role") == "assistant" for m in body["messages"]):
            return message(text("Done."))
        return message(
            text("Waiting."), tool_use("toolu_hold", "bash", {"command": f"sleep {self.hold_s:g}"})
        )


@contextmanager
def fake_api(hold_s: float) -> Iterator[str]:
    """The holding fake Messages API in a process of its own; yields its URL."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-fake", "--hold", str(hold_s)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())["url"]
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # it stops when its stdin closes
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def rss_bytes(pid: int) -> int:
    return _kib_field(proc_file(pid, "status"), b"VmRSS:")


def pss_bytes(pid: int) -> int:
    return _kib_field(proc_file(pid, "smaps_rollup"), b"Pss:")


def _kib_field(data: bytes | None, name: bytes) -> int:
    for line in (data or b"").splitlines():
        if line.startswith(name):
            return int(line.split()[1]) * 1024
    return 0  # gone meanwhile


def sample(measure: Callable[[], int], settle_s: float) -> dict[str, float]:
    """``measure()`` every ``SAMPLE_EVERY_S`` for ``settle_s``: the largest and smallest, MiB."""
    values = [measure()]
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        time.sleep(SAMPLE_EVERY_S)
        values.append(measure())
    return {"mib": round(max(values) / MIB, 1), "min_mib": round(min(values) / MIB, 1)}


def daemon_process(
    data_dir: Path, claude_url: str | None, *, whole_sdk: bool = False, concurrency: int = 4
) -> DaemonProcess:
    """The daemon with the scripted model, or Claude's at ``claude_url``; stopped with no grace."""
    config = data_dir.parent / f"{data_dir.name}.toml"
    config.write_text(f"grace_period_s = 0\nconcurrency = {concurrency}\n")
    env = {"ANTHROPIC_BASE_URL": claude_url} if claude_url else {}
    if whole_sdk:
        preload = data_dir.parent / f"{data_dir.name}-whole-sdk"
        preload.mkdir()
        (preload / "sitecustomize.py").write_text("import anthropic  # the whole SDK, as before\n")
        env["PYTHONPATH"] = f"{preload}:{ROOT}"
    key = FAKE_KEY if claude_url else None
    return DaemonProcess(data_dir, anthropic_key=key, extra_env=env, args=["--config", str(config)])


@contextmanager
def running(daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    daemon.start(timeout=WAIT_S)
    try:
        if "ANTHROPIC_API_KEY" in daemon.env and not daemon.wait_for_log(
            "model provider anthropic loaded", timeout=WAIT_S
        ):
            raise SystemExit("the model provider was not loaded:\n" + "".join(daemon.log[-20:]))
        yield daemon
        daemon.stop(timeout=60)
    finally:
        daemon.kill()


def idle(
    tmp: Path, name: str, claude_url: str | None, settle_s: float, *, whole_sdk: bool = False
) -> dict[str, Any]:
    with running(daemon_process(tmp / name, claude_url, whole_sdk=whole_sdk)) as daemon:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        return sample(lambda: rss_bytes(pid), settle_s)


def with_tasks(tmp: Path, claude_url: str, tasks: int, settle_s: float) -> dict[str, Any]:
    repo = make_bare_repo(tmp)
    with running(daemon_process(tmp / "tasks", claude_url, concurrency=tasks)) as daemon:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        idle_rss = rss_bytes(pid)
        token = daemon.agentctl("user-add", "bench").stdout.strip()
        with httpx2.Client(base_url=daemon.url, headers={"Authorization": f"Bearer {token}"}) as http:
            for i in range(tasks):
                http.post(
                    "/api/tasks", json={"repo_url": str(repo), "prompt": f"hold {i}"}
                ).raise_for_status()
        deadline = time.monotonic() + WAIT_S
        while len(sleeping(pid)) < tasks:
            if time.monotonic() > deadline or daemon.proc.poll() is not None:
                raise SystemExit(
                    f"only {len(sleeping(pid))} of {tasks} tasks reached their sandbox:\n"
                    + "".join(daemon.log[-30:])
                )
            time.sleep(SAMPLE_EVERY_S)
        tree = sample(lambda: sum(rss_bytes(p) for p in [pid, *descendants(pid)]), settle_s)
        pss = sample(lambda: sum(pss_bytes(p) for p in [pid, *descendants(pid)]), 0)
        processes = len(descendants(pid))
        daemon_rss = rss_bytes(pid)
    return {
        "tasks": tasks,
        "tree": tree,
        "tree_pss_mib": pss["mib"],
        "processes": processes + 1,
        "daemon_mib": round(daemon_rss / MIB, 1),
        "daemon_idle_mib": round(idle_rss / MIB, 1),
    }


def sleeping(root: int) -> list[int]:
    """The ``sleep`` processes below ``root``: one per task held in its sandbox."""
    return [p for p in descendants(root) if (proc_file(p, "comm") or b"").strip() == b"sleep"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds of samples per figure")
    parser.add_argument("--hold", type=float, default=300.0, help="the longest a task sleeps")
    parser.add_argument("--quick", action="store_true", help="2 tasks, 0.5 s of samples: a smoke run")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake:
        trio.run(serve_until_stdin_closes, HoldingFakeAnthropicAPI(hold_s=args.hold))
        return
    tasks, settle = (2, 0.5) if args.quick else (args.tasks, args.settle)
    with tempfile.TemporaryDirectory(prefix="agentd-bench-memory-") as tmp, fake_api(args.hold) as url:
        root = Path(tmp)
        result = {
            "system": "agentd",
            "machine": machine(),
            "idle_scripted": idle(root, "scripted", None, settle),
            "idle_claude": idle(root, "claude", url, settle),
            "idle_claude_whole_sdk": idle(root, "claude-whole", url, settle, whole_sdk=True),
            "running": with_tasks(root, url, tasks, settle),
        }
    emit(result, args.json)


if __name__ == "__main__":
    main()
