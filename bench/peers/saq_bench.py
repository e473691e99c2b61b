"""SAQ (tobymao/saq) on a real Redis: the queue shape of ``shape.py``.

Run by ``bench/run_all.py`` with the peers' venv:
    bench/.venv-peers/bin/python bench/peers/saq_bench.py --redis redis://127.0.0.1:PORT/0 --json
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

import saq
from shape import System, peer_main


def opener(url: str, concurrency: int):
    @contextlib.asynccontextmanager
    async def open_system(
        name: str, on_start: Callable[[float], None], on_done: Callable[[], None]
    ) -> AsyncIterator[Any]:
        async def noop(ctx: dict[str, Any], *, t0: float) -> None:
            on_start(t0)

        async def after_process(ctx: dict[str, Any]) -> None:
            # SAQ calls this after job.finish() has written the job's final status to Redis.
            on_done()

        queue = saq.Queue.from_url(url, name=f"{name}-{uuid.uuid4().hex[:8]}")
        await queue.connect()
        worker = saq.Worker(
            queue, functions=[("noop", noop)], concurrency=concurrency, after_process=after_process
        )
        runners: list[asyncio.Task[None]] = []

        async def start() -> None:
            runners.append(asyncio.create_task(worker.start()))

        try:
            yield System(lambda t0: queue.enqueue("noop", t0=t0), start)
        finally:
            if runners:
                await worker.stop()
                runners[0].cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await runners[0]
            await queue.disconnect()

    return open_system


def main() -> None:
    peer_main(
        __doc__,
        describe=lambda args: {"system": f"saq {importlib.metadata.version('saq')}"},
        make_opener=lambda args: opener(args.redis, args.concurrency),
    )


if __name__ == "__main__":
    main()
