"""CPU per delivered WebSocket message: N subscribers on one task, M events.

The daemon runs in this process (its real HTTP port and ``/ws``, real store); the N WebSocket
clients run in a child process, so ``time.process_time()`` here counts only the server. The cost
of appending the M events with no subscriber (store, hub) is measured first and subtracted.

    .venv/bin/python bench/ws_fanout.py [--subscribers 50] [--events 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: common

from common import cpu_model

from daemon.config import Settings
from daemon.service import Daemon
from daemon.store import NewEvent
from daemon.supervisor.runner import NoopRunner
from daemon.tokens import hash_token, new_token

BATCH = 1  # one event per append, as the agent loop emits them


async def child(url: str, token: str, task_id: str, after: int, n: int, m: int) -> None:
    """The clients: N sockets, each subscribed, each reading until it holds M events."""
    from trio_websocket import open_websocket_url

    ready = 0
    all_ready = trio.Event()

    async def one() -> None:
        nonlocal ready
        headers = [(b"Authorization", f"Bearer {token}".encode())]
        async with open_websocket_url(url, extra_headers=headers) as ws:
            await ws.send_message(json.dumps({"type": "subscribe", "task_id": task_id, "after": after}))
            await ws.send_message('{"type":"ping"}')
            while json.loads(await ws.get_message())["type"] != "pong":
                pass
            ready += 1
            if ready == n:
                all_ready.set()
            got = 0
            while got < m:
                if json.loads(await ws.get_message()).get("type") == "event":
                    got += 1

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
        await all_ready.wait()
        print("ready", flush=True)
    print("done", flush=True)


async def append(daemon: Daemon, task_id: str, m: int) -> None:
    for i in range(0, m, BATCH):
        await daemon.store.append_events(task_id, [NewEvent("agent.text", {"text": f"line {i}"})] * BATCH)


async def main(n: int, m: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="agentd-bench-", dir="/tmp"))
    settings = Settings(
        data_dir=tmp / "data",
        http="127.0.0.1:0",
        control_socket=tmp / "c.sock",
        rate_subscribes_burst=10_000,
        ws_queue_limit=max(1000, 2 * m),
        ws_max_connections_per_user=0,
        http_max_connections_per_address=0,
    )
    daemon = Daemon(settings, runner=NoopRunner())
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            (url,) = await nursery.start(daemon.serve)
            daemon.supervisor.drain()
            user = await daemon.store.upsert_user("bench")
            token = new_token()
            await daemon.store.add_token(user.id, hash_token(token))
            task, _ = await daemon.supervisor.submit(user_id=user.id, repo_url="file:///r", prompt="p")

            cpu = time.process_time()
            await append(daemon, task.id, m)
            baseline = time.process_time() - cpu

            after = (await daemon.store.get_task(task.id)).last_seq
            proc = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    url.replace("http", "ws", 1) + "/ws",
                    token,
                    task.id,
                    str(after),
                    str(n),
                    str(m),
                ],
                stdout=subprocess.PIPE,
            )
            lines = _lines(proc.stdout)
            assert await lines.__anext__() == "ready"
            cpu, wall = time.process_time(), time.perf_counter()
            await append(daemon, task.id, m)
            assert await lines.__anext__() == "done"
            used, wall = time.process_time() - cpu, time.perf_counter() - wall
            await proc.wait()
            daemon.request_stop()
    delivered = n * m
    per_msg = (used - baseline) / delivered * 1e6
    print(
        f"{n} subscribers x {m} events = {delivered} messages in {wall:.2f} s wall; "
        f"server CPU {used:.2f} s (appends alone {baseline:.2f} s)"
    )
    print(
        f"ws_fanout: {per_msg:.1f} µs CPU per delivered message "
        f"(nproc {os.cpu_count()}, {cpu_model()}, Python {platform.python_version()})"
    )


async def _lines(stream):
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode().strip()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        url, token, task_id, after, n, m = sys.argv[2:8]
        trio.run(child, url, token, task_id, int(after), int(n), int(m))
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--subscribers", type=int, default=50)
        parser.add_argument("--events", type=int, default=2000)
        args = parser.parse_args()
        trio.run(main, args.subscribers, args.events)
