"""agentd on PostgreSQL with 1, 2, 3... node processes on one database: SAQ's queue shape.

For each node count N, on a fresh database (``bench/pg_server.py``: durable defaults):
1. this process opens a ``PostgresStore`` (which installs the schema) and submits the tasks
   (``store.create_task``, 20 in flight, as the peers enqueue): every task committed ``queued``;
2. N node processes start (``.venv/bin/python bench/queue_pg_nodes.py node ...``); each opens
   its own ``PostgresStore`` (node id ``bench-<i>``), ``EventHub`` and ``Supervisor(store, hub,
   NoopRunner(), concurrency=C, node=NodeIdentity(id="bench-<i>"))``, and says "ready";
3. all are told "go" on stdin at once; each then runs ``supervisor.run`` (it finds the queued
   tasks in the database and runs them), and the clock runs from "go" until every task is
   ``succeeded`` in the database. That count is polled (``--poll``, 10 ms); the figure itself
   is taken from the tasks' own ``finished_at``, so it does not depend on the poll interval;
4. every task must have run exactly once: one ``task.status`` event with status ``running``
   per task in the ``events`` table (checked, and reported, per node where the events say).

Nodes claim tasks from the database (``store.claim_tasks``: one statement a round, ``FOR UPDATE
SKIP LOCKED``, woken by LISTEN/NOTIFY), each task by exactly one node.

5. what it cost (``cost``, for the model in README's performance notes): claim rounds, tasks a
   round and the claim statement's time a round (timed on the node's worker thread), writes a
   task, and CPU seconds a task of the node processes and of the server processes serving them
   (``/proc``: the server runs on this machine).

    .venv/bin/python bench/queue_pg_nodes.py [--pg DSN] [--nodes 1,2,3] [--jobs 1000] [--json]

Without ``--pg`` a throwaway server is started for the run. Every node process has a deadline
(``--timeout``) and is terminated, then killed, at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: common, pg_server
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project: daemon

from common import ROOT, emit, machine
from pg_server import fresh_database, pg_server

SUBMIT_IN_FLIGHT = 20  # as the peers' enqueues (shape.ENQUEUE_IN_FLIGHT)
NODE_PYTHON = ROOT / ".venv" / "bin" / "python"


# -- one node: a process of its own ------------------------------------------------------------


class ClaimCost:
    """What the node's claims cost: statements (rounds), tasks started, seconds in the claim
    statements themselves (on the worker thread) and in whole claims (round trips included)."""

    def __init__(self) -> None:
        self.rounds = self.tasks = self.claims = 0
        self.statement_s = self.claim_s = 0.0

    def watch(self, store: Any) -> None:
        """Time ``store``'s claims and the statements under them (this process only)."""
        from daemon.store import postgres_claims

        dialect = postgres_claims.PostgresDialect
        statement = dialect.claim_tasks

        def timed_statement(self_: Any, *args: Any) -> Any:
            began = time.perf_counter()
            round_ = statement(self_, *args)
            self.statement_s += time.perf_counter() - began
            self.rounds += 1
            self.tasks += len(round_.tasks)
            return round_

        dialect.claim_tasks = timed_statement  # type: ignore[method-assign]
        claim = store.claim_tasks

        async def timed_claim(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await claim(*args, **kwargs)
            finally:
                self.claim_s += time.perf_counter() - began
                self.claims += 1

        store.claim_tasks = timed_claim

    def report(self) -> dict[str, Any]:
        return {
            "claims": self.claims,
            "rounds": self.rounds,
            "tasks": self.tasks,
            "statement_s": round(self.statement_s, 4),
            "claim_s": round(self.claim_s, 4),
        }


async def node_main(dsn: str, index: int, concurrency: int, timeout_s: float) -> None:
    """Open the store and a supervisor, say ready, run from "go" until told "stop" (or stdin
    closes), then say what it did: tasks started, its claims' cost, its CPU seconds and its
    writes (count, seconds of round trips).

    Cancellation: the deadline (``timeout_s``) cancels everything; running tasks then stay
    ``running`` in the database (nobody cares: the database is dropped).
    """
    from daemon.events import EventHub
    from daemon.store.postgres import PostgresStore
    from daemon.supervisor import NoopRunner, Supervisor
    from daemon.supervisor.membership import NodeIdentity

    async def line() -> str:
        return await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)

    def say(**fields: Any) -> None:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    with trio.move_on_after(timeout_s):
        node = NodeIdentity(id=f"bench-{index}", name=f"bench-{index}")
        store = await PostgresStore.open(dsn, node_id=node.id)
        try:
            hub = EventHub(store)
            supervisor = Supervisor(store, hub, NoopRunner(), concurrency=concurrency, node=node)
            started = 0
            writes = [0, 0.0]

            def on_started(task_id: str) -> None:
                nonlocal started
                started += 1

            def on_write(seconds: float) -> None:
                writes[0] += 1
                writes[1] += seconds

            supervisor.on_started = on_started
            cost = ClaimCost()
            cost.watch(store)
            say(ready=index, pid=os.getpid())
            if (await line()).strip() != "go":
                return
            store.observe_writes(on_write)
            cpu = time.process_time()
            async with trio.open_nursery() as nursery:
                await nursery.start(supervisor.run)
                await line()  # "stop" or EOF: the parent has what it needs
                cpu = time.process_time() - cpu
                await supervisor.shutdown(grace_s=5)
                nursery.cancel_scope.cancel()
            say(
                node=index,
                started=started,
                cpu_s=round(cpu, 3),
                writes=writes[0],
                write_s=round(writes[1], 4),
                **cost.report(),
            )
        finally:
            await store.aclose()


