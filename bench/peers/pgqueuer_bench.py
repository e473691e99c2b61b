"""pgqueuer (janbjorge/pgqueuer) on a real PostgreSQL: the queue shape of ``shape.py``.

Each measurement gets a fresh database on the server named by ``--pg`` (``bench/pg_server.py``
starts one with durable defaults: fsync and synchronous_commit on) and pgqueuer's schema in it
(``Queries.install()``, the same as ``pgq install``; its default durability, every table logged).

Settings: pgqueuer's defaults (asyncpg driver, ``QueueManager.run(batch_size=10)``, 30 s
dequeue timeout and heartbeat timeout, LISTEN/NOTIFY wake-ups), except what SAQ's shape needs:
- concurrency 10 is the entrypoint's ``concurrency_limit=10`` (enforced in SQL on picked jobs;
  one worker here, so it is also this worker's limit). ``max_concurrent_tasks=10`` would be
  the per-worker cap instead, but pgqueuer requires it to be at least twice the batch size,
  i.e. batch 5; ``--limit worker`` measures that.
- the worker's driver is an ``AsyncpgPoolDriver`` (heartbeats, dequeues and the completion log
  need not queue behind each other on one connection); the enqueues use a pool of their own.
- "finished" is the commit of pgqueuer's completion log (``Queries.log_jobs``, which deletes the
  job from the queue table and logs it); pgqueuer buffers those and writes them in batches.

    bench/.venv-peers/bin/python bench/peers/pgqueuer_bench.py --pg postgresql://... --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import struct
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: common, pg_server
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/peers/: shape

import asyncpg
from common import emit, machine
from pg_server import fresh_database
from pgqueuer import QueueManager
from pgqueuer.db import AsyncpgPoolDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries
from shape import ENQUEUE_IN_FLIGHT, System, latency, process_only, throughput

ENTRYPOINT = "noop"


@dataclasses.dataclass
class _ObservedQueries(Queries):
    """pgqueuer's ``Queries``, telling ``on_logged`` each job whose completion log committed."""

    on_logged: Callable[[int], None] = lambda count: None

    async def log_jobs(self, job_status: list[Any]) -> None:
        await super().log_jobs(job_status)
        self.on_logged(sum(1 for _, status, _ in job_status if status == "successful"))


def opener(server_dsn: str, concurrency: int, limit: str, batch_size: int):
    @contextlib.asynccontextmanager
    async def open_system(
        name: str, on_start: Callable[[float], None], on_done: Callable[[], None]
    ) -> AsyncIterator[Any]:
        with fresh_database(server_dsn, prefix=f"pgq_{name}") as dsn:
            setup = await asyncpg.connect(dsn)
            try:
                await Queries.from_asyncpg_connection(setup).install()
            finally:
                await setup.close()
            enqueue_pool = await asyncpg.create_pool(dsn, min_size=1, max_size=ENQUEUE_IN_FLIGHT)
            worker_pool = await asyncpg.create_pool(dsn)  # asyncpg's default size, 10
            producer = Queries.from_asyncpg_pool(enqueue_pool)

            def logged(count: int) -> None:
                for _ in range(count):
                    on_done()

            qm = QueueManager(_ObservedQueries(AsyncpgPoolDriver(worker_pool), on_logged=logged))

            @qm.entrypoint(ENTRYPOINT, concurrency_limit=concurrency if limit == "entrypoint" else 0)
            async def noop(job: Job) -> None:
                on_start(struct.unpack("d", job.payload)[0])

            runners: list[asyncio.Task[None]] = []

            async def start() -> None:
                runners.append(
                    asyncio.create_task(
                        qm.run(
                            batch_size=batch_size,
                            max_concurrent_tasks=concurrency if limit == "worker" else None,
                        )
                    )
                )

            try:
                yield System(lambda t0: producer.enqueue(ENTRYPOINT, struct.pack("d", t0)), start)
            finally:
                if runners:
                    qm.shutdown.set()  # pgqueuer's own stop: flushes its buffers, then returns
                    await asyncio.wait_for(runners[0], 30)  # cancels it (and fails) past 30 s
                await worker_pool.close()
                await enqueue_pool.close()

    return open_system


def main() -> None:
    # shape.peer_main's command line takes --redis; the same three measurements on --pg here.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", required=True, help="DSN of the server (a database per run is made)")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--latency-jobs", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument(
        "--limit",
        choices=("entrypoint", "worker"),
        default="entrypoint",
        help="concurrency as the entrypoint's concurrency_limit (default) or as "
        "max_concurrent_tasks (then batch size is concurrency // 2)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="QueueManager.run batch_size (pgqueuer's default 10)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    batch = args.batch_size or (max(1, args.concurrency // 2) if args.limit == "worker" else 10)

    async def measure() -> dict[str, Any]:
        open_system = opener(args.pg, args.concurrency, args.limit, batch)
        return {
            "system": f"pgqueuer {importlib.metadata.version('pgqueuer')}",
            "settings": {
                "driver": f"asyncpg {importlib.metadata.version('asyncpg')} pool",
                "concurrency_as": args.limit,
                "batch_size": batch,
            },
            "machine": machine(),
            "concurrency": args.concurrency,
            "throughput": await throughput(open_system, "tp", args.jobs, args.timeout),
            "process_only": await process_only(open_system, "po", args.jobs, args.timeout),
            "latency": await latency(open_system, "lat", args.latency_jobs, args.rate, args.timeout),
        }

    emit(asyncio.run(measure()), args.json)


if __name__ == "__main__":
    main()
