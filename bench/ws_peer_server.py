"""The peer: a minimal broadcast server on the ``websockets`` library (asyncio), no store.

It speaks the subset of agentd's WebSocket protocol the clients use (Bearer header,
``subscribe``, ``subscribe_tasks``, ``ping``) and emits the same event shape, encoded once per
event and handed to ``websockets.asyncio.server.broadcast``: what a user would write instead of
agentd for "push task events to phones". Runs with ``bench/.venv-peers/bin/python``; driven by
``ws_delivery.py`` over stdin/stdout (JSON lines), like ``ws_agentd_server.py``:

    -> {"ready": true, "url": ..., "tokens": [...], "tasks": [[task_id, user_index, after], ...]}
    <- {"cmd": "emit", "start": T0, "seconds": S, "tasks": K, "rate": R}
    -> {"emitted": N, "late": {...}, "lag": {...}}
    <- (stdin closed): exit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from pathlib import Path

from websockets.asyncio.server import broadcast, serve

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ws_common import Histogram, now, raise_fd_limit


class Peer:
    def __init__(self, tasks: int, users: int) -> None:
        self.tokens = [secrets.token_urlsafe(24) for _ in range(users)]
        self.auth = {f"Bearer {t}": i for i, t in enumerate(self.tokens)}
        self.tasks = [(f"task-{i:05d}", i % users) for i in range(tasks)]
        self.owner = dict(self.tasks)
        self.subs: dict[str, set] = {}
        self.watchers: dict[int, set] = {}
        self.seq: dict[str, int] = {task_id: 0 for task_id, _ in self.tasks}

    async def handler(self, ws) -> None:
        user = self.auth.get(ws.request.headers.get("Authorization", ""))
        if user is None:
            await ws.close(4401, "invalid token")
            return
        mine: list[str] = []
        try:
            async for raw in ws:
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "subscribe":
                    task_id = message.get("task_id")
                    if self.owner.get(task_id) == user:
                        self.subs.setdefault(task_id, set()).add(ws)
                        mine.append(task_id)
                elif kind == "subscribe_tasks":
                    self.watchers.setdefault(user, set()).add(ws)
                elif kind == "ping":
                    await ws.send('{"type":"pong"}')
        finally:
            for task_id in mine:
                self.subs.get(task_id, set()).discard(ws)
            self.watchers.get(user, set()).discard(ws)

    async def emit(
        self, start: float, seconds: float, tasks: int, rate: float, window: tuple[float, float]
    ) -> dict:
        late = Histogram()
        lag = Histogram()
        counts = [0, 0]

        async def one(task_id: str, phase: float) -> None:
            k = 0
            end = start + seconds
            while True:
                target = start + phase + k / rate
                if target >= end:
                    return
                delay = target - now()
                if delay > 0:
                    await asyncio.sleep(delay)
                t = now()
                late.add(t - target)
                self.seq[task_id] += 1
                text = json.dumps(
                    {
                        "type": "event",
                        "task_id": task_id,
                        "seq": self.seq[task_id],
                        "event": "agent.text",
                        "ts": time.time(),
                        "data": {"text": f"line {k}", "t": t, "due": target},
                    },
                    separators=(",", ":"),
                )
                broadcast(self.subs.get(task_id, ()), text)
                counts[0] += 1
                counts[1] += window[0] <= t < window[1]
                k += 1

        async def sampler() -> None:
            while True:
                t = now()
                await asyncio.sleep(0.01)
                lag.add(now() - t - 0.01)

        sampling = asyncio.create_task(sampler())
        chosen = self.tasks[:tasks]
        await asyncio.gather(*(one(task_id, i / len(chosen) / rate) for i, (task_id, _) in enumerate(chosen)))
        sampling.cancel()
        return {"emitted": counts[0], "in_window": counts[1], "late": late.summary(), "lag": lag.summary()}


async def main(tasks: int, users: int, max_fds: int) -> None:
    raise_fd_limit(max_fds)
    peer = Peer(tasks, users)
    loop = asyncio.get_running_loop()
    # No compression (the clients offer none either), library-default keepalive pings.
    async with serve(peer.handler, "127.0.0.1", 0, compression=None, max_size=64 * 1024) as server:
        port = server.sockets[0].getsockname()[1]
        print(
            json.dumps(
                {
                    "ready": True,
                    "url": f"ws://127.0.0.1:{port}/ws",
                    "tokens": peer.tokens,
                    "tasks": [[t, u, 0] for t, u in peer.tasks],
                }
            ),
            flush=True,
        )
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            cmd = json.loads(line)
            if cmd["cmd"] == "emit":
                result = await peer.emit(
                    cmd["start"],
                    cmd["seconds"],
                    cmd["tasks"],
                    cmd["rate"],
                    (cmd.get("w0", 0.0), cmd.get("w1", float("inf"))),
                )
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1)
    parser.add_argument("--users", type=int, default=1)
    parser.add_argument("--max-fds", type=int, default=20_000)
    args = parser.parse_args()
    asyncio.run(main(args.tasks, args.users, args.max_fds))
