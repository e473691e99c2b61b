"""Where a busy Trio loop's time goes: its scheduling batches, and its long task steps by place.

A Trio instrument (diagnostic; ``agent_load.py --steps`` uses it). Trio runs every task that was
ready when a batch began before it looks at its timers again, so a timer is late by about the
length of the batch it falls in: the batches say what the loop lag is made of. A task step
that takes long (``LONG_S``) is counted under the innermost ``daemon/`` frame it stopped at:
what ran just before that await. A step's time is wall time: it includes waiting for the GIL
that another thread of the process holds. Times are CLOCK_MONOTONIC (``time.perf_counter`` on
Linux), so ``summary`` can be asked about a window of the run.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import trio

LONG_S = 0.002
BATCH_S = 0.010


class StepRecorder(trio.abc.Instrument):
    def __init__(self, package: str = "/daemon/") -> None:
        self._package = package
        self._step_began = 0.0
        self._batch_began: float | None = None
        self._batch_tasks = 0
        self.batches: list[tuple[float, float, int]] = []  # (began, seconds, tasks stepped)
        # Long steps by place: (began, seconds), in order.
        self.long: collections.defaultdict[str, list[tuple[float, float]]] = collections.defaultdict(list)

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._step_began = time.perf_counter()
        if self._batch_began is None:
            self._batch_began, self._batch_tasks = self._step_began, 0
        self._batch_tasks += 1

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        took = time.perf_counter() - self._step_began
        if took >= LONG_S:
            place = f"{task.name.rsplit('.', 1)[-1]} @ {self._stopped_at(task)}"
            self.long[place].append((self._step_began, took))

    def before_io_wait(self, timeout: float) -> None:
        if self._batch_began is not None:
            began = self._batch_began
            self.batches.append((began, time.perf_counter() - began, self._batch_tasks))
            self._batch_began = None

    def _stopped_at(self, task: trio.lowlevel.Task) -> str:
        place, awaiting = "?", task.coro
        while awaiting is not None:
            frame = (
                getattr(awaiting, "cr_frame", None)
                or getattr(awaiting, "ag_frame", None)
                or getattr(awaiting, "gi_frame", None)
            )
            if frame is not None and self._package in frame.f_code.co_filename:
                name = frame.f_code.co_filename
                place = f"{name[name.rindex(self._package) + 1 :]}:{frame.f_lineno}"
            awaiting = (
                getattr(awaiting, "cr_await", None)
                or getattr(awaiting, "ag_await", None)
                or getattr(awaiting, "gi_yieldfrom", None)
            )
        return place

    def summary(
        self, top: int = 8, since: float = float("-inf"), until: float = float("inf")
    ) -> dict[str, Any]:
        """Batches and long steps that began in [since, until)."""
        long_batches = [(s, n) for began, s, n in self.batches if s >= BATCH_S and since <= began < until]
        long_steps = {
            place: [took for began, took in steps if since <= began < until]
            for place, steps in self.long.items()
        }
        ranked = sorted(
            ((len(took), sum(took), place) for place, took in long_steps.items() if took), reverse=True
        )[:top]
        return {
            "batches": sum(1 for began, _, _ in self.batches if since <= began < until),
            "batches_over_10ms": len(long_batches),
            "seconds_in_batches_over_10ms": round(sum(s for s, _ in long_batches), 2),
            "median_tasks_in_batches_over_10ms": (
                sorted(n for _, n in long_batches)[len(long_batches) // 2] if long_batches else 0
            ),
            "long_steps": [
                {"place": place, "steps": count, "ms": round(seconds * 1000)}
                for count, seconds, place in ranked
            ],
        }
