"""What an attempt's end writes: its outcome mapped to a status change (no I/O).

The supervisor records the change (with the attempt's claim), then acts on what it implies
(a retry timer to set, a user message to pick up); which change it is, is decided here alone.

Attempts count failures only: ``task.attempt`` is the number of attempts that failed, plus the
one running. An attempt that ends in a question (``waiting_input``) or in an orderly shutdown
is put back (``attempt_delta=-1``), so answering questions, following up and restarting the
daemon in order never bring a task nearer to ``max_attempts``. An attempt that died with its
node (a crash, a lost lease) counts (``recovery``): the daemon cannot tell whether the task
brought it down, and a task that does so every time must end.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PermanentError, TransientError
from ..states import REASON_MAX_DURATION, TaskStatus
from ..store import Claim, NewEvent, Task, Transition
from .attempts import CancelCause
from .retry import Backoff
from .runner import RunResult, RunStatus

_AFTER_RUN = {RunStatus.SUCCEEDED: TaskStatus.SUCCEEDED, RunStatus.WAITING_INPUT: TaskStatus.WAITING_INPUT}


@dataclass(frozen=True)
class Outcome:
    """The change to record, and for a retry its delay in seconds (its ``due_at`` minus now)."""

    change: Transition
    delay_s: float | None = None


def plan_outcome(
    task: Task,
    outcome: RunResult | BaseException | None,
    why_cancelled: CancelCause | None,
    *,
    backoff: Backoff,
    now: float,
    max_duration_s: float,
) -> Outcome:
    """The change that ends ``task``'s attempt (the task as the attempt started it).

    ``outcome``: the runner's result or error, or None when the attempt was cancelled
    (``why_cancelled``: a shutdown, a cancel, or None for its max duration). The change holds
    the attempt's claim: it is refused once the attempt no longer holds the task.
    """
    held = Claim.of(task)
    if outcome is None:
        if why_cancelled is CancelCause.SHUTDOWN:
            return Outcome(
                Transition(task.id, TaskStatus.QUEUED, reason="daemon shutdown", attempt_delta=-1, claim=held)
            )
        if why_cancelled is CancelCause.CANCEL:
            return Outcome(
                Transition(task.id, TaskStatus.CANCELLED, reason="cancelled by request", claim=held)
            )
        return Outcome(
            Transition(
                task.id,
                TaskStatus.FAILED,
                reason=REASON_MAX_DURATION,
                error=f"the attempt ran longer than {max_duration_s:g} s",
                claim=held,
            )
        )
    if isinstance(outcome, RunResult):
        # A question is no failure: the attempt is given back, the answer starts the same one again.
        asked = -1 if outcome.status == RunStatus.WAITING_INPUT else 0
        return Outcome(
            Transition(
                task.id, _AFTER_RUN[outcome.status], reason=outcome.reason, attempt_delta=asked, claim=held
            )
        )
    if isinstance(outcome, TransientError):
        attempt = task.attempt
        if backoff.exhausted(attempt):
            return Outcome(
                Transition(
                    task.id,
                    TaskStatus.FAILED,
                    reason="max_attempts",
                    claim=held,
                    error=f"gave up after {attempt} attempts: {outcome.message}",
                )
            )
        delay = backoff.delay(attempt, outcome.retry_after)
        scheduled = NewEvent(
            "task.retry_scheduled",
            {"attempt": attempt, "delay_s": round(delay, 3), "reason": outcome.message},
        )
        return Outcome(
            Transition(
                task.id,
                TaskStatus.WAITING_RETRY,
                reason=outcome.message,
                due_at=now + delay,
                events_before=(scheduled,),
                claim=held,
            ),
            delay,
        )
    assert isinstance(outcome, PermanentError)
    return Outcome(
        Transition(task.id, TaskStatus.FAILED, reason=outcome.code, error=outcome.message, claim=held)
    )
