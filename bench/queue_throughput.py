"""Queue throughput and enqueue-to-start latency through the real supervisor and SQLite store.

Two runs, each on a fresh data dir:
- throughput: N no-op tasks submitted at once (concurrency C); tasks/s from the first submit to
  the last ``task.finished`` committed. Every state change (queued, running, succeeded) is a
  committed SQLite transaction with its events.
- latency: tasks submitted at a steady rate (default 100/s); for each, the time from the start of
  ``submit()`` to the runner being called.

Usage: python bench/queue_throughput.py [--tasks 2000] [--concurrency 10] [--rate 100] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import loop_pinned

from daemon.cpu_pin import loop_on_one_cpu
from daemon.events import EventHub
from daemon.store import SqliteStore
from daemon.supervisor import NoopRunner, Supervisor


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def with_supervisor(concurrency: int, body):
    with tempfile.TemporaryDirectory() as tmp, loop_on_one_cpu(loop_pinned()):  # as agentd serve
        store = await SqliteStore.open(Path(tmp))
        try:
            hub = EventHub(store)
            supervisor = Supervisor(store, hub, NoopRunner(), concurrency=concurrency)
            user = await store.upsert_user("bench")
            async with trio.open_nursery() as nursery:
                await nursery.start(supervisor.run)
                result = await body(store, hub, supervisor, user)
                nursery.cancel_scope.cancel()
            return result
        finally:
            await store.aclose()


def when_finished(hub, tasks: int) -> trio.Event:
    """An event set once ``tasks`` tasks have committed their ``task.finished``."""
    all_done = trio.Event()
    finished = 0

    def on_events(events):
        nonlocal finished
        finished += sum(1 for e in events if e.type == "task.finished")
        if finished >= tasks:
            all_done.set()

    hub.add_global_listener(on_events)
    return all_done


async def throughput(tasks: int, concurrency: int) -> dict:
    async def body(store, hub, supervisor, user):
        all_done = when_finished(hub, tasks)
        began = time.perf_counter()
        cpu_began = time.process_time()
        async with trio.open_nursery() as submitters:
            for _ in range(tasks):
                submitters.start_soon(lambda: supervisor.submit(user_id=user.id, repo_url="r", prompt="p"))
        await all_done.wait()
        elapsed = time.perf_counter() - began
        return {
            "tasks": tasks,
            "concurrency": concurrency,
            "seconds": round(elapsed, 3),
            "tasks_per_s": round(tasks / elapsed),
            "cpu_s": round(time.process_time() - cpu_began, 3),
        }

    return await with_supervisor(concurrency, body)


async def latency(tasks: int, concurrency: int, rate: float) -> dict:
    async def body(store, hub, supervisor, user):
        submitted: dict[str, float] = {}
        started: dict[str, float] = {}
        submit_began: list[float] = []
        all_started = trio.Event()

        def on_started(task_id: str) -> None:
            started[task_id] = time.perf_counter()
            if len(started) >= tasks:
                all_started.set()

        supervisor.on_started = on_started

        async def submit_one() -> None:
            began = time.perf_counter()
            task, _ = await supervisor.submit(user_id=user.id, repo_url="r", prompt="p")
            submitted[task.id] = began

        async with trio.open_nursery() as submitters:
            interval = 1.0 / rate
            next_at = trio.current_time()
            for _ in range(tasks):
                submit_began.append(time.perf_counter())
                submitters.start_soon(submit_one)
                next_at += interval
                await trio.sleep_until(next_at)
        await all_started.wait()
        delays_ms = [(started[t] - submitted[t]) * 1000 for t in submitted]
        return {
            "tasks": tasks,
            "rate_per_s": rate,
            "p50_ms": round(statistics.median(delays_ms), 3),
            "p99_ms": round(percentile(delays_ms, 0.99), 3),
            "max_ms": round(max(delays_ms), 3),
        }

    return await with_supervisor(concurrency, body)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {platform.system()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--latency-tasks", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = {
        "machine": machine(),
        "throughput": trio.run(throughput, args.tasks, args.concurrency),
        "latency": trio.run(latency, args.latency_tasks, args.concurrency, args.rate),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    t, lat = result["throughput"], result["latency"]
    print(f"machine: {result['machine']}")
    print(
        f"throughput: {t['tasks']} no-op tasks, concurrency {t['concurrency']}: "
        f"{t['tasks_per_s']} tasks/s ({t['seconds']} s, {t['cpu_s']} s CPU)"
    )
    print(
        f"enqueue-to-start at {lat['rate_per_s']:g} tasks/s ({lat['tasks']} tasks): "
        f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms"
    )


if __name__ == "__main__":
    main()
