"""arq (python-arq/arq) on a real Redis: the queue shape of ``shape.py``, at a given poll delay.

arq's worker polls Redis every ``poll_delay`` seconds (default 0.5): measured both with the
default and tuned (0.01), as the issue asks.
    bench/.venv-peers/bin/python bench/peers/arq_bench.py --redis URL --poll-delay 0.5 --json
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: common
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/peers/: shape

from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker, func
from shape import System, peer_main


def opener(url: str, concurrency: int, poll_delay: float):
    @contextlib.asynccontextmanager
    async def open_system(
        name: str, on_start: Callable[[float], None], on_done: Callable[[], None]
    ) -> AsyncIterator[Any]:
        async def noop(ctx: dict[str, Any], t0: float) -> None:
            on_start(t0)

        async def after_job_end(ctx: dict[str, Any]) -> None:
            # arq calls this once the job has ended and its result has been recorded.
            on_done()

        settings = RedisSettings.from_dsn(url)
        queue_name = f"arq:{name}-{uuid.uuid4().hex[:8]}"
        pool = await create_pool(settings, default_queue_name=queue_name)
        worker = Worker(
            functions=[func(noop, name="noop")],
            redis_settings=settings,
            queue_name=queue_name,
            max_jobs=concurrency,
            poll_delay=poll_delay,
            after_job_end=after_job_end,
            handle_signals=False,
        )
        runners: list[asyncio.Task[None]] = []

        async def start() -> None:
            runners.append(asyncio.create_task(worker.async_run()))

        try:
            yield System(lambda t0: pool.enqueue_job("noop", t0), start)
        finally:
            for runner in runners:
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await runner
            # The measurement is over; jobs cut short by the cancel above (a result write still
            # in flight) re-raise their CancelledError from close(): not ours, ignored.
            with contextlib.suppress(asyncio.CancelledError):
                await worker.close()
            await pool.aclose()

    return open_system


def main() -> None:
    peer_main(
        __doc__,
        describe=lambda args: {
            "system": f"arq {importlib.metadata.version('arq')}",
            "poll_delay": args.poll_delay,
        },
        make_opener=lambda args: opener(args.redis, args.concurrency, args.poll_delay),
        extra_arguments=lambda parser: parser.add_argument("--poll-delay", type=float, default=0.5),
    )


if __name__ == "__main__":
    main()
