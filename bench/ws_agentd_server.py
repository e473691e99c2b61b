"""agentd under test for the WebSocket benchmarks: the real daemon, events through the real store.

``Daemon.serve`` runs as ``agentd serve`` would (store, supervisor, the HTTP port with ``/ws``
on the socket and Hypercorn + Quart-Trio for the rest), with a bench-only runner: each of the
``--tasks`` tasks is admitted by the supervisor and stays ``running``; on an ``emit`` command
every chosen task appends ``agent.text`` events at ``rate`` per second (woken when due by one
``Pacer``, as a model stream's socket would wake it) through its ``RunContext.emit`` (that is,
``store.append_events``: group commit, then the hub, then the WebSocket fan-out), each carrying
its send time ``data.t`` (CLOCK_MONOTONIC) taken just before the append, and ``data.due``, when
it was scheduled (later than that when the loop falls behind). Driven by ``ws_delivery.py`` over
stdin/stdout with the same JSON lines as ``ws_peer_server.py``.

    .venv/bin/python bench/ws_agentd_server.py --tasks 1000 --users 100
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import loop_pinned
from ws_common import Histogram, now, raise_fd_limit

from daemon.config import Settings
from daemon.events import EventHub
from daemon.gc_tuning import tune_gc_for_serving
from daemon.service import Daemon
from daemon.store import Event
from daemon.supervisor import RunContext, RunResult
from daemon.tokens import hash_token, new_token


class EmitterRunner:
    """Keeps every admitted task running (parked) until the bench ends; emission is driven
    from outside through each task's own ``RunContext``."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.contexts: dict[str, RunContext] = {}
        self.all_running = trio.Event()
        self.finish = trio.Event()
        if expected == 0:
            self.all_running.set()

    async def run(self, ctx: RunContext) -> RunResult:
        self.contexts[ctx.task.id] = ctx
        if len(self.contexts) >= self.expected:
            self.all_running.set()
        await self.finish.wait()
        return RunResult()


class Pacer:
    """Wakes each emitting task at its due time the way its model stream would: a park and a
    reschedule, not a timer of its own.

    An agent task emits after its stream's socket became readable (Trio parks and reschedules
    it: about 5 µs of CPU). ``trio.sleep`` per event would cost about 29 µs here (a cancel scope
    with a deadline, ended by raising Cancelled), where the peer's ``asyncio.sleep`` costs 6 µs:
    the emitting loop, not the daemon, would then take a quarter of a core at 10,000 events/s.
    One task sleeps instead and unparks whoever is due, ``tick`` by ``tick``.
    """

    def __init__(self, tick: float = 0.0005) -> None:
        self.tick = tick
        self._lots: dict[int, trio.lowlevel.ParkingLot] = {}
        self._slots: list[int] = []  # heap of the ticks someone waits for
        self._wake_at = math.inf
        self._sooner = trio.Event()

    async def until(self, target: float) -> None:
        slot = math.ceil(target / self.tick)
        if slot * self.tick <= now():
            await trio.lowlevel.checkpoint()
            return
        lot = self._lots.get(slot)
        if lot is None:
            lot = self._lots[slot] = trio.lowlevel.ParkingLot()
            heapq.heappush(self._slots, slot)
            if slot * self.tick < self._wake_at:
                self._sooner.set()
        await lot.park()

    async def run(self) -> None:
        while True:
            t = now()
            while self._slots and self._slots[0] * self.tick <= t:
                self._lots.pop(heapq.heappop(self._slots)).unpark_all()
            self._wake_at = self._slots[0] * self.tick if self._slots else math.inf
            self._sooner = trio.Event()
            with trio.move_on_after(max(0.0, self._wake_at - now())):
                await self._sooner.wait()


