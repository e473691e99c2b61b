"""Daemon CPU per emitted event, with no client connected: what scenario (a)'s emitters cost.

The real daemon (``Daemon.serve``: store, hub, metrics, supervisor, HTTP fan-out) with the
WebSocket bench's parked runner (``ws_agentd_server.EmitterRunner``); every event goes through
``RunContext.emit`` -> ``store.append_events`` -> group commit -> the hub and its listeners.

- ``paced``: the WebSocket bench's emission (``ws_agentd_server.emit``: T tasks at R events/s
  each, every event stamped and timed); CPU (all threads) over the window / events emitted.
  The same loop is run first with an emit that does nothing: ``emit_cpu_us_per_event`` is the
  difference, the emit path's own share. ``writes_per_commit`` says which regime the run was
  in (the cost per event falls steeply as commits grow), ``us_per_event_by_thread`` where the
  CPU went.
- ``flat``: the same tasks emitting back to back, C events each: the emit path alone, in big
  commits (no timers, no stamps).
- ``single``: one task emitting back to back: a commit per event (the latency-bound case).

Not part of ``run_all.py``: a diagnostic, about 20 s at full size.

    .venv/bin/python bench/emit_cost.py [--tasks 1000] [--rate 10] [--seconds 6] [--json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import emit as print_result, machine
from event_appends import BatchCounter
from ws_agentd_server import EmitterRunner, emit as paced_emit
from ws_common import now

from daemon.config import Settings
from daemon.service import Daemon


async def measure(
    tasks: int, rate: float, seconds: float, flat_events: int, single_events: int, profile: str | None
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="agentd-emitcost-", dir="/tmp"))
    settings = Settings(
        data_dir=tmp / "data",
        http="127.0.0.1:0",
        control_socket=tmp / "c.sock",
        concurrency=max(4, tasks),
        grace_period_s=0.0,
        log_level="WARNING",
    )
    runner = EmitterRunner(tasks)
    daemon = Daemon(settings, runner=runner)
    out: dict[str, Any] = {"tasks": tasks}
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve)
        user = await daemon.store.upsert_user("bench")
        ids = [
            (await daemon.supervisor.submit(user_id=user.id, repo_url="file:///b", prompt="p"))[0].id
            for _ in range(tasks)
        ]
        with trio.fail_after(60):
            await runner.all_running.wait()
        contexts = [runner.contexts[task_id] for task_id in ids]

        async def flat(ctx: Any) -> None:
            for k in range(flat_events):
                await ctx.emit("agent.text", {"text": f"line {k}", "t": 0.0})

        async def run_flat() -> None:
            async with trio.open_nursery() as inner:
                for ctx in contexts:
                    inner.start_soon(flat, ctx)

        await run_flat()  # warm-up: caches, the WAL's first pages
        profiler = _start_profiler(profile == "flat")
        cpu0, t0 = time.process_time(), time.perf_counter()
        await run_flat()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        _stop_profiler(profiler)
        n = tasks * flat_events
        out["flat"] = {
            "events": n,
            "events_per_s": round(n / wall),
            "cpu_us_per_event": round(cpu / n * 1e6, 1),
            "cores": round(cpu / wall, 2),
        }

        # One emitter alone: every event is a commit of its own (the latency-bound case).
        one = contexts[0]
        cpu0, t0 = time.process_time(), time.perf_counter()
        for k in range(single_events):
            await one.emit("agent.text", {"text": f"line {k}", "t": 0.0})
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        out["single"] = {
            "events": single_events,
            "round_trip_us": round(wall / single_events * 1e6, 1),
            "cpu_us_per_event": round(cpu / single_events * 1e6, 1),
        }

        if seconds > 0:
            # The emitting loop's own cost (timers, stamps) with an emit that does nothing...
            idle = EmitterRunner(0)
            idle.contexts = {task_id: _NoEmit() for task_id in ids}
            loop = await paced(idle, ids, rate, seconds, None)
            # ... and with the real one.
            out["paced"] = await paced(runner, ids, rate, seconds, profile)
            out["paced"]["loop_cpu_us_per_event"] = loop["cpu_us_per_event"]
            out["paced"]["emit_cpu_us_per_event"] = round(
                out["paced"]["cpu_us_per_event"] - loop["cpu_us_per_event"], 1
            )
        runner.finish.set()
        daemon.request_stop()
        daemon.request_stop()
    return out


class _NoEmit:
    async def emit(self, type: str, data: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()


async def paced(
    runner: Any, ids: list[str], rate: float, seconds: float, profile: str | None
) -> dict[str, Any]:
    """``ws_agentd_server.emit`` over ``ids``; what it cost over the window after a warm-up."""
    warmup = min(2.0, seconds / 3)
    start = now() + 0.2
    w0, w1 = start + warmup, start + seconds
    at: dict[str, Any] = {}

    async def sample() -> None:
        await trio.sleep(max(0.0, w0 - now()))
        at["cpu0"], at["threads0"], at["written0"] = time.process_time(), thread_cpu(), written_bytes()
        await trio.sleep(max(0.0, w1 - now()))
        at["cpu1"], at["threads1"], at["written1"] = time.process_time(), thread_cpu(), written_bytes()

    profiler = _start_profiler(profile == "paced")
    with BatchCounter() as counter:
        async with trio.open_nursery() as inner:
            inner.start_soon(sample)
            result = await paced_emit(runner, ids, start, seconds, rate, (w0, w1))
    _stop_profiler(profiler)
    events = max(1, result["in_window"])
    cpu = at["cpu1"] - at["cpu0"]
    return {
        "rate": rate,
        "window_s": round(w1 - w0, 2),
        "emitted_in_window": result["in_window"],
        "on_time_share": round(result["in_window"] / (len(ids) * rate * (w1 - w0)), 3),
        "writes_per_commit": round(counter.jobs / max(1, counter.batches), 1),
        "cpu_us_per_event": round(cpu / events * 1e6, 1),
        "cores": round(cpu / (w1 - w0), 2),
        "late": result["late"],
        "bytes_written_per_event": round((at["written1"] - at["written0"]) / events),
        "us_per_event_by_thread": {
            name: round((spent - at["threads0"].get(name, 0.0)) / events * 1e6, 1)
            for name, spent in at["threads1"].items()
            if name != "trio-worker"
        },
    }


def written_bytes() -> int:
    """Bytes this process handed to write(2) and friends so far (the WAL, checkpoints)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def thread_cpu() -> dict[str, float]:
    """CPU seconds (utime + stime) of each thread of this process, by Python thread name."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            raw = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        name = names.get(int(tid), "other")
        name = "trio-worker" if name.startswith("Trio thread") else name
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _start_profiler(wanted: bool) -> Any:
    if not wanted:
        return None
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    return profiler


def _stop_profiler(profiler: Any) -> None:
    if profiler is None:
        return
    import pstats

    profiler.disable()
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(35)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=6.0, help="paced run (0: skip)")
    parser.add_argument("--flat-events", type=int, default=20, help="per task, back to back")
    parser.add_argument("--single-events", type=int, default=3000, help="one task alone, back to back")
    parser.add_argument(
        "--cprofile", choices=["flat", "paced"], help="cProfile the Trio thread over one run (to stderr)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    result = trio.run(
        measure, args.tasks, args.rate, args.seconds, args.flat_events, args.single_events, args.cprofile
    )
    print_result({"system": "agentd", "machine": machine(), **result}, args.json)


if __name__ == "__main__":
    main()
