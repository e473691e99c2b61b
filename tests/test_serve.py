"""The real daemon as a subprocess: serve, report status, drain on SIGTERM, survive SIGKILL."""

from __future__ import annotations

import gc
import json
import re
import signal
import socket
import subprocess
import sys
import time

import apsw
import httpx2
import pytest
import trio

from daemon import service
from daemon.config import Settings
from daemon.service import Daemon
from daemon.store import SqliteStore
from daemon.supervisor.runner import NoopRunner

from .agent_env import FIX_CALC_EDIT, bare_repo, text, tool_use
from .daemon_process import ROOT, DaemonProcess, short_socket_dir

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
        return (
            await store.get_task(task_id),
            await store.read_events(task_id),
            await store.list_messages(task_id),
        )
    finally:
        await store.aclose()


def test_sigkill_mid_task_then_restart_completes_without_rerunning_the_tool(tmp_path):
    data = tmp_path / "data"
    bare = bare_repo(tmp_path)
    script = {
        "turns": [
            {"content": [tool_use("slow", "bash", command="echo ran >> runs.txt; sleep 300")]},
            {"content": [FIX_CALC_EDIT]},
            {"content": [text("Fixed; the slow step was interrupted and not repeated.")]},
        ]
    }
    task_id = trio.run(create_task, data, str(bare), "Fix add()")
    with DaemonProcess(data, script=script, extra_env={"AGENTD_CONCURRENCY": "1"}) as daemon:
        # Follow the task until the slow command is running, then kill -9 the daemon.
        follower = subprocess.Popen(
            [sys.executable, "-m", "control.cli", "--socket", str(daemon.socket), "--json", "tail", task_id],
            env=daemon.env,
            stdout=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
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


# ------------------------------------------------------- mistakes at start: one line, no traceback


def serve_once(tmp_path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``agentd serve`` that is expected to stop at once (flags after ``args`` win)."""
    daemon = DaemonProcess(tmp_path / "data", extra_env=env)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon.cli",
            "serve",
            "--data-dir",
            str(daemon.data_dir),
            "--control-socket",
            str(daemon.socket),
            *daemon.model_args,
            *args,
        ],
        env=daemon.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_a_busy_port_is_one_line_naming_it(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = serve_once(tmp_path, "--http", address)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"agentd: {address} is in use (another agentd, or another program, listens there): "
        "stop it or choose another --http HOST:PORT"
    )


def test_a_bare_port_asks_whether_loopback_was_meant(tmp_path):
    result = serve_once(tmp_path, "--http", "8080")
    assert result.returncode == 2
    assert result.stderr == (
        "agentd: config: http: expected HOST:PORT, got '8080'; did you mean 127.0.0.1:8080?\n"
    )


@pytest.mark.parametrize(
    "target, why",
    [
        ("exists.db", "something is there already (a backup never overwrites): give a new file name"),
        ("no-such-dir/backup.db", "there is no directory {path.parent}"),
        # sysfs makes no files, for root either: a directory the daemon may not write in.
        ("/sys/agentd-backup.db", "permission denied: the daemon's user may not write in /sys"),
    ],
)
def test_a_backup_that_cannot_be_written_is_one_line_naming_the_path(tmp_path, target, why):
    data, path = tmp_path / "data", tmp_path / target
    with DaemonProcess(data) as daemon:
        if "AGENTD_STORE" in daemon.env:
            pytest.skip("backup is SQLite's")
        (tmp_path / "exists.db").write_text("keep me")
        result = daemon.agentctl("backup", str(path))
        log = "".join(daemon.log)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"agentctl: backup: cannot back up to {path}: {why.format(path=path)} (bad_arguments)\n"
    )
    assert (tmp_path / "exists.db").read_text() == "keep me"
    assert "Traceback" not in log and "control command backup failed" not in log


def test_metrics_http_moves_metrics_off_the_http_port(tmp_path):
    env = {"AGENTD_METRICS_HTTP": "127.0.0.1:0"}
    with DaemonProcess(tmp_path / "data", extra_env=env) as daemon:
        assert daemon.wait_for_log("metrics on http://")
        (url,) = re.findall(r"metrics on (http://[^\s\",]+)", "".join(daemon.log))
        scraped = httpx2.get(url)
        assert scraped.status_code == 200 and "agentd_build_info" in scraped.text
        assert httpx2.get(f"{daemon.url}/metrics").status_code == 404
        assert httpx2.get(f"{daemon.url}/healthz").status_code == 200
        assert daemon.stop(signal.SIGTERM) == 0


def test_a_metrics_address_in_use_is_one_line_naming_it(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = serve_once(tmp_path, "--http", "127.0.0.1:0", env={"AGENTD_METRICS_HTTP": address})
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"agentd: config: metrics_http: cannot listen on {address}: in use (another program listens there)"
    )


async def test_the_collector_is_off_until_the_daemon_serves_then_on(tmp_path, monkeypatch):
    # `agentd serve` turns it off for its start (daemon/cli.py); run_daemon turns it on once serving.
    settings = Settings(
        data_dir=tmp_path / "data",
        http="127.0.0.1:0",
        control_socket=short_socket_dir() / "agentd.sock",
        pin_loop_cpu=False,
    )
    daemon, tuned = Daemon(settings, runner=NoopRunner()), trio.Event()
    seen: list[bool] = []
    monkeypatch.setattr(service, "tune_gc_for_serving", lambda: (seen.append(gc.isenabled()), tuned.set()))
    gc.disable()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run_daemon, daemon)
            with trio.fail_after(30):
                await tuned.wait()
            await trio.lowlevel.checkpoint()  # run_daemon goes on past the tuning
            assert seen == [False] and gc.isenabled() and daemon.phase == "serving"
            daemon.request_stop()
    finally:
        gc.enable()
