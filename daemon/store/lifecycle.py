"""What a task's creation and status changes write, decided once for every backend (no I/O).

A backend reads the task row (locked where several writers exist), asks ``plan_transition``
for the changed task and the events to append, then writes both in its own SQL.
"""

from __future__ import annotations

import dataclasses
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
) -> tuple[Task, list[NewEvent]]:
    """The task after the change (its ``last_seq`` not yet moved) and the events to append.

    Raises ``InvalidTransition`` when the task is not in ``expect`` or the state machine
    forbids the change.
    """
    if expect is not None and task.status != expect:
        raise InvalidTransition(f"task {task.id} is {task.status.value}, not {expect.value}")
    check_transition(task.status, target)
    changed = dataclasses.replace(
        task, status=target, attempt=task.attempt + attempt_delta, reason=reason, error=error,
        due_at=due_at, updated_at=now,
        started_at=now if target is TaskStatus.RUNNING else task.started_at,
        finished_at=now if target.is_terminal else None,
    )
    status_data: dict[str, Any] = {"status": target.value, "attempt": changed.attempt}
    if reason:
        status_data["reason"] = reason
    events = [*events_before, NewEvent("task.status", status_data)]
    if target.is_terminal:
        finished: dict[str, Any] = {"status": target.value}
        if error or reason:
            finished["error"] = error or reason
        events.append(NewEvent("task.finished", finished))
    return changed, events
