"""``/healthz`` latency while the HTTP port is abused: 2,000 slow connections and a ping flood.

Three processes, so each side's CPU is its own: the daemon (``Daemon.serve`` as ``agentd
serve`` runs it, default caps and timeouts, no model), the abuser, and this one, which
asks ``GET /healthz`` on a fresh connection every 20 ms (500 times: about 11 s, two rounds
of cuts and reconnects) and times the whole answer. The abuser
holds ``--slow`` connections from 127.0.0.2... (250 per address, under the 256 cap): half
silent, half trickling a request head a byte a second, each reconnecting as soon as the daemon
cuts it (at its 5 s keep-alive deadline); and ``--flooders`` WebSockets, each writing 64 KiB of
pings at a time as fast as the daemon reads them, never reading the pongs. Printed: p50/p99/max
of ``/healthz`` before the abuse and during it, and what the abuse did meanwhile.

    .venv/bin/python bench/http_abuse.py [--slow 2000] [--flooders 4] [--probes 500] [--json]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import ROOT, emit, latency_summary, machine

PER_ADDRESS = 250
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


# -- the daemon -------------------------------------------------------------------------------


def serve() -> None:
    import trio

    from daemon.config import Settings
    from daemon.service import Daemon
    from daemon.supervisor.runner import NoopRunner
    from daemon.tokens import hash_token, new_token

    async def main() -> None:
        tmp = Path(tempfile.mkdtemp(prefix="agentd-bench-", dir="/tmp"))
        settings = Settings(
            data_dir=tmp / "data",
            http="127.0.0.1:0",
            control_socket=tmp / "c.sock",
            grace_period_s=0.0,
            log_level="WARNING",
        )
        daemon = Daemon(settings, runner=NoopRunner())
        async with trio.open_nursery() as nursery:
            (url,) = await nursery.start(daemon.serve)
            user = await daemon.store.upsert_user("bench")
            token = new_token()
            await daemon.store.add_token(user.id, hash_token(token))
            print(json.dumps({"url": url, "token": token}), flush=True)
            await trio.to_thread.run_sync(sys.stdin.read)  # until the bench closes our stdin
            daemon.request_stop()
            daemon.request_stop()

    trio.run(main)


# -- the abuser -------------------------------------------------------------------------------


def _add(stats: dict[str, int], delta: int) -> None:
    stats["slow_open"] += delta


async def hold_slowly(connect: Any, k: int, stop: Any, *, on_change: Any, silent_s: float = 60.0) -> None:
    """Hold a connection open as long as the server lets it: silent (even ``k``) or trickling a
    request head a byte a second (odd ``k``); when the server cuts it, connect again, as an
    attacker would (after a 503, a tenth of a second later). Until the ``stop`` event.
    ``on_change`` is told +1 when a connection is held, -1 when it is gone."""
    import trio

    while not stop.is_set():
        try:
            stream = await connect()
        except OSError:
            await trio.sleep(0.1)
            continue
        on_change(1)
        answer = b""
        async with stream:
            try:
                if k % 2:
                    await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                while not stop.is_set():
                    with trio.move_on_after(1.0 if k % 2 else silent_s):
                        answer = await stream.receive_some(4096)
                        if not answer or answer.startswith(b"HTTP/1.1 503"):
                            break  # cut (or refused) by the server
                    if k % 2:
                        await stream.send_all(b"x")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        on_change(-1)
        if answer.startswith(b"HTTP/1.1 503"):
            await trio.sleep(0.1)


def abuse(url: str, token: str, slow: int, flooders: int) -> None:
    import trio
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Ping, Request

    host, port = url.removeprefix("http://").rsplit(":", 1)
    stats = {"slow_connects": 0, "slow_open": 0, "slow_open_min": slow, "ping_bytes": 0}

    async def connect(source: str) -> trio.SocketStream:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        await sock.bind((source, 0))
        await sock.connect((host, int(port)))
        return trio.SocketStream(sock)

    async def slow_client(source: str, k: int, stop: trio.Event) -> None:
        async def counted() -> trio.SocketStream:
            stream = await connect(source)
            stats["slow_connects"] += 1
            return stream

        await hold_slowly(counted, k, stop, on_change=lambda d: _add(stats, d))

    async def flood(stop: trio.Event) -> None:
        stream = await connect("127.0.0.1")
        ws = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(
            ws.send(
                Request(
                    host="localhost",
                    target="/ws",
                    extra_headers=[(b"authorization", f"Bearer {token}".encode())],
                )
            )
        )
        while not any(isinstance(e, AcceptConnection) for e in ws.events()):
            ws.receive_data(await stream.receive_some(65536))
        burst = ws.send(Ping(b"")) * (65536 // 6)
        async with stream:
            while not stop.is_set():
                await stream.send_all(burst)
                stats["ping_bytes"] += len(burst)

    async def watch(stop: trio.Event) -> None:
        while not stop.is_set():
            stats["slow_open_min"] = min(stats["slow_open_min"], stats["slow_open"])
            await trio.sleep(0.05)

    async def main() -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            sources = [f"127.0.0.{2 + i}" for i in range((slow + PER_ADDRESS - 1) // PER_ADDRESS)]
            for n, source in enumerate(sources):
                for k in range(min(PER_ADDRESS, slow - n * PER_ADDRESS)):
                    nursery.start_soon(slow_client, source, k, stop)
                # Counters the clients bump, polled while they start (no event per client).
                while stats["slow_open"] < min(slow, (n + 1) * PER_ADDRESS):  # noqa: ASYNC110
                    await trio.sleep(0.01)
            for _ in range(flooders):
                nursery.start_soon(flood, stop)
            while flooders and stats["ping_bytes"] == 0:  # noqa: ASYNC110
                await trio.sleep(0.01)
            stats["slow_open_min"] = stats["slow_open"]
            nursery.start_soon(watch, stop)
            print(json.dumps({"ready": True}), flush=True)
            await trio.to_thread.run_sync(sys.stdin.read)
            stop.set()
            print(json.dumps(stats), flush=True)
            nursery.cancel_scope.cancel()

    trio.run(main)


# -- the bench --------------------------------------------------------------------------------


def child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )


def probe(url: str, count: int, every_s: float = 0.02) -> list[float]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    latencies = []
    for _ in range(count):
        began = time.perf_counter()
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(HEALTHZ)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        latencies.append(time.perf_counter() - began)
        if not answer.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"/healthz answered {answer[:80]!r}")
        time.sleep(every_s)
    return latencies


def bench(slow: int, flooders: int, probes: int) -> dict[str, Any]:
    server = child("--role", "server")
    try:
        info = json.loads(server.stdout.readline())
        baseline = probe(info["url"], probes)
        abuser = child(
            "--role",
            "abuse",
            "--url",
            info["url"],
            "--token",
            info["token"],
            "--slow",
            str(slow),
            "--flooders",
            str(flooders),
        )
        try:
            assert json.loads(abuser.stdout.readline()) == {"ready": True}
            abused = probe(info["url"], probes)
            abuser.stdin.close()
            done = json.loads(abuser.stdout.readline())
        finally:
            abuser.kill()
            abuser.wait()
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    return {
        "machine": machine(),
        "slow_connections": slow,
        "ping_flooders": flooders,
        "probes": probes,
        "healthz_idle": latency_summary(baseline),
        "healthz_under_abuse": latency_summary(abused),
        "abuse": done,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["bench", "server", "abuse"], default="bench")
    parser.add_argument("--url")
    parser.add_argument("--token")
    parser.add_argument("--slow", type=int, default=2000)
    parser.add_argument("--flooders", type=int, default=4)
    parser.add_argument("--probes", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * args.slow + 1024
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    if args.role == "server":
        serve()
    elif args.role == "abuse":
        abuse(args.url, args.token, args.slow, args.flooders)
    else:
        emit(bench(args.slow, args.flooders, args.probes), args.json)


if __name__ == "__main__":
    main()
