"""Task states and the one function that decides which changes are allowed (design §4)."""

from __future__ import annotations

import enum

from .errors import InvalidTransition


class TaskStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING_RETRY = "waiting_retry"
    WAITING_INPUT = "waiting_input"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED})

_ALLOWED: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.QUEUED: frozenset({TaskStatus.RUNNING, TaskStatus.CANCELLED, TaskStatus.FAILED}),
    TaskStatus.RUNNING: frozenset(
        {
            TaskStatus.SUCCEEDED,
            TaskStatus.FAILED,
            TaskStatus.CANCELLED,
            TaskStatus.WAITING_RETRY,
            TaskStatus.WAITING_INPUT,
            # Put back by a drain or by crash recovery; resumed at the next start.
            TaskStatus.QUEUED,
        }
    ),
    TaskStatus.WAITING_RETRY: frozenset({TaskStatus.QUEUED, TaskStatus.CANCELLED}),
    TaskStatus.WAITING_INPUT: frozenset({TaskStatus.QUEUED, TaskStatus.CANCELLED}),
    # A finished task goes on when an operator retries it or the user sends a follow-up.
    TaskStatus.SUCCEEDED: frozenset({TaskStatus.QUEUED}),
    TaskStatus.FAILED: frozenset({TaskStatus.QUEUED}),
    TaskStatus.CANCELLED: frozenset({TaskStatus.QUEUED}),
}


def check_transition(current: TaskStatus, target: TaskStatus) -> None:
    """Raise ``InvalidTransition`` unless a task may go from ``current`` to ``target``."""
    if target not in _ALLOWED[current]:
        raise InvalidTransition(f"a {current.value} task cannot become {target.value}")


# Reasons a status change gives that other modules read back (the agent's interrupted-call note
# tells the model how its previous attempt ended): written and read through these names only.
REASON_TAKEN_OVER = "taken over from node"  # followed by the lost node's id
REASON_LEASE_LOST = "this node lost its lease"
REASON_MAX_DURATION = "max_duration_exceeded"