async def emit(
    runner: EmitterRunner,
    task_ids: list[str],
    start: float,
    seconds: float,
    rate: float,
    window: tuple[float, float],
    hub: EventHub | None = None,
) -> dict[str, Any]:
    """Emit as the docstring at the top says; with ``hub``, also time each event from its send
    time ``data.t`` to its committed batch reaching the hub, whose listeners run just before the
    WebSocket fan-out writes it to the sockets (``to_sockets``: the server's share of latency)."""
    late, lag, to_sockets = Histogram(), Histogram(), Histogram()
    count = in_window = 0
    pacer = Pacer()
    timing = True

    def committed(events: list[Event]) -> None:
        if timing:
            t = now()
            for event in events:
                sent = event.data.get("t")
                if sent is not None and window[0] <= sent < window[1]:
                    to_sockets.add(t - sent)

    if hub is not None:
        hub.add_global_listener(committed)

    async def one(ctx: RunContext, phase: float) -> None:
        nonlocal count, in_window
        k = 0
        end = start + seconds
        while True:
            target = start + phase + k / rate
            if target >= end:
                return
            await pacer.until(target)
            t = now()
            late.add(t - target)
            await ctx.emit("agent.text", {"text": f"line {k}", "t": t, "due": target})
            count += 1
            in_window += window[0] <= t < window[1]
            k += 1

    async def sampler() -> None:
        while True:
            t = now()
            await trio.sleep(0.01)
            lag.add(now() - t - 0.01)

    async with trio.open_nursery() as outer:
        outer.start_soon(sampler)
        outer.start_soon(pacer.run)
        async with trio.open_nursery() as nursery:
            for i, task_id in enumerate(task_ids):
                nursery.start_soon(one, runner.contexts[task_id], i / len(task_ids) / rate)
        outer.cancel_scope.cancel()
    timing = False  # the listener stays (the hub has no removal for it): it then does nothing
    result = {"emitted": count, "in_window": in_window, "late": late.summary(), "lag": lag.summary()}
    if hub is not None:
        result["to_sockets"] = to_sockets.summary()
    return result


async def main(tasks: int, users: int, max_fds: int) -> None:
    raise_fd_limit(max_fds)
    tmp = Path(tempfile.mkdtemp(prefix="agentd-wsbench-", dir="/tmp"))
    settings = Settings(
        data_dir=tmp / "data",
        http="127.0.0.1:0",
        control_socket=tmp / "c.sock",
        concurrency=max(4, min(1024, tasks)),
        grace_period_s=0.0,
        # Many phones of few users connect at once: the per-user subscribe limit must not bite.
        rate_subscribes_burst=1_000_000,
        rate_subscribes_per_min=1e9,
        # ...nor the caps on the HTTP port (all clients are on 127.0.0.1, 15,000 when idle).
        http_max_connections=16_384,
        http_max_connections_per_address=0,
        ws_max_connections_per_user=0,
        log_level="WARNING",
        pin_loop_cpu=loop_pinned(),
    )
    runner = EmitterRunner(tasks)
    daemon = Daemon(settings, runner=runner)
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with trio.open_nursery() as nursery:
        (url,) = await nursery.start(daemon.serve)
        tune_gc_for_serving()  # as `agentd serve` does once ready
        store, supervisor = daemon.store, daemon.supervisor
        tokens, user_ids = [], []
        for i in range(users):
            user = await store.upsert_user(f"bench{i}")
            token = new_token()
            await store.add_token(user.id, hash_token(token))
            tokens.append(token)
            user_ids.append(user.id)
        ids = []
        for i in range(tasks):
            task, _ = await supervisor.submit(
                user_id=user_ids[i % users], repo_url="file:///bench", prompt=f"bench {i}"
            )
            ids.append(task.id)
        with trio.fail_after(120):
            await runner.all_running.wait()
        afters = [(await store.get_task(task_id)).last_seq for task_id in ids]
        print(
            json.dumps(
                {
                    "ready": True,
                    "url": url.replace("http", "ws", 1) + "/ws",
                    "tokens": tokens,
                    "tasks": [[t, i % users, a] for i, (t, a) in enumerate(zip(ids, afters, strict=True))],
                }
            ),
            flush=True,
        )
        buffer = b""
        while True:
            chunk = await stdin.receive_some(65536)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                cmd = json.loads(line)
                if cmd["cmd"] == "emit":
                    result = await emit(
                        runner,
                        ids[: cmd["tasks"]],
                        cmd["start"],
                        cmd["seconds"],
                        cmd["rate"],
                        (cmd.get("w0", 0.0), cmd.get("w1", float("inf"))),
                        daemon.hub,
                    )
                    print(json.dumps(result), flush=True)
        runner.finish.set()
        daemon.request_stop()
        daemon.request_stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1)
    parser.add_argument("--users", type=int, default=1)
    parser.add_argument("--max-fds", type=int, default=20_000)
    args = parser.parse_args()
    trio.run(main, args.tasks, args.users, args.max_fds)
