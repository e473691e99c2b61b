"""What ``agentd serve`` creates is its user's alone, whatever umask it was started with.

The real daemon is started from a parent whose umask is 000 (every file it made would be
world-writable), into a data dir the parent made mode 0777; it runs a whole task over HTTP. The
data dir ends 0700, the database 0600, and nothing in the workspaces (the clone, what the
agent's tools wrote) is open to others.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx2
import pytest

from .agent_env import bare_repo, text, tool_use
from .daemon_process import DaemonProcess

pytestmark = pytest.mark.slow


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_the_daemon_makes_its_files_private_under_a_permissive_umask(tmp_path):
    bare = bare_repo(tmp_path)
    script = {
        "turns": [
            {"content": [tool_use("w", "bash", command="echo hi > by-tool.txt; mkdir -p made/dir")]},
            {"content": [text("Wrote a file.")]},
        ]
    }
    data = tmp_path / "data"
    previous = os.umask(0)
    try:
        daemon = DaemonProcess(data, script=script)
        assert mode(data) == 0o777  # the parent's mkdir, before the daemon runs
        with daemon:
            added = daemon.agentctl("user-add", "alice")
            assert added.returncode == 0, added.stderr
            created = httpx2.post(
                f"{daemon.url}/api/tasks",
                json={"repo_url": str(bare), "prompt": "write a file"},
                headers={"Authorization": f"Bearer {added.stdout.strip()}"},
            )
            assert created.status_code == 201, created.text
            task_id = created.json()["id"]
            tail = daemon.agentctl("--json", "tail", task_id, timeout=120)
            assert tail.returncode == 0, tail.stderr
            task = httpx2.get(
                f"{daemon.url}/api/tasks/{task_id}",
                headers={"Authorization": f"Bearer {added.stdout.strip()}"},
            ).json()
            assert task["status"] == "succeeded", task
            assert daemon.wait_for_log("was mode 777, open to others; made it 700")
    finally:
        os.umask(previous)
    assert mode(data) == 0o700
    assert mode(data / "agentd.db") == 0o600
    workspace = data / "workspaces" / task_id
    assert (workspace / "by-tool.txt").read_text() == "hi\n"
    found = [data / "workspaces", *workspace.rglob("*")]
    assert len(found) > 5  # the clone, its .git, what the tool made
    opened = {str(p.relative_to(data)): oct(mode(p)) for p in found if not p.is_symlink() and mode(p) & 0o077}
    assert opened == {}
    for name in ("agentd.lock", "node-id"):
        assert mode(data / name) & 0o077 == 0, name