# -- the parent: submit, start the nodes, time, check -------------------------------------------


async def submit_all(dsn: str, jobs: int) -> float:
    """Create ``jobs`` queued tasks (schema installed on first open); seconds it took."""
    from daemon.store.postgres import PostgresStore

    store = await PostgresStore.open(dsn)
    try:
        user = await store.upsert_user("bench")
        limiter = trio.CapacityLimiter(SUBMIT_IN_FLIGHT)

        async def one() -> None:
            async with limiter:
                await store.create_task(user_id=user.id, repo_url="r", prompt="p")

        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(jobs):
                nursery.start_soon(one)
        return time.perf_counter() - began
    finally:
        await store.aclose()


@contextlib.contextmanager
def nodes(
    dsn: str, count: int, concurrency: int, timeout_s: float, logdir: Path
) -> Iterator[list[subprocess.Popen[str]]]:
    """Start ``count`` node processes, wait for each to be ready; stop them all after."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for i in range(count):
            with open(logdir / f"node-{i}.log", "w") as log:  # the child keeps its own copy
                procs.append(
                    subprocess.Popen(
                        [
                            str(NODE_PYTHON),
                            str(Path(__file__).resolve()),
                            "node",
                            "--dsn",
                            dsn,
                            "--index",
                            str(i),
                            "--concurrency",
                            str(concurrency),
                            "--timeout",
                            str(timeout_s),
                        ],
                        cwd=ROOT,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log,
                        text=True,
                    )
                )
        for i, proc in enumerate(procs):
            ready = _read_line(proc, timeout_s)
            if ready is None or "ready" not in ready:
                raise RuntimeError(f"node {i} did not start: {_log_tail(logdir, i)}")
        yield procs
    finally:
        for proc in procs:
            with contextlib.suppress(OSError):
                if proc.stdin:
                    proc.stdin.close()
        deadline = time.monotonic() + 15
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> dict[str, Any] | None:
    """The node's next JSON line on stdout, or None (it died, or said nothing in time)."""
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            return None
    text = proc.stdout.readline()
    return json.loads(text) if text.strip() else None


def _log_tail(logdir: Path, index: int) -> str:
    path = logdir / f"node-{index}.log"
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def backend_cpu_s(conn: Any) -> float:
    """CPU seconds so far of the server processes serving this database (the nodes'
    connections; ``/proc``, so the server must run on this machine, as ``pg_server`` starts it)."""
    pids = [
        row[0]
        for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    ]
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def costs(reports: list[dict[str, Any]], jobs: int, server_cpu_s: float) -> dict[str, Any]:
    """Per task and per claim round, over every node: what the model in README's notes uses."""
    total = {key: sum(r[key] for r in reports) for key in ("rounds", "tasks", "claims", "writes")}
    seconds = {key: sum(r[key] for r in reports) for key in ("statement_s", "claim_s", "write_s", "cpu_s")}
    rounds = max(total["rounds"], 1)
    return {
        "claim_rounds": total["rounds"],
        "tasks_per_round": round(total["tasks"] / rounds, 2),
        "statement_ms_per_round": round(seconds["statement_s"] * 1000 / rounds, 3),
        "claim_ms_per_claim": round(seconds["claim_s"] * 1000 / max(total["claims"], 1), 3),
        "writes_per_task": round(total["writes"] / jobs, 2),
        "write_ms_per_write": round(seconds["write_s"] * 1000 / max(total["writes"], 1), 3),
        "node_cpu_us_per_task": round(seconds["cpu_s"] * 1e6 / jobs),
        "server_cpu_us_per_task": round(server_cpu_s * 1e6 / jobs),
    }


