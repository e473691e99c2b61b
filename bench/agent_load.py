"""500 concurrent agent tasks against a model that takes 1 s per turn: event-loop lag and RSS.

    .venv/bin/python bench/agent_load.py [--tasks 500] [--turns 6] [--delay 1]
                                         [--provider lean|sdk-stream] [--steps] [--json]

The daemon runs in this process exactly as ``agentd serve --model anthropic`` would
(``Daemon`` with its own runner: the real ``AnthropicProvider`` over the SDK, the agent loop,
the tools, git), with ``ANTHROPIC_BASE_URL`` pointing at ``slow_fake_anthropic.py`` in another
process. Each task clones a small local bare repository, then talks ``--turns`` turns (each a
``view README.md`` tool call but the last), then delivers (nothing changed: no push). A Trio
task sleeps 10 ms in a loop and records how late it wakes: the loop lag. Reported overall and
for the conversation phase (every workspace ready, no task finished yet), when all ``--tasks``
are waiting on the model at once; RSS before, at its peak, and per task; the daemon's CPU per
model turn, and the Trio thread's share of it. ``--provider sdk-stream`` swaps in the SDK's own
stream helper, as the provider read responses before its lean SSE parser
(``tests/anthropic_sdk_reference.py``), for comparison.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import emit, loop_pinned, machine
from loop_steps import StepRecorder
from ws_common import (
    CLK_TCK,
    Child,
    Histogram,
    busy_seconds,
    children_cpu_seconds,
    cpu_seconds,
    now,
    raise_fd_limit,
    rss_kib,
)

from daemon.config import Settings
from daemon.gc_tuning import tune_gc_for_serving
from daemon.service import Daemon
from tests.fakes.git_http import make_bare_repo

TICK_S = 0.01


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """utime + stime of one thread: the Trio thread is the main one (``tid == pid``)."""
    raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def use_provider(name: str) -> None:
    """Make ``agentd``'s factory build ``name``: the lean parser (as shipped) or the SDK stream."""
    if name == "sdk-stream":
        import daemon.agent.anthropic_provider as provider_module
        from tests.anthropic_sdk_reference import SdkStreamProvider

        provider_module.AnthropicProvider = SdkStreamProvider  # type: ignore[misc]


