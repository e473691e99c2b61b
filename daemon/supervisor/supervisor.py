"""The supervisor: admits queued tasks fairly under a live concurrency limit and runs them.

Every status change goes through ``store.transition`` (validated there, in one place, with its
events, in one transaction); this module decides *which* change to make. All its tasks live in
the nursery of ``run()``; nothing outlives it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import trio

from .. import logs
from ..errors import InvalidTransition, NotFound, PermanentError, TransientError
from ..events import EventHub
from ..states import TaskStatus
from ..store import NewEvent, Store, Task
from .fairqueue import FairQueue
from .retry import Backoff
from .runner import RunContext, RunResult, TaskRunner

log = logging.getLogger(__name__)

_PAGE = 1000


@dataclass(eq=False)
class _Running:
    task_id: str
    user_id: int
    scope: trio.CancelScope
    why_cancelled: str | None = None  # "cancel" | "shutdown"; None + cancelled = max duration
    queued_again: bool = False  # queued while this attempt was still winding down
    done: trio.Event = field(default_factory=trio.Event)


class Supervisor:
    """Runs tasks; see ``run``. Public methods may be called from any task on the Trio thread."""

    def __init__(
        self,
        store: Store,
        hub: EventHub,
        runner: TaskRunner,
        *,
        concurrency: int = 4,
        backoff: Backoff | None = None,
        max_duration_s: float = 3600.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.hub = hub
        self.runner = runner
        self.backoff = backoff or Backoff()
        self.max_duration_s = max_duration_s
        self.wall = wall_clock
        self._concurrency = concurrency
        self._queue = FairQueue()
        self._running: dict[str, _Running] = {}
        self._waiting: dict[str, trio.CancelScope] = {}
        self._admitting = False
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        # Tasks a user wrote to (``user.message``) since their attempt last looked: only those
        # need the inbox checked when an attempt ends.
        self._messaged: set[str] = set()
        hub.add_global_listener(self._note_messages)
        self.on_started: Callable[[str], None] | None = None  # benchmarks and metrics hook here

    # -- introspection --------------------------------------------------------------------------

    @property
    def admitting(self) -> bool:
        return self._admitting

    @property
    def concurrency(self) -> int:
        return self._concurrency

    def stats(self) -> dict[str, Any]:
        return {
            "admitting": self._admitting,
            "concurrency": self._concurrency,
            "running": len(self._running),
            "queued": len(self._queue),
            "waiting_retry": len(self._waiting),
        }

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Recover what a previous process left, then admit and run tasks until cancelled.

        Signals readiness through ``task_status.started()`` once recovery is done and admission
        is open. Cancellation: running tasks are cancelled with the nursery and stay ``running``
        in the store (recovered at next start); call ``shutdown`` first for an orderly stop.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._recover()
            self._admitting = True
            nursery.start_soon(self._admission_loop)
            task_status.started()

    async def shutdown(self, grace_s: float) -> None:
        """Stop admitting, let running tasks finish for ``grace_s``, then cancel the rest.

        Tasks cancelled here go back to ``queued`` (not counting the attempt) and resume at the
        next start; waiting retries keep their due time in the store.
        """
        self.drain()
        with trio.move_on_after(grace_s):
            await self.wait_idle()
        for running in list(self._running.values()):
            running.why_cancelled = "shutdown"
            running.scope.cancel()
        await self.wait_idle()
        for scope in self._waiting.values():
            scope.cancel()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def wait_idle(self) -> None:
        """Return once no attempt is running (each has recorded its outcome and let go)."""
        while self._running:
            await next(iter(self._running.values())).done.wait()

    def drain(self) -> None:
        """Stop admitting new attempts; running ones go on."""
        self._admitting = False

    def resume(self) -> None:
        self._admitting = True
        self._kick()

    def set_concurrency(self, limit: int) -> None:
        """Change the limit now. Lowering it cancels nothing: admission waits until below."""
        if limit < 1:
            raise ValueError("concurrency must be at least 1")
        self._concurrency = limit
        self._kick()

    # -- commands -------------------------------------------------------------------------------

    async def submit(self, *, user_id: int, repo_url: str, prompt: str, **kwargs: Any) -> tuple[Task, bool]:
        """Store a new queued task (or find the one with the same idempotency key) and queue it."""
        task, created = await self.store.create_task(
            user_id=user_id, repo_url=repo_url, prompt=prompt, **kwargs
        )
        if created:
            self._enqueue(task)
        return task, created

    async def cancel(self, task_id: str) -> Task:
        """Cancel a task in any non-final state; a running one is stopped and then recorded."""
        # Loop: an attempt that ends as the cancel arrives may queue the task again (a user
        # message was waiting) and a new attempt may be admitted before we look again.
        while (running := self._running.get(task_id)) is not None:
            running.why_cancelled = "cancel"
            running.queued_again = False
            running.scope.cancel()
            await running.done.wait()
            task = await self._require(task_id)
            if task.status is TaskStatus.CANCELLED:
                return task
            # The attempt ended on its own just before the cancel (say into waiting_retry):
            # cancel it from the state it reached, or refuse if that state is final.
        self._queue.remove(task_id)
        timer = self._waiting.pop(task_id, None)
        if timer is not None:
            timer.cancel()
        return await self.store.transition(task_id, TaskStatus.CANCELLED, reason="cancelled by request")

    async def requeue(self, task_id: str, *, reason: str, fresh_attempts: bool = False) -> Task:
        """Queue a waiting or finished task again (an answer, a follow-up, an operator retry)."""
        task = await self._require(task_id)
        delta = -task.attempt if fresh_attempts else 0
        timer = self._waiting.pop(task_id, None)
        if timer is not None:
            timer.cancel()
        task = await self.store.transition(
            task_id, TaskStatus.QUEUED, expect=task.status, reason=reason, attempt_delta=delta
        )
        self._enqueue(task)
        return task

    # -- internals ------------------------------------------------------------------------------

    async def _require(self, task_id: str) -> Task:
        task = await self.store.get_task(task_id)
        if task is None:
            raise NotFound(f"no task {task_id}")
        return task

    def _note_messages(self, events: list) -> None:
        for event in events:
            if event.type == "user.message":
                self._messaged.add(event.task_id)

    def _kick(self) -> None:
        self._changed.set()

    def _enqueue(self, task: Task) -> None:
        running = self._running.get(task.id)
        if running is not None:
            running.queued_again = True  # admitted once this attempt has let go of its slot
            return
        self._queue.push(task.user_id, task.id)
        self._kick()

    async def _recover(self) -> None:
        """Put back what a dead process left: running -> queued (or failed when out of attempts)."""
        async for task in self._tasks_in(TaskStatus.RUNNING):
            if self.backoff.exhausted(task.attempt):
                await self.store.transition(
                    task.id, TaskStatus.FAILED, reason="interrupted",
                    error=f"the daemon stopped during attempt {task.attempt}, the last allowed",
                )
            else:
                await self.store.transition(task.id, TaskStatus.QUEUED, reason="recovered after restart")
        async for task in self._tasks_in(TaskStatus.QUEUED):
            self._queue.push(task.user_id, task.id)
        async for task in self._tasks_in(TaskStatus.WAITING_RETRY):
            self._schedule_retry(task.id, task.due_at or self.wall())

    async def _tasks_in(self, status: TaskStatus):
        cursor = None
        while True:
            page = await self.store.list_tasks(statuses=[status], before=cursor, limit=_PAGE, oldest_first=True)
            for seqno, task in page:
                cursor = seqno
                yield task
            if len(page) < _PAGE:
                return

    async def _admission_loop(self) -> None:
        assert self._nursery is not None
        while True:
            self._changed = trio.Event()
            while self._admitting and self._queue and len(self._running) < self._concurrency:
                user_id, task_id = self._queue.pop()  # type: ignore[misc]
                running = _Running(task_id, user_id, trio.CancelScope())
                self._running[task_id] = running
                self._nursery.start_soon(self._attempt, running)
            await self._changed.wait()

    async def _attempt(self, running: _Running) -> None:
        """One attempt of one task, from admission to its recorded outcome."""
        logs.bind_task(running.task_id)  # every log line of this Trio task (and its children)
        try:
            outcome: RunResult | BaseException | None = None
            task: Task | None = None
            with running.scope:
                running.scope.deadline = trio.current_time() + self.max_duration_s
                try:
                    task = await self.store.transition(
                        running.task_id, TaskStatus.RUNNING, expect=TaskStatus.QUEUED, attempt_delta=1
                    )
                except (InvalidTransition, NotFound):
                    return  # cancelled or changed while it waited for its turn
                if self.on_started is not None:
                    self.on_started(task.id)
                try:
                    outcome = await self.runner.run(RunContext(task, self.store, self.hub))
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
            del self._running[running.task_id]
            self._messaged.discard(running.task_id)
            if running.queued_again:
                self._queue.push(running.user_id, running.task_id)
            running.done.set()
            self._kick()

    async def _not_started(self, running: _Running) -> None:
        """An attempt cancelled while it was being started (before ``running`` was written)."""
        if running.why_cancelled == "cancel":
            await self.store.transition(running.task_id, TaskStatus.CANCELLED, expect=TaskStatus.QUEUED,
                                        reason="cancelled by request")
        elif running.why_cancelled is None:
            running.queued_again = True  # not our doing: let it have its turn again

    async def _record(self, running: _Running, task: Task, outcome: RunResult | BaseException | None) -> None:
        transition = self.store.transition
        if outcome is None:  # cancelled
            if running.why_cancelled == "shutdown":
                await transition(task.id, TaskStatus.QUEUED, reason="daemon shutdown", attempt_delta=-1)
            elif running.why_cancelled == "cancel":
                await transition(task.id, TaskStatus.CANCELLED, reason="cancelled by request")
            else:
                await transition(task.id, TaskStatus.FAILED, reason="max_duration_exceeded",
                                 error=f"the attempt ran longer than {self.max_duration_s:g} s")
        elif isinstance(outcome, RunResult):
            waiting = outcome.status == "waiting_input"
            target = TaskStatus.WAITING_INPUT if waiting else TaskStatus.SUCCEEDED
            await transition(task.id, target, reason=outcome.reason)
            # A user message that arrived after the agent last looked must not wait for the
            # next one: the task goes on with it now.
            if task.id in self._messaged and await self.store.pending_inputs(task.id):
                try:
                    await self.requeue(task.id, reason="a user message arrived as the attempt ended",
                                       fresh_attempts=not waiting)
                except InvalidTransition:
                    pass  # already queued again by whoever delivered the message
        elif isinstance(outcome, TransientError):
            if self.backoff.exhausted(task.attempt):
                await transition(task.id, TaskStatus.FAILED, reason="max_attempts",
                                 error=f"gave up after {task.attempt} attempts: {outcome.message}")
                return
            delay = self.backoff.delay(task.attempt, outcome.retry_after)
            due_at = self.wall() + delay
            await transition(
                task.id, TaskStatus.WAITING_RETRY, reason=outcome.message, due_at=due_at,
                events_before=[NewEvent("task.retry_scheduled", {
                    "attempt": task.attempt, "delay_s": round(delay, 3), "reason": outcome.message})],
            )
            self._schedule_retry(task.id, due_at)
        else:
            assert isinstance(outcome, PermanentError)
            await transition(task.id, TaskStatus.FAILED, reason=outcome.code, error=outcome.message)

    def _schedule_retry(self, task_id: str, due_at: float) -> None:
        assert self._nursery is not None
        scope = trio.CancelScope()
        self._waiting[task_id] = scope
        self._nursery.start_soon(self._wake_at, task_id, due_at, scope)

    async def _wake_at(self, task_id: str, due_at: float, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(max(0.0, due_at - self.wall()))
            if self._waiting.get(task_id) is not scope:
                return
            del self._waiting[task_id]
            try:
                task = await self.store.transition(task_id, TaskStatus.QUEUED, expect=TaskStatus.WAITING_RETRY)
            except (InvalidTransition, NotFound):
                return
            self._enqueue(task)
