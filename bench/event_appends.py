"""Durable event appends: agentd's group commit against one commit per event.

- group commit: W coroutines, each appending events one at a time to its own task through
  ``store.append_events`` (the path every ``ctx.emit`` takes); the writer thread commits all
  waiting appends in one transaction, merged into one ``INSERT``. The batch sizes it reached
  are counted by wrapping ``WriterThread._run_batch`` (the bench only observes; the daemon is
  unchanged).
- one commit per event: the same apsw, the same file system, the same SQL
  (``sqlite_queries.append_events``), but each event in its own ``BEGIN IMMEDIATE ... COMMIT``,
  in a plain loop.

Both with ``PRAGMA synchronous=FULL`` and ``NORMAL`` (WAL). Events/s. For reference, group commit
is also run with several events per call (what an emitter with a burst of events could do).

- Trio's floor: the same number of tasks each parking (``wait_task_rescheduled``) and being
  rescheduled by one task, with no store at all: what any awaited call costs a Trio task at the
  least, on this machine, so one event per awaited call can never cost less than this plus the
  writer's share of an event (the ten-per-call run's CPU per event, nearly all of it the writer's).

    .venv/bin/python bench/event_appends.py [--events 100000] [--writers 500] [--json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import emit, loop_pinned, machine

from daemon.cpu_pin import loop_on_one_cpu
from daemon.store import (
    NewEvent,
    NewTask,
    SqliteStore,
    sqlite_conns,
    sqlite_io,
    sqlite_queries as q,
)
from daemon.store.schema import migrate

# What an agent emits most: a short text event (a tool call's JSON is larger, not slower to sync).
DATA = {"text": "Looking at the failing test in tests/test_parser.py"}


class BatchCounter:
    """Counts the writer's transactions and jobs by wrapping its batch function."""

    def __init__(self) -> None:
        self.batches = 0
        self.jobs = 0
        self._original = sqlite_io.WriterThread._run_batch

    def __enter__(self):  # returns self
        original = self._original

        def counted(conn, jobs):
            self.batches += 1
            self.jobs += len(jobs)
            return original(conn, jobs)

        sqlite_io.WriterThread._run_batch = staticmethod(counted)
        return self

    def __exit__(self, *exc: object) -> None:
        sqlite_io.WriterThread._run_batch = staticmethod(self._original)


async def group_commit(events: int, writers: int, synchronous: str, per_call: int = 1) -> dict[str, Any]:
    calls_per_writer = max(1, events // (writers * per_call))
    per_writer = calls_per_writer * per_call
    total = per_writer * writers
    batch = [NewEvent("agent.text", DATA)] * per_call
    with tempfile.TemporaryDirectory(prefix="agentd-bench-") as tmp, loop_on_one_cpu(loop_pinned()):
        store = await SqliteStore.open(Path(tmp), synchronous=synchronous)
        try:
            user = await store.upsert_user("bench")
            task_ids: list[str] = []

            async def create() -> None:
                task, _ = await store.create_task(user_id=user.id, repo_url="r", prompt="p")
                task_ids.append(task.id)

            async with trio.open_nursery() as nursery:
                for _ in range(writers):
                    nursery.start_soon(create)

            async def writer(task_id: str) -> None:
                for _ in range(calls_per_writer):
                    await store.append_events(task_id, batch)

            with BatchCounter() as counter:
                began = time.perf_counter()
                cpu_began = time.process_time()
                async with trio.open_nursery() as nursery:
                    for task_id in task_ids:
                        nursery.start_soon(writer, task_id)
                elapsed = time.perf_counter() - began
                cpu = time.process_time() - cpu_began
            last = await store.read_events(task_ids[0], after=per_writer, limit=10)
            assert last and last[-1].seq == per_writer + 2, "every append landed, gap-free"
        finally:
            await store.aclose()
    return {
        "events": total,
        "writers": writers,
        "events_per_call": per_call,
        "synchronous": synchronous,
        "seconds": round(elapsed, 3),
        "events_per_s": round(total / elapsed),
        "cpu_s": round(cpu, 3),
        "commits": counter.batches,
        "calls_per_commit": round(counter.jobs / max(1, counter.batches), 1),
        "cpu_us_per_event": round(cpu / total * 1e6, 1),
    }


async def trio_park_resume(tasks: int, rounds: int = 100) -> dict[str, Any]:
    """CPU per park/resume of ``tasks`` Trio tasks woken all at once, as the writer wakes its callers."""
    from trio.lowlevel import Abort, current_task, reschedule, wait_task_rescheduled

    parked: list[trio.lowlevel.Task] = []
    with loop_on_one_cpu(loop_pinned()):

        async def caller() -> None:
            for _ in range(rounds):
                parked.append(current_task())
                await wait_task_rescheduled(lambda _: Abort.FAILED)

        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(caller)
            await trio.testing.wait_all_tasks_blocked()
            cpu_began = time.process_time()
            for _ in range(rounds):
                woken, parked[:] = list(parked), []
                for task in woken:
                    reschedule(task)
                await trio.testing.wait_all_tasks_blocked()
            cpu = time.process_time() - cpu_began
    return {"tasks": tasks, "rounds": rounds, "cpu_us_per_call": round(cpu / (tasks * rounds) * 1e6, 2)}


def one_commit_per_event(events: int, synchronous: str, max_seconds: float) -> dict[str, Any]:
    """A loop of single-event transactions; stops at ``events`` or ``max_seconds``."""
    with tempfile.TemporaryDirectory(prefix="agentd-bench-") as tmp:
        conn = sqlite_conns.open_connection(Path(tmp) / "agentd.db", synchronous=synchronous)
        try:
            migrate(conn)
            with conn:
                user = q.upsert_user(conn, "bench", time.time())
                task, _, _ = q.insert_task(conn, NewTask("bench-task", user.id, "r", "p"), time.time())
            new = [NewEvent("agent.text", DATA)]
            done = 0
            began = time.perf_counter()
            deadline = began + max_seconds
            while done < events:
                conn.execute("BEGIN IMMEDIATE")
                q.append_events(conn, task.id, new)
                conn.execute("COMMIT")
                done += 1
                if done % 64 == 0 and time.perf_counter() > deadline:
                    break
            elapsed = time.perf_counter() - began
        finally:
            conn.close()
    return {
        "events": done,
        "synchronous": synchronous,
        "seconds": round(elapsed, 3),
        "events_per_s": round(done / elapsed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--writers", type=int, default=500)
    parser.add_argument(
        "--batched-per-call",
        type=int,
        default=10,
        help="also run group commit with this many events per call (0: skip)",
    )
    parser.add_argument("--single-events", type=int, default=20_000)
    parser.add_argument("--single-seconds", type=float, default=5.0)
    parser.add_argument("--synchronous", nargs="+", default=["FULL", "NORMAL"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "system": "agentd",
        "machine": machine(),
        "runs": {},
        "trio_floor": trio.run(trio_park_resume, args.writers),
    }
    for sync in args.synchronous:
        result["runs"][sync] = {
            "group": trio.run(group_commit, args.events, args.writers, sync),
            "group_batched": (
                trio.run(group_commit, args.events, args.writers, sync, args.batched_per_call)
                if args.batched_per_call
                else None
            ),
            "single": one_commit_per_event(args.single_events, sync, args.single_seconds),
        }
    emit(result, args.json)


if __name__ == "__main__":
    main()
