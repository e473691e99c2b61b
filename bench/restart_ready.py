"""Restart-to-ready with a full database: 10,000 finished tasks and 1,000,000 events.

The database is built fast with direct SQL through apsw (the schema of ``daemon/store/schema.py``
via its own ``migrate``; rows shaped as the store writes them), checkpointed, then:

- in-process: ``SqliteStore.open`` + ``Supervisor.run`` until its ``task_status.started()``;
- the real ``agentd serve`` as a subprocess (``tests/daemon_process.py``), with Claude's provider
  configured as in production, until its
  "agentd serving on" log line: this includes the interpreter's start and every import.

Each is repeated and the median reported, on the full db and, as the reference, on an empty one
(so the table shows what the data costs against what starting costs anyway). The page cache is
warm after the build: this is a restart, not a cold boot. So is Python's: the daemon's modules
are compiled to bytecode once, by a first start that is not timed, into a cache of this run's
own (``PYTHONPYCACHEPREFIX``), as an installed daemon has them (pip compiles them at install; a
checkout's first start writes them), also where the environment says not to write bytecode
(``PYTHONDONTWRITEBYTECODE``).

    .venv/bin/python bench/restart_ready.py [--tasks 10000] [--events 1000000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import ROOT, emit, machine

from daemon.events import EventHub
from daemon.store import SqliteStore, new_task_id
from daemon.store.schema import migrate
from daemon.store.sqlite_io import open_connection
from daemon.supervisor import NoopRunner, Supervisor
from tests.daemon_process import DaemonProcess


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def build_db(data_dir: Path, tasks: int, events: int) -> dict[str, Any]:
    """Fill ``<data_dir>/agentd.db``; returns the build time and the file's size."""
    began = time.perf_counter()
    data_dir.mkdir(parents=True, exist_ok=True)
    conn = open_connection(data_dir / "agentd.db")
    try:
        migrate(conn)
        # Building only: no fsync per page; the result is checkpointed and synced at the end.
        conn.execute("PRAGMA synchronous=OFF")
        per_task = max(4, events // tasks)
        now = time.time() - 86400
        with conn:
            conn.execute(
                "INSERT INTO users (login, created_at, updated_at) VALUES ('bench', ?, ?)", (now, now)
            )
            user_id = conn.last_insert_rowid()
            ids = sorted(new_task_id(now + i * 0.001) for i in range(tasks))
            conn.executemany(
                "INSERT INTO tasks (id, user_id, repo_url, prompt, status, attempt, budget, usage, "
                "created_at, updated_at, started_at, finished_at, branch) "
                "VALUES (?, ?, ?, ?, 'succeeded', 1, '{}', ?, ?, ?, ?, ?, ?)",
                (
                    (
                        tid,
                        user_id,
                        "https://github.com/example/repo.git",
                        "Fix the failing test",
                        _dumps({"input_tokens": 12000, "output_tokens": 900}),
                        now,
                        now,
                        now,
                        now + 60,
                        f"agentd/{tid}",
                    )
                    for tid in ids
                ),
            )
            task_nos = dict(conn.execute("SELECT id, seqno FROM tasks").fetchall())
            conn.executemany(
                "INSERT INTO events (task_no, seq, ts, type, data) VALUES (?, ?, ?, ?, ?)",
                (row for tid in ids for row in _task_events(task_nos[tid], per_task, now)),
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        count = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        conn.close()
    size = (data_dir / "agentd.db").stat().st_size
    return {
        "tasks": tasks,
        "events": count,
        "build_s": round(time.perf_counter() - began, 2),
        "db_mib": round(size / 2**20, 1),
    }


def _task_events(tid: int, n: int, ts: float):
    """A finished task's log: created, queued, running, agent text..., succeeded, finished."""
    yield tid, 1, ts, "task.created", _dumps({"repo_url": "r", "prompt": "Fix the failing test"})
    yield tid, 2, ts, "task.status", '{"status":"queued","attempt":0}'
    yield tid, 3, ts, "task.status", '{"status":"running","attempt":1}'
    text = '{"text":"Ran the tests: 41 passed, 1 failed in tests/test_parser.py::test_empty"}'
    for seq in range(4, n - 1):
        yield tid, seq, ts, "agent.text", text
    yield tid, n - 1, ts, "task.status", '{"status":"succeeded","attempt":1}'
    yield tid, n, ts, "task.finished", '{"status":"succeeded"}'


async def ready_in_process(data_dir: Path) -> float:
    """Seconds from ``SqliteStore.open`` to ``Supervisor.run``'s ``started()``."""
    began = time.perf_counter()
    store = await SqliteStore.open(data_dir)
    try:
        supervisor = Supervisor(store, EventHub(store), NoopRunner())
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            elapsed = time.perf_counter() - began
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()
    return elapsed


def bytecode_env(cache: Path) -> dict[str, str]:
    """The environment of a Python that reads and writes its bytecode under ``cache``."""
    return {"PYTHONPYCACHEPREFIX": str(cache), "PYTHONDONTWRITEBYTECODE": ""}


def ready_subprocess(data_dir: Path, env: dict[str, str]) -> float:
    """Seconds from spawning ``agentd serve`` to its "agentd serving on" line.

    With Claude's provider, as in production (an API key; the URL of a closed port: no call is
    made), so that whatever the provider costs at startup is counted.
    """
    began = time.perf_counter()
    daemon = DaemonProcess(
        data_dir,
        anthropic_key="sk-ant-bench-unused",
        extra_env={"ANTHROPIC_BASE_URL": "http://127.0.0.1:9", **env},
    ).start()
    elapsed = time.perf_counter() - began
    try:
        daemon.stop()
    finally:
        daemon.kill()
    return elapsed


def import_seconds(env: dict[str, str]) -> float:
    """The imports ``agentd serve`` needs (the web app, hypercorn, trio...), timed in a child."""
    code = (
        "import time; t = time.perf_counter(); import daemon.cli, daemon.service; "
        "print(time.perf_counter() - t)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    return float(done.stdout.strip())


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def measure(data_dir: Path, repeats: int, env: dict[str, str]) -> dict[str, Any]:
    in_process = [trio.run(ready_in_process, data_dir) for _ in range(repeats)]
    served = [ready_subprocess(data_dir, env) for _ in range(repeats)]
    return {
        "in_process_s": _median(in_process),
        "in_process_all": [round(x, 3) for x in in_process],
        "serve_s": _median(served),
        "serve_all": [round(x, 3) for x in served],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentd-bench-restart-") as tmp:
        full, empty = Path(tmp, "full"), Path(tmp, "empty")
        built = build_db(full, args.tasks, args.events)
        empty.mkdir()  # a first start: the store creates and migrates the file
        env = bytecode_env(Path(tmp, "pycache"))
        ready_subprocess(Path(tmp, "first"), env)  # compiles what it imports: not timed
        emit(
            {
                "system": "agentd",
                "machine": machine(),
                "db": built,
                "full": measure(full, args.repeats, env),
                "empty": measure(empty, args.repeats, env),
                "imports_s": _median([import_seconds(env) for _ in range(args.repeats)]),
            },
            args.json,
        )


if __name__ == "__main__":
    main()
