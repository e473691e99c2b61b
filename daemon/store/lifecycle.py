"""What a task's creation and status changes write, decided once for every backend (no I/O).

A backend reads the task row (locked where several writers exist), asks ``plan_transition``
for the changed task and the events to append, then writes both in its own SQL.
"""

from __future__ import annotations

from typing import Any, Iterable

from ..errors import InvalidTransition
from ..states import TaskStatus, check_transition
from .models import NewEvent, Task


def created_events(repo_url: str, prompt: str, base_branch: str | None) -> list[NewEvent]:
    return [
        NewEvent("task.created", {"repo_url": repo_url, "prompt": prompt, "base_branch": base_branch}),
        NewEvent("task.status", {"status": TaskStatus.QUEUED.value, "attempt": 0}),
    ]


def plan_transition(
    task: Task,
    target: TaskStatus,
    *,
    now: float,
    expect: TaskStatus | None = None,
    reason: str | None = None,
    error: str | None = None,
    due_at: float | None = None,
    attempt_delta: int = 0,
    events_before: Iterable[NewEvent] = (),
    node_id: str | None = None,
    claim: tuple[str | None, int] | None = None,
) -> tuple[Task, list[NewEvent]]:
    """The task after the change (``last_seq`` counting the new events) and the events to append.

    ``node_id``: the node starting the attempt (with ``target`` running). ``claim``: the
    ``(node_id, attempt)`` of the attempt that asks; the change is refused unless that attempt
    still holds the task (a node whose lease ran out must not overwrite the outcome of the node
    that took the task over).

    Raises ``InvalidTransition`` when the task is not in ``expect``, the claim is no longer
    held, or the state machine forbids the change.
    """
    if expect is not None and task.status != expect:
        raise InvalidTransition(f"task {task.id} is {task.status.value}, not {expect.value}")
    if claim is not None and (task.status is not TaskStatus.RUNNING or (task.node_id, task.attempt) != claim):
        raise InvalidTransition(
            f"task {task.id}: attempt {claim[1]} on node {claim[0]} no longer holds it "
            f"({task.status.value}, attempt {task.attempt} on node {task.node_id})"
        )
    check_transition(task.status, target)
    running = target is TaskStatus.RUNNING
    attempt = task.attempt + attempt_delta
    status_data: dict[str, Any] = {"status": target.value, "attempt": attempt}
    if running and node_id is not None:
        status_data["node"] = node_id
    if reason:
        status_data["reason"] = reason
    events = [*events_before, NewEvent("task.status", status_data)]
    if target.is_terminal:
        finished: dict[str, Any] = {"status": target.value}
        if error or reason:
            finished["error"] = error or reason
        events.append(NewEvent("task.finished", finished))
    changed = task.evolve(
        status=target, attempt=attempt, reason=reason, error=error, due_at=due_at, updated_at=now,
        started_at=now if running else task.started_at,
        finished_at=now if target.is_terminal else None,
        node_id=node_id if running and node_id is not None else task.node_id,
        last_seq=task.last_seq + len(events),
    )
    return changed, events
