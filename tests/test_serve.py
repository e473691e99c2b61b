"""The real daemon as a subprocess: serve, report status, drain on SIGTERM, survive SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import apsw
import httpx2
import pytest
import trio

from daemon.store import SqliteStore

from .agent_env import bare_repo, text, tool_use
from .daemon_process import DaemonProcess

pytestmark = pytest.mark.slow


def integrity(db) -> str:
    conn = apsw.Connection(str(db))
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def test_serve_answers_health_and_status_then_drains_on_sigterm(tmp_path):
    data = tmp_path / "data"
    with DaemonProcess(data) as daemon:
        assert httpx2.get(f"{daemon.url}/healthz").json() == {"status": "ok"}
        assert httpx2.get(f"{daemon.url}/readyz").status_code == 200
        result = daemon.agentctl("--json", "status")
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        assert status["phase"] == "serving" and status["admitting"] is True
        assert status["db_path"] == str(data / "agentd.db")
        table = daemon.agentctl("status")
        assert table.returncode == 0 and "serving" in table.stdout
        assert daemon.stop(signal.SIGTERM) == 0
        assert not daemon.socket.exists()
    assert integrity(data / "agentd.db") == "ok"


def test_a_second_daemon_on_the_same_data_dir_is_refused(tmp_path):
    data = tmp_path / "data"
    with DaemonProcess(data):
        second = DaemonProcess(data)
        with pytest.raises(AssertionError, match="already using the data dir"):
            second.start()
        assert second.proc.returncode == 2


def test_agentctl_says_where_it_looked_when_no_daemon_runs(tmp_path):
    daemon = DaemonProcess(tmp_path / "data")
    result = daemon.agentctl("status")
    assert result.returncode == 2
    assert str(daemon.socket) in result.stderr


async def create_task(data, repo_url: str, prompt: str) -> str:
    store = await SqliteStore.open(data)
    try:
        user = await store.upsert_user("alice")
        task, _ = await store.create_task(user_id=user.id, repo_url=repo_url, prompt=prompt)
        return task.id
    finally:
        await store.aclose()


async def read_task(data, task_id):
    store = await SqliteStore.open(data)
    try:
        return await store.get_task(task_id), await store.read_events(task_id), await store.list_messages(task_id)
    finally:
        await store.aclose()


def test_sigkill_mid_task_then_restart_completes_without_rerunning_the_tool(tmp_path):
    data = tmp_path / "data"
    bare = bare_repo(tmp_path)
    script = {"turns": [
        {"content": [tool_use("slow", "bash", command="echo ran >> runs.txt; sleep 300")]},
        {"content": [tool_use("fix", "str_replace_based_edit_tool", command="str_replace", path="calc.py",
                              old_str="a - b", new_str="a + b")]},
        {"content": [text("Fixed; the slow step was interrupted and not repeated.")]},
    ]}
    task_id = trio.run(create_task, data, str(bare), "Fix add()")
    with DaemonProcess(data, script=script, extra_env={"AGENTD_CONCURRENCY": "1"}) as daemon:
        # Follow the task until the slow command is running, then kill -9 the daemon.
        follower = subprocess.Popen(
            [sys.executable, "-m", "control.cli", "--socket", str(daemon.socket), "--json", "tail", task_id],
            env=daemon.env, stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        )
        for line in follower.stdout:
            if json.loads(line).get("event") == "agent.tool_call":
                break
        # The event is written just before the command starts: kill once it has really run.
        ran = data / "workspaces" / task_id / "runs.txt"
        deadline = time.monotonic() + 60
        while not ran.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        daemon.proc.kill()
        daemon.proc.wait(30)
        follower.kill()
        follower.wait(30)
    workspace = data / "workspaces" / task_id
    with DaemonProcess(data, script=script) as daemon:
        result = daemon.agentctl("--json", "tail", task_id, timeout=120)
        assert result.returncode == 0, result.stderr
        assert daemon.stop() == 0
    task, events, turns = trio.run(read_task, data, task_id)
    assert task.status.value == "succeeded", task.error
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    statuses = [e.data["status"] for e in events if e.type == "task.status"]
    assert statuses == ["queued", "running", "queued", "running", "succeeded"]
    interrupted = turns[2]["content"][0]
    assert interrupted["tool_use_id"] == "slow" and interrupted["is_error"] is True
    assert (workspace / "runs.txt").read_text() == "ran\n"
    assert integrity(data / "agentd.db") == "ok"
