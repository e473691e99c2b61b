"""What every benchmark here shares: percentiles, the machine's description, JSON output.

The agentd-side benchmarks (``queue_throughput``, ``durable_steps``, ``event_appends``,
``restart_ready``) each run in a fresh process started by ``run_all.py``, and print one JSON
object as their last line with ``--json``; so do the peers under ``bench/peers/``. Nothing here
imports the daemon at import time (only ``loop_pinned``, agentd's side, does when called), so
the peers' venv can use it too.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (the same rule as ``queue_throughput.percentile``)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_summary(delays_s: list[float]) -> dict[str, float]:
    ms = [d * 1000 for d in delays_s]
    return {
        "p50_ms": round(percentile(ms, 0.50), 3),
        "p99_ms": round(percentile(ms, 0.99), 3),
        "max_ms": round(max(ms), 3),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def loop_pinned() -> bool:
    """Pin the event loop's CPU as ``agentd serve`` would here (``daemon/cpu_pin.py``): its
    setting, read from ``AGENTD_PIN_LOOP_CPU`` by the daemon's own parser (``=false``: without).
    For agentd's side only: it imports the daemon."""
    from daemon.config import load_settings

    name = "AGENTD_PIN_LOOP_CPU"
    return load_settings(env={name: os.environ[name]} if name in os.environ else {}).pin_loop_cpu


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "kernel": f"{platform.system()} {platform.release()}",
    }


def host_speed(additions: int = 3_000_000, tries: int = 3) -> float:
    """Seconds this host takes for a fixed pure-Python loop (the best of ``tries``; lower is
    faster): a shared VM's speed changes from hour to hour, and every figure with it."""
    best = float("inf")
    for _ in range(tries):
        began = time.perf_counter()
        total = 0
        for i in range(additions):
            total += i
        best = min(best, time.perf_counter() - began)
    return best


def emit(result: dict[str, Any], as_json: bool) -> None:
    """Print the result: one JSON line (for ``run_all``) or indented (for a person)."""
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    sys.stdout.flush()
