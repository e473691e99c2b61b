"""The task-runner interface: what the supervisor calls to do one attempt of a task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ..events import EventHub
from ..store import Event, NewEvent, Store, Task


@dataclass(frozen=True)
class RunResult:
    """How an attempt ended when it did not raise.

    ``waiting_input``: the agent asked the user something; the task waits for an answer.
    """

    status: str = "succeeded"  # "succeeded" | "waiting_input"
    reason: str | None = None


@dataclass
class RunContext:
    """What a runner may use: its task as admitted, the store and the live event hub."""

    task: Task
    store: Store
    hub: EventHub

    async def emit(self, type: str, data: dict[str, Any]) -> Event:
        """Append a durable event to this task (committed before this returns)."""
        (event,) = await self.store.append_events(self.task.id, [NewEvent(type, data)])
        return event

    def emit_ephemeral(self, type: str, data: dict[str, Any]) -> None:
        self.hub.publish_ephemeral(self.task.id, type, data)


class TaskRunner(Protocol):
    async def run(self, ctx: RunContext) -> RunResult:
        """Do one attempt of ``ctx.task``.

        Raise ``TransientError`` to be retried with backoff, ``PermanentError`` to fail at once.
        Cancellation (a user cancel, the max duration, a shutdown) arrives as ``trio.Cancelled``:
        clean up and let it propagate; the supervisor records the outcome.
        """
        ...


class NoopRunner:
    """Succeeds at once: the queue benchmark's unit of work."""

    async def run(self, ctx: RunContext) -> RunResult:
        await trio.lowlevel.checkpoint()
        return RunResult()
