"""agentd's side of the queue comparison, in the peers' result shape (``bench/peers/shape.py``).

Uses ``queue_throughput``'s own functions for the end-to-end throughput and the steady-rate
enqueue-to-start latency, and adds SAQ's "process only" shape: N tasks submitted (committed)
with admission paused, then admission resumed and timed until the last ``task.finished``.
Every state change (queued, running, succeeded) is a committed SQLite transaction.

    .venv/bin/python bench/queue_agentd.py [--jobs 1000] [--concurrency 10] [--json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, machine
from queue_throughput import latency, throughput, when_finished, with_supervisor


async def process_only(tasks: int, concurrency: int) -> dict[str, Any]:
    async def body(store, hub, supervisor, user):
        all_done = when_finished(hub, tasks)
        supervisor.drain()
        began = time.perf_counter()
        async with trio.open_nursery() as submitters:
            for _ in range(tasks):
                submitters.start_soon(lambda: supervisor.submit(user_id=user.id, repo_url="r", prompt="p"))
        enqueued = time.perf_counter() - began
        began = time.perf_counter()
        supervisor.resume()
        await all_done.wait()
        elapsed = time.perf_counter() - began
        return {
            "jobs": tasks,
            "seconds": round(elapsed, 3),
            "jobs_per_s": round(tasks / elapsed),
            "enqueue_s": round(enqueued, 3),
        }

    return await with_supervisor(concurrency, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--latency-jobs", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tp = trio.run(throughput, args.jobs, args.concurrency)
    lat = trio.run(latency, args.latency_jobs, args.concurrency, args.rate)
    emit(
        {
            "system": "agentd",
            "machine": machine(),
            "concurrency": args.concurrency,
            "throughput": {
                "jobs": tp["tasks"],
                "seconds": tp["seconds"],
                "jobs_per_s": tp["tasks_per_s"],
                "cpu_s": tp["cpu_s"],
            },
            "process_only": trio.run(process_only, args.jobs, args.concurrency),
            "latency": {
                "jobs": lat["tasks"],
                "rate_per_s": lat["rate_per_s"],
                "p50_ms": lat["p50_ms"],
                "p99_ms": lat["p99_ms"],
                "max_ms": lat["max_ms"],
            },
        },
        args.json,
    )


if __name__ == "__main__":
    main()
