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

    .venv/bin/python bench/outbox.py [--deliveries 2000] [--tasks 500] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import emit as print_result, host_speed, machine

from daemon.config import Settings
from daemon.notify.outbox import KINDS, Target
from daemon.notify.sender import Sender
from daemon.secrets import SecretBox
from daemon.states import TaskStatus
from daemon.store import SqliteStore, Transition
from daemon.usecases import notify as uc
from daemon.usecases.policy import Viewer
from tests.fakes.webhook_receiver import WebhookReceiver

KEY = "bXktYmVuY2gta2V5LW9mLTMyLWJ5dGVzLWxvbmctLS0="  # a fixed Fernet key: a bench, not a secret


def _svc(store: SqliteStore, settings: Settings) -> Any:
    return type("Svc", (), {"store": store, "settings": settings, "secrets": SecretBox([KEY])})()


async def deliveries(n: int, concurrency: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="agentd-outbox-", dir="/tmp"))
    store = await SqliteStore.open(tmp / "data")
    settings = Settings(allow_private_remotes=True, notify_concurrency=concurrency, log_level="WARNING")
    svc = _svc(store, settings)
    try:
        user = await store.upsert_user("alice")
        async with trio.open_nursery() as nursery:
            receiver = WebhookReceiver()
            url = await nursery.start(receiver.serve)
            made = await uc.add_webhook(svc, Viewer.of(user), f"{url}/hook")
            receiver.secret = made.secret
            for _ in range(n):
                await uc.send_test(svc, Viewer.of(user), made.target.id)
            sender = Sender(store, settings, svc.secrets, claimer="bench")
            began = time.perf_counter()
            cpu = time.process_time()
            await nursery.start(sender.run)
            await receiver.wait_for(n)
            # The last records follow the last answers; no event marks them.
            while await store.count_pending_deliveries():  # noqa: ASYNC110
                await trio.sleep(0.005)
            elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
            nursery.cancel_scope.cancel()
        verified = sum(1 for r in receiver.requests if r.verified)
        return {
            "deliveries": n,
            "concurrency": concurrency,
            "seconds": round(elapsed, 3),
            "per_s": round(n / elapsed, 1),
            "cpu_ms_per_delivery": round(cpu * 1000 / n, 3),
            "verified": verified,
            "distinct_ids": len(set(receiver.accepted)),
        }
    finally:
        await store.aclose()


async def finish_costs(tasks: int, rounds: int, target_counts: tuple[int, ...]) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="agentd-outbox-", dir="/tmp"))
    store = await SqliteStore.open(tmp / "data")
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


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "machine": machine(),
        "host_speed_s": round(host_speed(), 3),
        "deliveries": await deliveries(args.deliveries, args.concurrency),
        "finish": await finish_costs(args.tasks, args.rounds, (0, 1, 10)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    print_result(trio.run(main_async, args), args.json)


if __name__ == "__main__":
    main()
