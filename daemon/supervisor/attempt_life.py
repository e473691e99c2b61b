"""One attempt of one task, from its admission (or claim) to its recorded outcome (a part of
``Supervisor``).

An attempt runs in the supervisor's nursery under its own cancel scope (``Attempt.scope``), with
the ``max_duration_s`` deadline. It starts with the task's change to ``running`` (unless a claim
or ``submit`` already made it), runs the ``TaskRunner``, and records what came of it
(``outcomes.plan_outcome``) with a change that carries its claim; then it lets go of its slot,
and the task is queued again if something asked for that meanwhile.

Cancellation: an attempt stopped through ``Attempt.stop`` records the outcome its
``CancelCause`` calls for (or nothing, when the task is someone else's now); the nursery's own
cancellation leaves the task ``running`` in the store, for recovery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from .. import logs
from ..errors import InvalidTransition, NotFound, PermanentError, TransientError
from ..events import EventHub
from ..states import TaskStatus
from ..store import Store, Task, Transition
from . import tasklog
from .admission import Admission
from .attempts import Attempt, Attempts, CancelCause
from .membership import NodeIdentity
from .outcomes import plan_outcome
from .retry import Backoff
from .retry_timers import RetryTimers
from .runner import RunContext, RunResult, TaskRunner

log = logging.getLogger("daemon.supervisor.supervisor")  # the supervisor's log, as before the split


class AttemptLife:
    """Starting, running and recording attempts; mixed into ``Supervisor``, which owns the state."""

    store: Store
    hub: EventHub
    runner: TaskRunner
    backoff: Backoff
    max_duration_s: float
    wall: Callable[[], float]
    node: NodeIdentity
    on_started: Callable[[str], None] | None
    _admitting: bool
    _queue: Admission
    _running: Attempts
    _waiting: RetryTimers
    _messaged: set[str]
    _nursery: trio.Nursery | None

    if TYPE_CHECKING:  # the supervisor's own

        async def requeue(
            self, task_id: str, *, reason: str, fresh_attempts: bool = False, expect: TaskStatus | None = None
        ) -> Task: ...

        async def _change(self, change: Transition, delay_s: float | None = None) -> Task: ...

        def _kick(self) -> None: ...

    def _start(self, user_id: int, task_id: str, claimed: Task | None = None) -> None:
        assert self._nursery is not None
        previous = self._running.get(task_id)
        if previous is not None:
            # Its last attempt here still winds down (on a shared store a follow-up queued it
            # again and a claim took it meanwhile): this one starts once that one is gone.
            self._nursery.start_soon(self._start_after, previous, user_id, task_id, claimed)
            return
        running = Attempt(task_id, user_id, trio.CancelScope())
        self._running.add(running)
        self._nursery.start_soon(self._attempt, running, claimed)

    async def _start_after(self, previous: Attempt, user_id: int, task_id: str, claimed: Task | None) -> None:
        await previous.done.wait()
        if self._admitting:
            self._start(user_id, task_id, claimed)
        elif claimed is not None:  # drained meanwhile
            await self._queue.give_back(claimed)

    async def _attempt(self, running: Attempt, claimed: Task | None = None) -> None:
        """One attempt of one task, from admission (or its claim) to its recorded outcome."""
        logs.bind_task(running.task_id)  # every log line of this Trio task (and its children)
        try:
            outcome: RunResult | BaseException | None = None
            task: Task | None = claimed
            with running.scope:
                running.scope.deadline = trio.current_time() + self.max_duration_s
                if task is None:
                    try:
                        task = await self.store.transition(
                            Transition(
                                running.task_id,
                                TaskStatus.RUNNING,
                                expect=TaskStatus.QUEUED,
                                attempt_delta=1,
                                node_id=self.node.id,
                            )
                        )
                    except (InvalidTransition, NotFound):
                        return  # cancelled or changed while it waited for its turn
                tasklog.started(task)
                running.started_seq = task.last_seq
                if self.on_started is not None:
                    self.on_started(task.id)
                try:
                    outcome = await self.runner.run(RunContext(task, self.store, self.hub, running.inbox))
                except (TransientError, PermanentError) as exc:
                    outcome = exc
                except Exception as exc:
                    log.exception("task %s: runner crashed", running.task_id)
                    outcome = PermanentError(f"internal error: {type(exc).__name__}: {exc}")
            try:
                if task is None:  # stopped before it could start: the task is still queued
                    await self._not_started(running)
                else:
                    await self._record(running, task, outcome)
            except InvalidTransition as exc:
                # Someone changed the task while this attempt ended (a cancel, a retry): their
                # change stands. One task's race must never take the supervisor down.
                log.warning("task %s: outcome not recorded: %s", running.task_id, exc.message)
        finally:
            self._running.remove(running)
            self._messaged.discard(running.task_id)
            if running.queued_again:
                self._queue.push(running.user_id, running.task_id)
            running.done.set()
            self._kick()

    async def _not_started(self, running: Attempt) -> None:
        """An attempt cancelled while it was being started (before ``running`` was written)."""
        if running.why_cancelled is CancelCause.CANCEL:
            await self._change(
                Transition(
                    running.task_id,
                    TaskStatus.CANCELLED,
                    expect=TaskStatus.QUEUED,
                    reason="cancelled by request",
                )
            )
        elif running.why_cancelled is None:
            running.queued_again = True  # not our doing: let it have its turn again

    async def _record(self, running: Attempt, task: Task, outcome: RunResult | BaseException | None) -> None:
        if running.why_cancelled is not None and not running.why_cancelled.records:
            return  # the task is someone else's now: nothing of this attempt is recorded
        planned = plan_outcome(
            task,
            outcome,
            running.why_cancelled,
            backoff=self.backoff,
            now=self.wall(),
            max_duration_s=self.max_duration_s,
        )
        running.recording = True
        # Only while this attempt still holds the task (the change carries its claim).
        change = planned.change
        await self._change(change, planned.delay_s)
        target = change.target
        if target is TaskStatus.WAITING_RETRY:
            assert change.due_at is not None
            self._schedule_retry(task.id, change.due_at)
        # A user message that arrived after the agent last looked must not wait for the next
        # one: the task goes on with it now.
        elif (
            target in (TaskStatus.SUCCEEDED, TaskStatus.WAITING_INPUT)
            and task.id in self._messaged
            and await self.store.pending_inputs(task.id)
        ):
            try:
                # From the status just recorded only: queued again meanwhile by whoever
                # delivered the message (and maybe claimed already), it stays theirs.
                await self.requeue(
                    task.id,
                    reason="a user message arrived as the attempt ended",
                    fresh_attempts=target is TaskStatus.SUCCEEDED,
                    expect=target,
                )
            except InvalidTransition:
                pass

    def _schedule_retry(self, task_id: str, due_at: float) -> None:
        assert self._nursery is not None
        self._waiting.schedule(self._nursery, task_id, due_at)
