"""The queue benchmark's shape, shared by the SAQ and arq scripts so both measure the same thing
as ``bench/queue_throughput.py`` does for agentd.

- throughput: the worker is up (one warm-up job has run); N no-op jobs are enqueued at once
  (20 enqueues in flight, as in SAQ's ``benchmarks/simple.py``); jobs/s from the first enqueue
  to the last job *finished* as the library records it (its result/status written to Redis).
- latency: jobs enqueued at a steady rate; for each, the time from the start of the enqueue
  call to the job function being entered (same process, ``perf_counter``).

- process only (SAQ's own ``benchmarks/simple.py``): N jobs enqueued first, then the worker is
  started; jobs/s from its start to the last job finished.

A system is an async context manager factory ``open(name, on_start, on_done)`` yielding an
object with ``enqueue(t0)`` and ``start()`` (the worker runs only from ``start()`` on);
``on_start(t0)`` is called on entry of the job function and ``on_done()`` once the library has
recorded the job as finished.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from common import emit, latency_summary, machine

Opener = Callable[[str, Callable[[float], None], Callable[[], None]], AbstractAsyncContextManager[Any]]


@dataclass
class System:
    enqueue: Callable[[float], Awaitable[Any]]
    start: Callable[[], Awaitable[None]]


ENQUEUE_IN_FLIGHT = 20


class _Counter:
    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.reached = asyncio.Event()

    def expect(self, target: int) -> None:
        self.count, self.target = 0, target
        self.reached = asyncio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.reached.set()


async def throughput(open_system: Opener, name: str, jobs: int, timeout_s: float) -> dict[str, Any]:
    """End to end: the worker is up (a warm-up job has run), then N jobs are enqueued at once."""
    done = _Counter()
    async with open_system(name, lambda t0: None, done.hit) as system:
        await system.start()
        done.expect(1)  # warm-up: the worker is polling/blocking on the queue before the clock
        await system.enqueue(time.perf_counter())
        await asyncio.wait_for(done.reached.wait(), timeout_s)

        done.expect(jobs)
        began = time.perf_counter()
        cpu_began = time.process_time()
        await _enqueue_all(system, jobs)
        enqueued = time.perf_counter() - began
        await asyncio.wait_for(done.reached.wait(), timeout_s)
        elapsed = time.perf_counter() - began
    return {
        "jobs": jobs,
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(jobs / elapsed),
        "enqueue_s": round(enqueued, 3),
        "cpu_s": round(time.process_time() - cpu_began, 3),
    }


async def process_only(open_system: Opener, name: str, jobs: int, timeout_s: float) -> dict[str, Any]:
    """SAQ's own ``benchmarks/simple.py``: enqueue N jobs, then start the worker and time it."""
    done = _Counter()
    async with open_system(name, lambda t0: None, done.hit) as system:
        done.expect(jobs)
        began = time.perf_counter()
        await _enqueue_all(system, jobs)
        enqueued = time.perf_counter() - began
        began = time.perf_counter()
        await system.start()
        await asyncio.wait_for(done.reached.wait(), timeout_s)
        elapsed = time.perf_counter() - began
    return {
        "jobs": jobs,
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(jobs / elapsed),
        "enqueue_s": round(enqueued, 3),
    }


async def _enqueue_all(system: Any, jobs: int) -> None:
    sem = asyncio.Semaphore(ENQUEUE_IN_FLIGHT)

    async def one() -> None:
        async with sem:
            await system.enqueue(time.perf_counter())

    await asyncio.gather(*(one() for _ in range(jobs)))


async def latency(open_system: Opener, name: str, jobs: int, rate: float, timeout_s: float) -> dict[str, Any]:
    delays: list[float] = []
    async with open_system(name, lambda t0: delays.append(time.perf_counter() - t0), lambda: None) as system:
        await system.start()
        await system.enqueue(time.perf_counter())  # warm-up, not counted
        await _until(lambda: len(delays) >= 1, timeout_s)
        delays.clear()
        pending: set[asyncio.Task[Any]] = set()  # keep references: asyncio holds tasks weakly
        interval = 1.0 / rate
        next_at = time.perf_counter()
        for _ in range(jobs):
            task = asyncio.create_task(system.enqueue(time.perf_counter()))
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        # Polling here only decides when to stop; each delay was taken inside the job itself.
        await _until(lambda: len(delays) >= jobs, timeout_s)
    return {"jobs": jobs, "rate_per_s": rate, **latency_summary(delays)}


async def _until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.perf_counter() + timeout_s
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError("the peer did not finish in time")
        await asyncio.sleep(0.005)


def peer_main(
    doc: str,
    describe: Callable[[argparse.Namespace], dict[str, Any]],
    make_opener: Callable[[argparse.Namespace], Opener],
    extra_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None,
) -> None:
    """The command line every peer bench shares: the three measurements of this module, as JSON.

    ``describe(args)`` names the system (and its settings); ``make_opener(args)`` opens it.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--redis", required=True)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--latency-jobs", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--json", action="store_true")
    extra_arguments(parser)
    args = parser.parse_args()

    async def measure() -> dict[str, Any]:
        open_system = make_opener(args)
        return {
            **describe(args),
            "machine": machine(),
            "concurrency": args.concurrency,
            "throughput": await throughput(open_system, "tp", args.jobs, args.timeout),
            "process_only": await process_only(open_system, "po", args.jobs, args.timeout),
            "latency": await latency(open_system, "lat", args.latency_jobs, args.rate, args.timeout),
        }

    emit(asyncio.run(measure()), args.json)