def measure(
    server_dsn: str, count: int, jobs: int, concurrency: int, poll_s: float, timeout_s: float
) -> dict[str, Any]:
    import psycopg

    with (
        fresh_database(server_dsn, prefix=f"agentd_n{count}") as dsn,
        tempfile.TemporaryDirectory(prefix="agentd-bench-nodes-") as tmp,
    ):
        enqueue_s = trio.run(submit_all, dsn, jobs)
        with (
            nodes(dsn, count, concurrency, timeout_s, Path(tmp)) as procs,
            psycopg.connect(dsn, autocommit=True) as conn,
        ):
            server_cpu = backend_cpu_s(conn)
            go_wall, began = time.time(), time.perf_counter()
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            deadline = began + timeout_s
            while True:
                done = conn.execute("SELECT count(*) FROM tasks WHERE status = 'succeeded'").fetchone()[0]
                if done >= jobs:
                    break
                dead = [i for i, p in enumerate(procs) if p.poll() is not None]
                if dead or time.perf_counter() > deadline:
                    why = f"node {dead[0]} exited" if dead else f"timed out after {timeout_s:g} s"
                    raise RuntimeError(
                        f"{count} node(s): {why} with {done}/{jobs} succeeded: "
                        f"{_log_tail(Path(tmp), dead[0] if dead else 0)}"
                    )
                time.sleep(poll_s)
            polled_s = time.perf_counter() - began
            server_cpu = backend_cpu_s(conn) - server_cpu
            reports = []
            for i, proc in enumerate(procs):
                assert proc.stdin is not None
                proc.stdin.write("stop\n")
                proc.stdin.flush()
                report = _read_line(proc, timeout_s)
                if report is None:
                    raise RuntimeError(f"node {i} said nothing at the end: {_log_tail(Path(tmp), i)}")
                reports.append(report)
            last_finished = conn.execute("SELECT max(finished_at) FROM tasks").fetchone()[0]
            runs = conn.execute(
                "SELECT count(*), count(DISTINCT task_id) FROM events "
                "WHERE type = 'task.status' AND (data::json ->> 'status') = 'running'"
            ).fetchone()
            per_node = dict(
                conn.execute(
                    "SELECT coalesce(data::json ->> 'node', '?'), count(*) FROM events "
                    "WHERE type = 'task.status' AND (data::json ->> 'status') = 'running' "
                    "GROUP BY 1 ORDER BY 1"
                ).fetchall()
            )
        seconds = last_finished - go_wall
        return {
            "nodes": count,
            "jobs": jobs,
            "seconds": round(seconds, 3),
            "jobs_per_s": round(jobs / seconds),
            "polled_s": round(polled_s, 3),
            "enqueue_s": round(enqueue_s, 3),
            "running_events": runs[0],
            "tasks_started": runs[1],
            "exactly_once": runs[0] == runs[1] == jobs,
            "runs_per_node": per_node,
            "cost": costs(reports, jobs, server_cpu),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role")
    node = sub.add_parser("node", help="(internal) one node process")
    node.add_argument("--dsn", required=True)
    node.add_argument("--index", type=int, required=True)
    node.add_argument("--concurrency", type=int, default=10)
    node.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--pg", help="DSN of a server to use (else a throwaway one is started)")
    parser.add_argument("--nodes", default="1,2,3", help="node counts to measure, comma-separated")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=10, help="per node")
    parser.add_argument("--poll", type=float, default=0.01, help="seconds between completion counts")
    parser.add_argument("--timeout", type=float, default=120.0, help="per node count, seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.role == "node":
        trio.run(node_main, args.dsn, args.index, args.concurrency, args.timeout)
        return

    counts = [int(n) for n in args.nodes.split(",") if n.strip()]
    with contextlib.ExitStack() as stack:
        server = args.pg or stack.enter_context(pg_server())
        results: dict[str, Any] = {}
        for count in counts:
            results[str(count)] = measure(server, count, args.jobs, args.concurrency, args.poll, args.timeout)
    emit(
        {
            "system": "agentd on PostgreSQL",
            "machine": machine(),
            "concurrency": args.concurrency,
            "nodes": results,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
