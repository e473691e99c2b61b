"""Every agentctl command against the real `agentd serve` subprocess."""

from __future__ import annotations

import json
import re

import apsw
import httpx2
import pytest

from .agent_env import bare_repo, text, tool_use
from .daemon_process import DaemonProcess

pytestmark = pytest.mark.slow

SCRIPT = {
    "turns": [
        {"content": [tool_use("t1", "bash", command="echo working; sleep 0.2")]},
        {
            "content": [
                tool_use(
                    "t2",
                    "str_replace_based_edit_tool",
                    command="create",
                    path="note.txt",
                    file_text="hello\n",
                )
            ]
        },
        {"content": [text("Wrote note.txt.")]},
    ]
}


def ok(result) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_every_command_against_the_real_daemon(tmp_path, backend):
    bare = bare_repo(tmp_path)
    with DaemonProcess(tmp_path / "data", script=SCRIPT) as daemon:
        ctl = daemon.agentctl
        token = ok(ctl("user-add", "alice")).strip()
        assert token.startswith("agentd_")
        assert "alice" in ok(ctl("users"))
        assert [u["login"] for u in json.loads(ok(ctl("--json", "users")))] == ["alice"]
        http = httpx2.Client(base_url=daemon.url, headers={"Authorization": f"Bearer {token}"})

        def submit(prompt: str) -> str:
            reply = http.post("/api/tasks", json={"repo_url": str(bare), "prompt": prompt})
            assert reply.status_code == 201, reply.text
            return reply.json()["id"]

        # A task from the shell: its id alone on stdout; the one user is its owner by default.
        created = ctl("create", str(bare), "Write a note")
        first = ok(created).strip()
        assert re.fullmatch(
            rf"task for alice, (queued|running); follow it: agentctl tail {first}\n", created.stderr
        )
        refused = ctl("create", str(bare), "Write a note", "--user", "nobody")
        assert refused.stderr == "agentctl: create: no user nobody: agentctl users lists them (not_found)\n"
        tail = ok(ctl("tail", first[:10]))  # a task is named by the start of its id too
        assert "task.finished" in tail and "git.pushed" in tail
        shown = json.loads(ok(ctl("--json", "task", first)))
        assert shown["status"] == "succeeded" and shown["branch"].startswith("agentd/")
        assert next(line for line in ok(ctl("tasks")).splitlines() if first in line).split()[2] == "alice"
        refused = ctl("cancel", first[:8].upper())
        assert refused.returncode == 1 and refused.stdout == ""
        assert refused.stderr == (
            f"agentctl: cancel: task {first} already finished (succeeded): "
            "nothing to cancel (invalid_transition)\n"
        )
        refused = ctl("task", first[:7])
        assert refused.stderr == (
            f"agentctl: task: {first[:7]!r} is too short to name a task: "
            "give at least 8 characters of its id (bad_arguments)\n"
        )
        assert [
            t["id"]
            for t in json.loads(ok(ctl("--json", "tasks", "--status", "succeeded", "--user", "alice")))
        ] == [first]

        assert json.loads(ok(ctl("--json", "concurrency", "1")))["concurrency"] == 1
        assert json.loads(ok(ctl("--json", "drain")))["admitting"] is False
        assert httpx2.get(f"{daemon.url}/readyz").status_code == 503
        waiting = submit("Wait in the queue")
        assert json.loads(ok(ctl("--json", "cancel", waiting)))["status"] == "cancelled"
        refused = ctl("cancel", waiting)
        assert (
            refused.stderr == f"agentctl: cancel: task {waiting} is already cancelled (invalid_transition)\n"
        )
        assert json.loads(ok(ctl("--json", "retry", waiting)))["status"] == "queued"
        assert json.loads(ok(ctl("--json", "status")))["queued"] == 1
        ok(ctl("resume"))
        assert httpx2.get(f"{daemon.url}/readyz").status_code == 200

        # A backup taken while tasks write is a consistent database (SQLite; PostgreSQL's own
        # tools back it up, and agentctl says so).
        busy = [submit(f"Busy {i}") for i in range(4)]
        backup = tmp_path / "backup.db"
        if backend == "postgres":
            refused = ctl("backup", str(backup))
            assert refused.returncode == 1 and "pg_dump" in refused.stderr and not backup.exists()
        else:
            assert json.loads(ok(ctl("--json", "backup", str(backup))))["path"] == str(backup)
            conn = apsw.Connection(str(backup))
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] >= 2
            conn.close()
        for task_id in [waiting, *busy]:
            assert "task.finished" in ok(ctl("tail", task_id))

        assert json.loads(ok(ctl("--json", "gc")))["removed"] == []  # kept 7 days by default

        refused = ctl("task", "no-such-task")
        assert refused.returncode == 1 and "no task no-such-task" in refused.stderr
        assert json.loads(ok(ctl("--json", "revoke", "alice")))["tokens_revoked"] == 1
        assert http.get("/api/tasks").status_code == 401
        assert daemon.stop() == 0
