"""Durable multi-step work on agentd: a 3-step task, each step persisted before the next.

The runner appends one event per step through ``ctx.emit`` (a committed write: it returns only
once the event is durable), then succeeds. A task therefore costs six commits: created, running,
three steps, succeeded. The peer is DBOS workflows with three ``@DBOS.step``s on its SQLite
system database (``bench/peers/dbos_bench.py``).

- one by one: submit a task, wait for its ``task.finished``, then the next;
- concurrently: N tasks submitted at once, run at the supervisor's concurrency.

    .venv/bin/python bench/durable_steps.py [--tasks 500] [--concurrency 10] [--json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import emit, loop_pinned, machine

from daemon.cpu_pin import loop_on_one_cpu
from daemon.events import EventHub
from daemon.store import SqliteStore
from daemon.supervisor import RunContext, RunResult, Supervisor

STEPS = 3


class ThreeStepRunner:
    """Each step's record is committed before the next step starts (``emit`` awaits the commit)."""

    async def run(self, ctx: RunContext) -> RunResult:
        for step in range(1, STEPS + 1):
            await ctx.emit("agent.text", {"text": f"step {step} done"})
        return RunResult()


async def _with_supervisor(concurrency: int, synchronous: str, body) -> Any:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="agentd-bench-") as tmp, loop_on_one_cpu(loop_pinned()):
        store = await SqliteStore.open(Path(tmp), synchronous=synchronous)
        try:
            hub = EventHub(store)
            supervisor = Supervisor(store, hub, ThreeStepRunner(), concurrency=concurrency)
            user = await store.upsert_user("bench")
            async with trio.open_nursery() as nursery:
                await nursery.start(supervisor.run)
                result = await body(hub, supervisor, user)
                nursery.cancel_scope.cancel()
            events = await store.read_events((await store.list_tasks(limit=1))[0][1].id)
            # The last task's log proves the shape: created, queued, running, 3 steps, succeeded.
            assert sum(e.type == "agent.text" for e in events) == STEPS, events
            return result
        finally:
            await store.aclose()


def _finish_counter(hub: EventHub):
    state = {"finished": 0, "target": 0, "event": trio.Event()}

    def on_events(events) -> None:
        state["finished"] += sum(1 for e in events if e.type == "task.finished")
        if state["finished"] >= state["target"]:
            state["event"].set()

    hub.add_global_listener(on_events)
    return state


async def one_by_one(tasks: int, synchronous: str = "NORMAL") -> dict[str, Any]:
    async def body(hub, supervisor, user):
        state = _finish_counter(hub)
        began = time.perf_counter()
        for i in range(tasks):
            state["target"], state["event"] = i + 1, trio.Event()
            await supervisor.submit(user_id=user.id, repo_url="r", prompt="p")
            await state["event"].wait()
        elapsed = time.perf_counter() - began
        return {"tasks": tasks, "seconds": round(elapsed, 3), "tasks_per_s": round(tasks / elapsed, 1)}

    return await _with_supervisor(1, synchronous, body)


async def concurrently(tasks: int, concurrency: int, synchronous: str = "NORMAL") -> dict[str, Any]:
    async def body(hub, supervisor, user):
        state = _finish_counter(hub)
        state["target"] = tasks
        began = time.perf_counter()
        async with trio.open_nursery() as submitters:
            for _ in range(tasks):
                submitters.start_soon(lambda: supervisor.submit(user_id=user.id, repo_url="r", prompt="p"))
        await state["event"].wait()
        elapsed = time.perf_counter() - began
        return {
            "tasks": tasks,
            "concurrency": concurrency,
            "seconds": round(elapsed, 3),
            "tasks_per_s": round(tasks / elapsed, 1),
        }

    return await _with_supervisor(concurrency, synchronous, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--synchronous", default="NORMAL", choices=["NORMAL", "FULL"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    emit(
        {
            "system": "agentd",
            "machine": machine(),
            "synchronous": args.synchronous,
            "one_by_one": trio.run(one_by_one, args.tasks, args.synchronous),
            "concurrent": trio.run(concurrently, args.tasks, args.concurrency, args.synchronous),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
