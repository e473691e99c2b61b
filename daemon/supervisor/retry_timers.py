"""The timers of tasks waiting for a retry: each wakes its task (``waiting_retry -> queued``)
when its due time comes, in a task of the supervisor's nursery."""

from __future__ import annotations

from collections.abc import Callable

import trio

from ..errors import InvalidTransition, NotFound
from ..states import TaskStatus
from ..store import Store, Task, Transition


class RetryTimers:
    def __init__(self, store: Store, wall: Callable[[], float], on_queued: Callable[[Task], None]) -> None:
        self.store = store
        self.wall = wall
        self._on_queued = on_queued
        self._scopes: dict[str, trio.CancelScope] = {}

    def __len__(self) -> int:
        return len(self._scopes)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._scopes

    def schedule(self, nursery: trio.Nursery, task_id: str, due_at: float) -> None:
        """Wake ``task_id`` at wall-clock ``due_at`` (at once if it is past)."""
        scope = trio.CancelScope()
        self._scopes[task_id] = scope
        nursery.start_soon(self._wake_at, task_id, due_at, scope)

    def cancel(self, task_id: str) -> None:
        """Forget the task's timer (it was cancelled, or queued by someone else)."""
        scope = self._scopes.pop(task_id, None)
        if scope is not None:
            scope.cancel()

    def cancel_all(self) -> None:
        """Stop every timer; the due times stay in the store for the next start."""
        for scope in self._scopes.values():
            scope.cancel()

    async def _wake_at(self, task_id: str, due_at: float, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(max(0.0, due_at - self.wall()))
            if self._scopes.get(task_id) is not scope:
                return
            del self._scopes[task_id]
            await self.wake_now(task_id)

    async def wake_now(self, task_id: str) -> None:
        """Queue the task now, unless it is no longer waiting for a retry."""
        try:
            task = await self.store.transition(
                Transition(task_id, TaskStatus.QUEUED, expect=TaskStatus.WAITING_RETRY)
            )
        except (InvalidTransition, NotFound):
            return
        self._on_queued(task)
