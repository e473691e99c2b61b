"""What a task's creation and status changes write, decided once for every backend (no I/O).

A backend reads the task row (locked where several writers exist), asks ``plan_transition``
for the changed task and the events to append, then writes both in its own SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from ..errors import InvalidTransition
from ..states import TaskStatus, check_transition
from .models import NewEvent, NewTask, Task


class Claim(NamedTuple):
    """The attempt that asks for a change: the node running it and its attempt number."""

    node_id: str | None
    attempt: int

    @classmethod
    def of(cls, task: Task) -> Claim:
        """The claim of ``task``'s current (or latest) attempt, as the store has it."""
        return cls(task.node_id, task.attempt)


@dataclass(frozen=True)
class Transition:
    """One status change of one task, as ``Store.transition`` validates and applies it.

    ``expect``: only from this status. ``reason``, ``error``: recorded on the task and in its
    ``task.status`` (and, to a final status, ``task.finished``) events. ``due_at``: when a
    waiting retry is due (wall clock). ``attempt_delta``: added to the task's attempt count (1
    to start an attempt, -1 to put back one that is no failure: a question, a shutdown).
    ``events_before``: appended just before the status event, in the same transaction.
    ``node_id``: the node starting an attempt (``target`` running). ``claim``: the attempt
    recording this change; refused unless that attempt still holds the task (a node whose lease
    ran out must not overwrite the outcome of the node that took the task over).
    """

    task_id: str
    target: TaskStatus
    expect: TaskStatus | None = None
    reason: str | None = None
    error: str | None = None
    due_at: float | None = None
    attempt_delta: int = 0
    events_before: tuple[NewEvent, ...] = ()
    node_id: str | None = None
    claim: Claim | None = None


def created_events(new: NewTask) -> list[NewEvent]:
    """The first events of a task: ``task.created``, then its ``queued`` status."""
    return [
        NewEvent(
            "task.created",
            {
                "repo_url": new.repo_url,
                "prompt": new.prompt,
                "base_branch": new.base_branch,
                "user_id": new.user_id,
            },
        ),
        NewEvent("task.status", {"status": TaskStatus.QUEUED.value, "attempt": 0, "user_id": new.user_id}),
    ]


def plan_transition(task: Task, change: Transition, *, now: float) -> tuple[Task, list[NewEvent]]:
    """The task after ``change`` (``last_seq`` counting the new events) and the events to append.

    ``task`` is the row as read (locked where several writers exist) in the change's
    transaction. Raises ``InvalidTransition`` when the task is not in ``change.expect``, the
    claim is no longer held, or the state machine forbids the change.
    """
    target, claim, node_id = change.target, change.claim, change.node_id
    if change.expect is not None and task.status != change.expect:
        raise InvalidTransition(f"task {task.id} is {task.status.value}, not {change.expect.value}")
    if claim is not None and (task.status is not TaskStatus.RUNNING or Claim.of(task) != claim):
        raise InvalidTransition(
            f"task {task.id}: attempt {claim.attempt} on node {claim.node_id} no longer holds it "
            f"({task.status.value}, attempt {task.attempt} on node {task.node_id})"
        )
    check_transition(task.status, target)
    running = target is TaskStatus.RUNNING
    attempt = task.attempt + change.attempt_delta
    # The owner rides on every status event: the WebSocket fan-out routes them by it.
    status_data: dict[str, Any] = {"status": target.value, "attempt": attempt, "user_id": task.user_id}
    if running and node_id is not None:
        status_data["node"] = node_id
    if change.reason:
        status_data["reason"] = change.reason
    events = [*change.events_before, NewEvent("task.status", status_data)]
    if target.is_terminal:
        finished: dict[str, Any] = {"status": target.value, "user_id": task.user_id}
        if change.error or change.reason:
            finished["error"] = change.error or change.reason
        events.append(NewEvent("task.finished", finished))
    changed = task.evolve(
        status=target,
        attempt=attempt,
        reason=change.reason,
        error=change.error,
        due_at=change.due_at,
        updated_at=now,
        started_at=now if running else task.started_at,
        finished_at=now if target.is_terminal else None,
        node_id=node_id if running and node_id is not None else task.node_id,
        last_seq=task.last_seq + len(events),
    )
    return changed, events