async def run(
    tasks: int,
    turns: int,
    delay_s: float,
    timeout_s: float,
    provider: str = "lean",
    steps: StepRecorder | None = None,
) -> dict[str, Any]:
    raise_fd_limit(20_000)
    use_provider(provider)
    if steps is not None:
        trio.lowlevel.add_instrument(steps)
    tmp = Path(tempfile.mkdtemp(prefix="agentd-load-", dir="/tmp"))
    bare = make_bare_repo(tmp)
    fake = Child(
        [
            sys.executable,
            str(ROOT / "bench" / "slow_fake_anthropic.py"),
            "--delay",
            str(delay_s),
            "--turns",
            str(turns),
        ],
        stderr_path=tmp / "fake.err",
        cwd=ROOT,
    )
    try:
        url = fake.expect(timeout=60)["url"]
        settings = Settings(
            data_dir=tmp / "data",
            http="127.0.0.1:0",
            control_socket=tmp / "c.sock",
            concurrency=min(1024, tasks),
            grace_period_s=0.0,
            model="anthropic",
            anthropic_api_key="bench-key",
            anthropic_base_url=url,
            allow_local_remotes=True,
            min_free_disk_mb=0,
            max_attempts=1,
            log_level="WARNING",
            pin_loop_cpu=loop_pinned(),
        )
        daemon = Daemon(settings)
        lags: list[tuple[float, float]] = []
        marks: dict[str, float] = {}
        counts: collections.Counter[str] = collections.Counter()
        statuses: collections.Counter[str] = collections.Counter()
        rss: list[tuple[float, int]] = []
        pid = os.getpid()
        all_done = trio.Event()

        def on_commit(events) -> None:
            for event in events:
                counts[event.type] += 1
                if event.type == "workspace.ready" and counts[event.type] == tasks:
                    marks["all_ready"] = now()
                elif event.type == "task.finished":
                    statuses[event.data.get("status", "?")] += 1
                    marks.setdefault("first_finished", now())
                    if counts[event.type] == tasks:
                        marks["all_finished"] = now()
                        all_done.set()

        sampling = trio.CancelScope()

        async def sampler() -> None:
            with sampling:
                while True:
                    t = now()
                    await trio.sleep(TICK_S)
                    lags.append((t, now() - t - TICK_S))
                    if len(lags) % 10 == 0:
                        rss.append((now(), rss_kib(pid)))

        with trio.fail_after(timeout_s):
            async with trio.open_nursery() as nursery:
                await nursery.start(daemon.serve)
                tune_gc_for_serving()  # as `agentd serve` does once ready
                daemon.hub.add_global_listener(on_commit)
                user = await daemon.store.upsert_user("bench")
                # The SDK is loaded once the daemon serves (factory.BuiltInBackground): what it
                # costs is the daemon's, not the tasks'.
                await daemon.supervisor.runner.warm_up()
                tune_gc_for_serving()  # as `agentd serve` does once the provider is loaded
                await trio.sleep(0.5)
                rss_before = rss_kib(pid)
                cpu0, fake0, busy0 = cpu_seconds(pid), cpu_seconds(fake.pid), busy_seconds()
                trio0 = thread_cpu_seconds(pid, pid)
                writes0 = daemon.metrics.store_write_seconds.count
                kids0 = children_cpu_seconds(pid)
                nursery.start_soon(sampler)
                marks["start"] = now()
                # All at once, as if from 500 phones (the API handler does the same call).
                async with trio.open_nursery() as submits:
                    for i in range(tasks):
                        submits.start_soon(
                            partial(
                                daemon.supervisor.submit,
                                user_id=user.id,
                                repo_url=str(bare),
                                prompt=f"look {i}",
                            )
                        )
                marks["submitted"] = now()
                await all_done.wait()
                cpu, fake_cpu = cpu_seconds(pid) - cpu0, cpu_seconds(fake.pid) - fake0
                trio_cpu = thread_cpu_seconds(pid, pid) - trio0
                writes = daemon.metrics.store_write_seconds.count - writes0
                kids = children_cpu_seconds(pid) - kids0
                others = busy_seconds() - busy0 - cpu - fake_cpu - kids
                sampling.cancel()
                daemon.request_stop()
                daemon.request_stop()
    finally:
        fake.stop(10)

    def lag_summary(since: float, until: float) -> dict[str, Any]:
        hist = Histogram()
        for t, lag in lags:
            if since <= t < until:
                hist.add(lag)
        return hist.summary()

    def peak_rss(since: float, until: float) -> int:
        return max((kib for t, kib in rss if since <= t <= until), default=0)

    start, end = marks["start"], marks["all_finished"]
    conversation = (marks.get("all_ready", end), marks.get("first_finished", end))
    peak = peak_rss(start, end)
    return {
        "tasks": tasks,
        "turns": turns,
        "delay_s": delay_s,
        "provider": provider,
        "statuses": dict(statuses),
        "model_turns": counts["agent.usage"],
        "wall_s": round(end - start, 2),
        "submit_s": round(marks["submitted"] - start, 2),
        "all_workspaces_ready_s": round(marks["all_ready"] - start, 2) if "all_ready" in marks else None,
        "conversation_phase_s": round(conversation[1] - conversation[0], 2),
        "lag_overall": lag_summary(start, end),
        "lag_conversation": lag_summary(*conversation),
        "rss_before_mib": round(rss_before / 1024, 1),
        "rss_peak_mib": round(peak / 1024, 1),
        "rss_conversation_peak_mib": round(peak_rss(*conversation) / 1024, 1),
        "rss_per_task_kib": round((peak - rss_before) / tasks, 1),
        "daemon_cores": round(cpu / (end - start), 2),
        "daemon_cpu_ms_per_turn": round(cpu / max(1, counts["agent.usage"]) * 1000, 2),
        # Of it, the Trio thread's: the share that delays every other task (the loop lag).
        "trio_thread_cpu_ms_per_turn": round(trio_cpu / max(1, counts["agent.usage"]) * 1000, 2),
        # Store writes (each a round trip to the writer thread) per model turn, all included.
        "store_writes_per_turn": round(writes / max(1, counts["agent.usage"]), 2),
        "fake_api_cores": round(fake_cpu / (end - start), 2),
        "git_and_tools_cores": round(kids / (end - start), 2),
        # Everything else busy on the machine meanwhile (a shared VM: other people's work).
        "other_cores": round(max(0.0, others) / (end - start), 2),
        **(
            {
                "loop_steps": steps.summary(),
                "loop_steps_conversation": steps.summary(since=conversation[0], until=conversation[1]),
            }
            if steps is not None
            else {}
        ),
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds per model turn")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument(
        "--provider",
        choices=("lean", "sdk-stream"),
        default="lean",
        help="how responses are read: agentd's SSE parser, or the SDK's stream helper",
    )
    parser.add_argument(
        "--steps", action="store_true", help="also say what the loop's time went to (bench/loop_steps.py)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    steps = StepRecorder() if args.steps else None
    emit(trio.run(run, args.tasks, args.turns, args.delay, args.timeout, args.provider, steps), args.json)


if __name__ == "__main__":
    main()
