"""What an attempt's end writes: its outcome mapped to a status change (no I/O).

The supervisor records the change with the attempt's claim, then acts on what the change
implies (a retry timer to set, a user message to pick up); which change it is, is decided
here alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import PermanentError, TransientError
from ..states import TaskStatus
from ..store import NewEvent
from .retry import Backoff
from .runner import RunResult


@dataclass(frozen=True)
class Outcome:
    """A status change to record: ``target`` with ``store.transition``'s keyword arguments."""

    target: TaskStatus
    change: dict[str, Any] = field(default_factory=dict)


def plan_outcome(
    outcome: RunResult | BaseException | None,
    why_cancelled: str | None,
    attempt: int,
    *,
    backoff: Backoff,
    now: float,
    max_duration_s: float,
) -> Outcome:
    """``outcome``: the runner's result or error, or None when the attempt was cancelled
    (``why_cancelled``: "shutdown", "cancel", or None for its max duration)."""
    if outcome is None:
        if why_cancelled == "shutdown":
            return Outcome(TaskStatus.QUEUED, {"reason": "daemon shutdown", "attempt_delta": -1})
        if why_cancelled == "cancel":
            return Outcome(TaskStatus.CANCELLED, {"reason": "cancelled by request"})
        return Outcome(TaskStatus.FAILED, {"reason": "max_duration_exceeded",
                                           "error": f"the attempt ran longer than {max_duration_s:g} s"})
    if isinstance(outcome, RunResult):
        waiting = outcome.status == "waiting_input"
        return Outcome(TaskStatus.WAITING_INPUT if waiting else TaskStatus.SUCCEEDED,
                       {"reason": outcome.reason})
    if isinstance(outcome, TransientError):
        if backoff.exhausted(attempt):
            return Outcome(TaskStatus.FAILED, {
                "reason": "max_attempts", "error": f"gave up after {attempt} attempts: {outcome.message}"})
        delay = backoff.delay(attempt, outcome.retry_after)
        return Outcome(TaskStatus.WAITING_RETRY, {
            "reason": outcome.message, "due_at": now + delay,
            "events_before": [NewEvent("task.retry_scheduled", {
                "attempt": attempt, "delay_s": round(delay, 3), "reason": outcome.message})],
        })
    assert isinstance(outcome, PermanentError)
    return Outcome(TaskStatus.FAILED, {"reason": outcome.code, "error": outcome.message})
