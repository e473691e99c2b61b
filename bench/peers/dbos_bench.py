"""DBOS Transact (dbos-inc/dbos-transact-py) workflows of three steps on its SQLite system db.

Each ``@DBOS.step`` records its output in the system database before the workflow goes on, as
agentd's ``ctx.emit`` does; the workflow's status is recorded at its start and end. DBOS opens
SQLite in its default mode (rollback journal, synchronous=FULL).

- one by one: a workflow called in a loop, awaited each time;
- concurrently: N workflows, at most C in flight (the same C as agentd's): asyncio tasks for
  the async style, a pool of C threads for the sync style.

    bench/.venv-peers/bin/python bench/peers/dbos_bench.py [--workflows 200] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: common

from common import emit, machine
from dbos import DBOS

STEPS = 3


# Both of DBOS's styles are measured and the faster one is reported for the peer, so the
# comparison never rests on the peer's slower API.


@DBOS.step()
async def step_async(number: int) -> str:
    return f"step {number} done"


@DBOS.workflow()
async def three_steps_async() -> list[str]:
    return [await step_async(number) for number in range(1, STEPS + 1)]


@DBOS.step()
def step_sync(number: int) -> str:
    return f"step {number} done"


@DBOS.workflow()
def three_steps_sync() -> list[str]:
    return [step_sync(number) for number in range(1, STEPS + 1)]


def _rate(workflows: int, elapsed: float, **extra: Any) -> dict[str, Any]:
    return {
        "workflows": workflows,
        **extra,
        "seconds": round(elapsed, 3),
        "workflows_per_s": round(workflows / elapsed, 1),
    }


async def async_one_by_one(workflows: int) -> dict[str, Any]:
    began = time.perf_counter()
    for _ in range(workflows):
        assert len(await three_steps_async()) == STEPS
    return _rate(workflows, time.perf_counter() - began)


async def async_concurrently(workflows: int, concurrency: int) -> dict[str, Any]:
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            assert len(await three_steps_async()) == STEPS

    began = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(workflows)))
    return _rate(workflows, time.perf_counter() - began, concurrency=concurrency)


def sync_one_by_one(workflows: int) -> dict[str, Any]:
    began = time.perf_counter()
    for _ in range(workflows):
        assert len(three_steps_sync()) == STEPS
    return _rate(workflows, time.perf_counter() - began)


def sync_concurrently(workflows: int, concurrency: int) -> dict[str, Any]:
    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        assert all(len(r) == STEPS for r in pool.map(lambda _: three_steps_sync(), range(workflows)))
    return _rate(workflows, time.perf_counter() - began, concurrency=concurrency)


def _best(*runs: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    style, run = max(runs, key=lambda item: item[1]["workflows_per_s"])
    return {**run, "style": style, "all": {name: r["workflows_per_s"] for name, r in runs}}


def run(args: argparse.Namespace, db: Path) -> dict[str, Any]:
    DBOS(config={"name": "agentd-bench", "system_database_url": f"sqlite:///{db}", "log_level": "WARNING"})
    DBOS.launch()
    try:
        three_steps_sync()  # warm-up: migrations done, pools open
        asyncio.run(three_steps_async())
        n, c = args.workflows, args.concurrency
        return {
            "system": f"dbos {importlib.metadata.version('dbos')}",
            "machine": machine(),
            "one_by_one": _best(("sync", sync_one_by_one(n)), ("async", asyncio.run(async_one_by_one(n)))),
            "concurrent": _best(
                ("sync threads", sync_concurrently(n, c)), ("async", asyncio.run(async_concurrently(n, c)))
            ),
        }
    finally:
        DBOS.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.getLogger("dbos").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="agentd-bench-dbos-") as tmp:
        emit(run(args, Path(tmp) / "dbos.sqlite"), args.json)


if __name__ == "__main__":
    main()
