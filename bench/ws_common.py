"""What the WebSocket benchmarks share: the clock, /proc readings, histograms, child processes.

Stdlib only: the agentd server (project venv), the ``websockets`` peer and the load-generating
clients (``bench/.venv-peers``) all import it.

Every event carries its send time in ``data["t"]``, read from ``CLOCK_MONOTONIC`` just before
the server hands it on (agentd: before ``store.append_events``; the peer: before
``broadcast``). Server and clients run on one machine, so a client's ``now() - t`` is the
event-to-receipt latency.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
BUCKET_S = 0.0001  # latency histogram resolution: 0.1 ms


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def sleep_until(when: float) -> None:
    delay = when - now()
    if delay > 0:
        time.sleep(delay)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from ``/proc/<pid>/stat``."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu_seconds(pid: int) -> float:
    """cutime + cstime: CPU of the process's children that it has waited for (git, tools)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[13]) + int(fields[14])) / CLK_TCK


def busy_seconds() -> float:
    """CPU time the whole machine spent busy (all cores), from ``/proc/stat``.

    Minus the processes under measurement, it says how much other work (other people's jobs on
    a shared machine) competed with the run.
    """
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / CLK_TCK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def raise_fd_limit(want: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``want`` (up to the hard limit); return it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


class Histogram:
    """Latencies in 0.1 ms buckets: small to ship as JSON, exact enough for p50/p99."""

    def __init__(self, buckets: dict[int, int] | None = None) -> None:
        self.buckets: dict[int, int] = dict(buckets or {})
        self.count = sum(self.buckets.values())

    def add(self, seconds: float) -> None:
        key = int(seconds / BUCKET_S) if seconds > 0 else 0
        self.buckets[key] = self.buckets.get(key, 0) + 1
        self.count += 1

    def merge(self, other: Histogram) -> None:
        for key, n in other.buckets.items():
            self.buckets[key] = self.buckets.get(key, 0) + n
        self.count += other.count

    def percentile_ms(self, q: float) -> float | None:
        """Nearest rank, reported at the bucket's upper edge (so never optimistic)."""
        if not self.count:
            return None
        rank = min(self.count - 1, int(q * self.count))
        seen = 0
        for key in sorted(self.buckets):
            seen += self.buckets[key]
            if seen > rank:
                return round((key + 1) * BUCKET_S * 1000, 1)
        raise AssertionError("unreachable")

    def max_ms(self) -> float | None:
        return round((max(self.buckets) + 1) * BUCKET_S * 1000, 1) if self.buckets else None

    def to_json(self) -> dict[str, int]:
        return {str(k): v for k, v in self.buckets.items()}

    @classmethod
    def from_json(cls, data: dict[str, int]) -> Histogram:
        return cls({int(k): v for k, v in data.items()})

    def summary(self) -> dict[str, Any]:
        return {
            "p50_ms": self.percentile_ms(0.50),
            "p99_ms": self.percentile_ms(0.99),
            "max_ms": self.max_ms(),
            "samples": self.count,
        }


class Child:
    """A child process spoken to in JSON lines over stdin/stdout; stderr goes to a file."""

    def __init__(
        self,
        argv: list[str],
        *,
        stderr_path: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=cwd,
            env=env,
            text=True,
            bufsize=1,
        )
        self.pid = self.proc.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def expect(self, timeout: float) -> dict[str, Any]:
        """The next JSON line; raise with the child's stderr if it ends or times out first."""
        deadline = now() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - now()))
            except queue.Empty:
                raise RuntimeError(
                    f"pid {self.pid}: no answer in {timeout} s\n{self.stderr_tail()}"
                ) from None
            if line is None:
                self.proc.wait(5)
                raise RuntimeError(f"pid {self.pid} exited ({self.proc.returncode})\n{self.stderr_tail()}")
            if line.startswith("{"):
                return json.loads(line)

    def stderr_tail(self, n: int = 3000) -> str:
        self._stderr.flush()
        try:
            return self.stderr_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Close stdin (the child's cue to exit), then terminate, then kill."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
