"""Load-generating WebSocket clients (phones), on the ``websockets`` library's asyncio client.

Run with ``bench/.venv-peers/bin/python`` by ``ws_delivery.py``, one or more processes, the
same clients against agentd and against the peer. ``SPEC`` (a JSON file) lists the
connections: ``{"url": ..., "connect_concurrency": N, "conns": [{"token": ..., "subs":
[[task_id, after], ...], "watch": bool}, ...]}``. Each connection authenticates with the
Bearer header, subscribes, sends ``ping`` and waits for ``pong``; once all have, this prints
``{"ready": ...}``. Then it reads ``{"w0": T, "w1": T, "until": T}`` from stdin, records the
latency ``now - data.t`` (and ``now - data.due``, from when the event was scheduled) of every
event whose send time lies in [w0, w1), counts what it received in [w0, w1), and at ``until``
prints its result (histogram, counts, resyncs, errors) and exits without a closing handshake.
No compression is offered (the issue's peer figure is without), and clients send no
keepalive pings of their own (the servers ping them).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ws_common import Histogram, now, raise_fd_limit


class Stats:
    def __init__(self) -> None:
        self.hist = Histogram()
        self.hist_due = Histogram()  # from the scheduled time: includes the server's lateness
        self.window = (float("inf"), float("inf"))
        self.total = 0
        self.in_window = 0
        self.received_in_window = 0
        self.resyncs = 0
        self.errors: dict[str, int] = {}
        self.closed = 0


async def one(
    url: str, spec: dict, sem: asyncio.Semaphore, stats: Stats, ready: list, all_ready: asyncio.Event, n: int
) -> None:
    loads = json.loads
    async with sem:
        ws = await connect(
            url,
            additional_headers={"Authorization": f"Bearer {spec['token']}"},
            compression=None,
            ping_interval=None,
            open_timeout=120,
            max_size=1 << 20,
            close_timeout=1,
        )
        for task_id, after in spec.get("subs", ()):
            await ws.send(json.dumps({"type": "subscribe", "task_id": task_id, "after": after}))
        if spec.get("watch"):
            await ws.send('{"type":"subscribe_tasks"}')
        await ws.send('{"type":"ping"}')
        async for raw in ws:
            message = loads(raw)
            if message.get("type") == "pong":
                break
            if message.get("type") == "error":
                stats.errors[message.get("code", "?")] = stats.errors.get(message.get("code", "?"), 0) + 1
    ready[0] += 1
    if ready[0] == n:
        all_ready.set()
    try:
        async for raw in ws:
            message = loads(raw)
            kind = message.get("type")
            if kind == "event":
                data = message.get("data") or {}
                t = data.get("t")
                if t is None:
                    continue
                stats.total += 1
                w0, w1 = stats.window
                received = now()
                if w0 <= received < w1:
                    stats.received_in_window += 1  # what the server sent in the CPU window
                if w0 <= t < w1:
                    stats.in_window += 1
                    stats.hist.add(received - t)
                    stats.hist_due.add(received - data.get("due", t))
            elif kind == "resync":
                stats.resyncs += 1
            elif kind == "error":
                code = message.get("code", "?")
                stats.errors[code] = stats.errors.get(code, 0) + 1
    except Exception:  # noqa: BLE001 - a connection the server dropped: counted, not fatal
        stats.closed += 1


async def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())  # noqa: ASYNC240 - once, before any connection
    conns = spec["conns"]
    raise_fd_limit(len(conns) + 1000)
    stats = Stats()
    sem = asyncio.Semaphore(spec.get("connect_concurrency", 100))
    ready, all_ready = [0], asyncio.Event()
    began = time.perf_counter()
    tasks = [
        asyncio.create_task(one(spec["url"], c, sem, stats, ready, all_ready, len(conns))) for c in conns
    ]
    waiter = asyncio.create_task(all_ready.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED, timeout=300)
    if not all_ready.is_set():
        failed = [t for t in done if t is not waiter and t.exception() is not None]
        raise SystemExit(
            f"clients not ready: {ready[0]}/{len(conns)}; {failed[0].exception()!r}"
            if failed
            else f"timeout: {ready[0]}/{len(conns)}"
        )
    print(json.dumps({"ready": ready[0], "connect_s": round(time.perf_counter() - began, 2)}), flush=True)
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if not line:
        os._exit(0)
    cmd = json.loads(line)
    stats.window = (cmd.get("w0", float("inf")), cmd.get("w1", float("inf")))
    cpu0 = time.process_time()
    await asyncio.sleep(max(0.0, cmd["until"] - now()))
    print(
        json.dumps(
            {
                "hist": stats.hist.to_json(),
                "hist_due": stats.hist_due.to_json(),
                "in_window": stats.in_window,
                "received_in_window": stats.received_in_window,
                "total": stats.total,
                "resyncs": stats.resyncs,
                "errors": stats.errors,
                "closed": stats.closed,
                "cpu_s": round(time.process_time() - cpu0, 3),
            }
        ),
        flush=True,
    )
    os._exit(0)  # no closing handshakes: the servers see the peers go away


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
