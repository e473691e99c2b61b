"""A throwaway Redis for the queue peers: Debian's ``redis-server`` on 127.0.0.1, a free port,
a temp dir; stopped (and the dir removed) on exit.

Persistence is off (no RDB, no AOF) as in SAQ's and arq's own benchmarks: Redis then keeps jobs
in memory only, which is the configuration those numbers are usually quoted for. agentd, by
contrast, commits every state change to SQLite; the table says so.

    python bench/redis_server.py     # start one, print its URL, stop on Enter
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

INSTALL_HINT = "apt-get install -y redis-server"


def ensure_redis_server() -> str:
    """The path of ``redis-server``; installs Debian's package when missing and we are root."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(f"redis-server is not installed; run: {INSTALL_HINT}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env, stdout=subprocess.DEVNULL
    )
    # The package may start a system instance on 6379 where an init system exists; ours uses
    # its own port and dir, so the two never meet.
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError(f"redis-server still missing after: {INSTALL_HINT}")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(timeout_s: float = 10.0) -> Iterator[str]:
    """Yield ``redis://127.0.0.1:PORT/0`` of a fresh server; terminate -> wait -> kill after."""
    binary = ensure_redis_server()
    with tempfile.TemporaryDirectory(prefix="agentd-bench-redis-") as tmp:
        port = free_port()
        proc = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--dir",
                tmp,
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
                "--logfile",
                str(Path(tmp) / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # Readiness is a PING answered, not a sleep; a dead process ends the wait at once.
            deadline = time.monotonic() + timeout_s
            while not _ping(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = Path(tmp, "redis.log")
                    raise RuntimeError(
                        "redis-server did not start:\n" + (log.read_text() if log.exists() else "")
                    )
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


if __name__ == "__main__":
    with redis_server() as url:
        print(url, flush=True)
        if sys.stdin.isatty():
            input("Enter stops it ")
