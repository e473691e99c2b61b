"""The task-runner interface: what the supervisor calls to do one attempt of a task."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from ..errors import PermanentError
from ..events import EventHub
from ..states import TaskStatus
from ..store import Event, NewEvent, Store, Task


class RunStatus(enum.StrEnum):
    """How an attempt that did not raise ended (the task status it leads to, same strings)."""

    SUCCEEDED = "succeeded"
    WAITING_INPUT = "waiting_input"  # the agent asked the user something; the task waits


@dataclass(frozen=True)
class RunResult:
    """How an attempt ended when it did not raise; ``reason`` is recorded with the status."""

    status: RunStatus = RunStatus.SUCCEEDED
    reason: str | None = None


class Inbox:
    """Whether user messages may be waiting for the agent: set by the supervisor as each
    ``user.message`` of the task commits (here or, on a shared store, on another node)."""

    __slots__ = ("maybe_waiting",)

    def __init__(self) -> None:
        self.maybe_waiting = True  # at the start of an attempt: unknown, look


@dataclass
class RunContext:
    """What a runner may use: its task as admitted, the store and the live event hub."""

    task: Task
    store: Store
    hub: EventHub
    inbox: Inbox = field(default_factory=Inbox)

    async def emit(self, type: str, data: dict[str, Any]) -> Event:
        """Append a durable event to this task (committed before this returns)."""
        (event,) = await self.store.append_events(self.task.id, [NewEvent(type, data)])
        return event

    async def take_inputs(self) -> list[str]:
        """``store.take_inputs`` for this task, without a write when no message came since the
        last take (most turns of most tasks)."""
        if not self.inbox.maybe_waiting:
            return []
        self.inbox.maybe_waiting = False  # before the take: a message committed meanwhile sets it
        return await self.store.take_inputs(self.task.id)

    def emit_ephemeral(self, type: str, data: dict[str, Any]) -> None:
        self.hub.publish_ephemeral(self.task.id, type, data)

    async def check_held(self) -> None:
        """Raise ``PermanentError`` (code ``lease_lost``) if this attempt no longer holds its task.

        Asked before what must not happen twice (a push): on a shared store, a node whose lease
        ran out may not have heard yet that another node took the task over.
        """
        now = await self.store.get_task(self.task.id)
        held = (self.task.node_id, self.task.attempt)
        if now is None or now.status is not TaskStatus.RUNNING or (now.node_id, now.attempt) != held:
            raise PermanentError(
                f"attempt {self.task.attempt} no longer holds task {self.task.id} (another node "
                "took it over); not pushing",
                code="lease_lost",
            )


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
