"""The outbox: deliveries per second to a local webhook receiver, and what a finished task's
status change costs with N webhooks of its owner against none.

- ``deliveries``: N test deliveries queued in a real SQLite store, then the real ``Sender``
  (``notify_concurrency`` at once, the webhook channel: signed, address-checked, a new
  loopback connection each) delivers them to a receiver in the same process (h11 on Trio, the
  tests' fake, which verifies every signature); deliveries per second from the first claim to
  the last recorded.
- ``finish``: T tasks started, then each finished (``running -> succeeded``) one after the other
  through ``store.transition``, with 0, 1 and 10 webhooks of the owner: p50 / mean per change.
  The write path adds one indexed ``INSERT ... SELECT`` per notifying change when the owner
  has targets, nothing when not; the runs are interleaved round by round.
- ``--store postgres``: both on a throwaway PostgreSQL (``bench/pg_server.py``: durable
  defaults, a fresh database per measurement), plus ``deliveries`` with two senders, each on
  its own ``PostgresStore`` as two daemons run (rows claimed with ``FOR UPDATE SKIP LOCKED``);
  the receiver counts every request, so ``requests == distinct_ids == deliveries`` means each
  delivery arrived exactly once.

    .venv/bin/python bench/outbox.py [--store sqlite|postgres] [--deliveries 2000] [--tasks 500]
        [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import emit as print_result, host_speed, machine
from pg_server import fresh_database, pg_server

from daemon.config import Settings
from daemon.notify.outbox import KINDS, Target
from daemon.notify.sender import Sender
from daemon.secrets import SecretBox
from daemon.states import TaskStatus
from daemon.store import SqliteStore, Store, Transition
from daemon.usecases import notify as uc
from daemon.usecases.policy import Viewer
from tests.fakes.webhook_receiver import WebhookReceiver

KEY = "bXktYmVuY2gta2V5LW9mLTMyLWJ5dGVzLWxvbmctLS0="  # a fixed Fernet key: a bench, not a secret


# Opens a new, empty store of the measured kind (the same database on each call).
Opener = Callable[[], Awaitable[Store]]


def _svc(store: Store, settings: Settings) -> Any:
    return type("Svc", (), {"store": store, "settings": settings, "secrets": SecretBox([KEY])})()


def sqlite_opener() -> Opener:
    """A new SQLite data dir under /tmp; every call opens the store in it."""
    tmp = Path(tempfile.mkdtemp(prefix="agentd-outbox-", dir="/tmp"))
    return lambda: SqliteStore.open(tmp / "data")


def postgres_opener(dsn: str) -> Opener:
    """Every call opens its own ``PostgresStore`` (its own pool) on ``dsn``."""
    from daemon.store.postgres import PostgresStore  # psycopg: only when measuring PostgreSQL

    return lambda: PostgresStore.open(dsn)


@contextlib.asynccontextmanager
async def _stores(opener: Opener, count: int) -> AsyncIterator[list[Store]]:
    """``count`` stores on one database, all closed on exit (cancellation too)."""
    async with contextlib.AsyncExitStack() as stack:
        stores = []
        for _ in range(count):
            store = await opener()
            stack.push_async_callback(store.aclose)
            stores.append(store)
        yield stores


async def deliveries(opener: Opener, n: int, concurrency: int, senders: int = 1) -> dict[str, Any]:
    """N test deliveries queued, then delivered by ``senders`` senders, each on its own store
    (as daemons sharing one database run), ``concurrency`` at once each."""
    settings = Settings(allow_private_remotes=True, notify_concurrency=concurrency, log_level="WARNING")
    async with _stores(opener, senders) as stores:
        store = stores[0]
        svc = _svc(store, settings)
        user = await store.upsert_user("alice")
        async with trio.open_nursery() as nursery:
            receiver = WebhookReceiver()
            url = await nursery.start(receiver.serve)
            made = await uc.add_webhook(svc, Viewer.of(user), f"{url}/hook")
            receiver.secret = made.secret
            for _ in range(n):
                await uc.send_test(svc, Viewer.of(user), made.target.id)
            began = time.perf_counter()
            cpu = time.process_time()
            for i, each in enumerate(stores):
                await nursery.start(Sender(each, settings, svc.secrets, claimer=f"bench-{i}").run)
            await receiver.wait_for(n)
            # The last records follow the last answers; no event marks them.
            while await store.count_pending_deliveries():  # noqa: ASYNC110
                await trio.sleep(0.005)
            elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
            nursery.cancel_scope.cancel()
    return {
        "deliveries": n,
        "senders": senders,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "per_s": round(n / elapsed, 1),
        "cpu_ms_per_delivery": round(cpu * 1000 / n, 3),
        "verified": sum(1 for r in receiver.requests if r.verified),
        "requests": len(receiver.requests),
        "distinct_ids": len(set(receiver.accepted)),
    }


async def finish_costs(
    opener: Opener, tasks: int, rounds: int, target_counts: tuple[int, ...]
) -> dict[str, Any]:
    store = await opener()
    box = SecretBox([KEY])
    samples: dict[int, list[float]] = {count: [] for count in target_counts}
    try:
        users = {}
        for count in target_counts:
            user = await store.upsert_user(f"u{count}")
            users[count] = user
            for i in range(count):
                await store.add_target(
                    Target(
                        f"wh_{count:04d}{i:012d}",
                        user.id,
                        "webhook",
                        "https://example.com/h",
                        box.encrypt("whsec_x"),
                        KINDS,
                        time.time(),
                    )
                )
        for _ in range(rounds):
            for count in target_counts:  # interleaved: the machine's drift hits every side alike
                ids = []
                for _ in range(tasks):
                    task, _ = await store.create_task(
                        user_id=users[count].id, repo_url="https://x/y", prompt="p"
                    )
                    await store.transition(Transition(task.id, TaskStatus.RUNNING, attempt_delta=1))
                    ids.append(task.id)
                for task_id in ids:
                    began = time.perf_counter()
                    await store.transition(Transition(task_id, TaskStatus.SUCCEEDED))
                    samples[count].append(time.perf_counter() - began)
        rows = await store.list_deliveries("all", limit=1)
        assert (rows != []) == any(target_counts)
        out = {}
        for count, values in samples.items():
            ordered = sorted(values)
            out[str(count)] = {
                "p50_us": round(ordered[len(ordered) // 2] * 1e6, 1),
                "mean_us": round(statistics.fmean(values) * 1e6, 1),
                "samples": len(values),
            }
        base = out[str(target_counts[0])]["p50_us"]
        for count in target_counts[1:]:
            out[str(count)]["added_p50_us"] = round(out[str(count)]["p50_us"] - base, 1)
        return out
    finally:
        await store.aclose()


async def main_async(args: argparse.Namespace, openers: list[Opener]) -> dict[str, Any]:
    """One opener (a fresh database) per measurement: deliveries, [two senders,] finish."""
    out: dict[str, Any] = {"machine": machine(), "host_speed_s": round(host_speed(), 3), "store": args.store}
    out["deliveries"] = await deliveries(openers[0], args.deliveries, args.concurrency)
    out["finish"] = await finish_costs(openers[-1], args.tasks, args.rounds, (0, 1, 10))
    if len(openers) == 3:
        out["deliveries_2_senders"] = await deliveries(openers[1], args.deliveries, args.concurrency, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.store == "sqlite":
        print_result(trio.run(main_async, args, [sqlite_opener(), sqlite_opener()]), args.json)
        return
    # Server and databases made here, off the Trio thread (they are blocking subprocess calls).
    with pg_server() as server, contextlib.ExitStack() as stack:
        dsns = [stack.enter_context(fresh_database(server, "outbox")) for _ in range(3)]
        print_result(trio.run(main_async, args, [postgres_opener(dsn) for dsn in dsns]), args.json)


if __name__ == "__main__":
    main()
