"""The supervisor: admits queued tasks fairly under a live concurrency limit and runs them.

Every status change goes through ``store.transition`` (validated there, in one place, with its
events, in one transaction); this module decides *which* change to make. All its tasks live in
the nursery of ``run()``; nothing outlives it.

Admission has two modes, chosen by the store. On a store only this daemon writes (SQLite), the
queue is in memory (``FairQueue``) and an attempt starts with its own transition. On a shared
store (PostgreSQL, several daemons), tasks are *claimed* from the database in batches
(``store.claim_tasks``: round-robin across users, a cluster-wide cap per user, ``SKIP LOCKED``),
woken by other nodes' notices and a short poll; while outcomes are on their way to the store,
the node waits for them and refills their slots with one claim. The node's heartbeat is the
lease on what it runs (``membership``), and other nodes' events reach the hub
(``remote_events``). Each attempt, from its start to its recorded outcome, is ``attempt_life``'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from ..errors import NotFound
from ..events import EventHub
from ..remote_events import RemoteEvents
from ..states import REASON_LEASE_LOST, TaskStatus
from ..store import Event, NodeState, Revoked, Store, Task, Transition
from . import tasklog
from .admission import Admission
from .attempt_life import AttemptLife
from .attempts import Attempts, CancelCause
from .membership import LeaseSettings, Membership, NodeIdentity
from .recovery import Recovery
from .retry import Backoff
from .retry_timers import RetryTimers
from .runner import TaskRunner

log = logging.getLogger(__name__)

CLAIM_POLL_S = 1.0  # shared store: how often an idle node looks for work nobody announced


class Supervisor(AttemptLife):
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
        user_concurrency: int = 0,
        node: NodeIdentity | None = None,
        lease: LeaseSettings | None = None,
        # What other daemons sharing the store revoke (``remote_events``): the web side closes.
        on_revoked: Callable[[Revoked], None] = lambda revoked: None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.runner = runner
        self.backoff = backoff or Backoff()
        self.max_duration_s = max_duration_s
        self.wall = wall_clock
        self.user_concurrency = user_concurrency  # one user's running tasks (all nodes); 0: no cap
        self.node = node or NodeIdentity(id=store.node_id or "local")
        self.lease = lease or LeaseSettings()
        self._shared = store.shared
        self._concurrency = concurrency
        self._queue = Admission(store, self.node.id, user_concurrency)
        self._running = Attempts()
        self._waiting = RetryTimers(store, wall_clock, self._enqueue)
        self._admitting = False
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        # Tasks a user wrote to (``user.message``) since their attempt last looked: only those
        # need the inbox checked when an attempt ends.
        self._messaged: set[str] = set()
        hub.add_global_listener(self._on_committed)
        self._recovery = Recovery(store, self.backoff, self.node.id, self.lease.lease_s)
        self.membership = Membership(
            store, self.node, self.lease, report=self._report, fence=self._fence, sweep=self._take_over
        )
        if self._shared:
            hub.add_global_listener(self._on_remote, remote=True, wants=self._running.__contains__)
            self._remote = RemoteEvents(
                store, hub, on_claimable=self._kick, capped=user_concurrency > 0, on_revoked=on_revoked
            )
        self.on_started: Callable[[str], None] | None = None  # benchmarks and metrics hook here

    # -- introspection --------------------------------------------------------------------------

    @property
    def admitting(self) -> bool:
        return self._admitting

    @property
    def concurrency(self) -> int:
        return self._concurrency

    def stats(self) -> dict[str, Any]:
        """This node's view (``queued``: its in-memory queue; a shared store's is in the database)."""
        return {
            "node": self.node.id,
            "admitting": self._admitting,
            "concurrency": self._concurrency,
            "running": self._running.holding(),
            "queued": len(self._queue),
            "waiting_retry": len(self._waiting),
        }

    def _report(self) -> tuple[NodeState, int, int]:
        state = NodeState.UP if self._admitting else NodeState.DRAINING
        return state, self._concurrency, self._running.holding()

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Recover what a previous process left, then admit and run tasks until cancelled.

        Signals readiness through ``task_status.started()`` once recovery is done and admission
        is open. Cancellation: running tasks are cancelled with the nursery and stay ``running``
        in the store (recovered at next start); call ``shutdown`` first for an orderly stop.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.membership.register()
            if self._shared:  # listening before recovery: nothing committed after is missed
                await nursery.start(self._remote.run)
            await self._recover()
            self._admitting = True
            nursery.start_soon(self._admission_loop)
            nursery.start_soon(self.membership.run)
            task_status.started()

    async def shutdown(self, grace_s: float) -> None:
        """Stop admitting, let running tasks finish for ``grace_s``, then cancel the rest.

        Tasks cancelled here go back to ``queued`` (not counting the attempt) and resume at the
        next start (or, on a shared store, on another node); waiting retries keep their due time
        in the store. The node then says it left. Cancellation: the grace wait ends early; the
        rest (cancelling, recording, leaving) still runs to its end.
        """
        self.drain()
        with trio.move_on_after(grace_s):
            await self.wait_idle()
        for running in self._running.all():
            running.stop(CancelCause.SHUTDOWN)
        await self.wait_idle()
        self._waiting.cancel_all()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                try:
                    await self.membership.leave()
                except Exception:  # the lease runs out on its own
                    log.exception("could not mark node %s stopped", self.node.id)

    async def wait_idle(self) -> None:
        """Return once no attempt is running (each has recorded its outcome and let go)."""
        while self._running:
            await next(self._running.all()).done.wait()

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
        """Store a new queued task (or find the one with the same idempotency key) and queue it.

        With a slot free and nobody waiting (on a store only this daemon writes), the task is
        created already running, in the same transaction, and starts at once: one commit
        instead of two. Cancellation: the creation is not abandoned (see ``StoreBase._write``).
        """
        start = self._admitting and self._queue.hold_slot(user_id, self._running_users(), self._free())
        try:
            task, created = await self.store.create_task(
                user_id=user_id,
                repo_url=repo_url,
                prompt=prompt,
                start_on=self.node.id if start else None,
                **kwargs,
            )
        finally:
            if start:
                self._queue.release_slot(user_id)
        if created:
            tasklog.created(task)
        if created and task.status is TaskStatus.RUNNING:
            if self._admitting:
                self._start(user_id, task.id, task)
                return task, created
            # Drained (or shutting down) while it was written: back in the queue, uncounted.
            task = await self._queue.give_back(task)
        if created:
            self._enqueue(task)
        return task, created

    async def cancel(self, task_id: str) -> Task:
        """Cancel a task in any non-final state; a running one is stopped and then recorded."""
        # Loop: an attempt that ends as the cancel arrives may queue the task again (a user
        # message was waiting) and a new attempt may be admitted before we look again. A task
        # running on another node is cancelled in the store; that node sees it and stops.
        while (running := self._running.get(task_id)) is not None:
            running.queued_again = False
            running.stop(CancelCause.CANCEL)
            await running.done.wait()
            task = await self._require(task_id)
            if task.status is TaskStatus.CANCELLED:
                return task
            # The attempt ended on its own just before the cancel (say into waiting_retry):
            # cancel it from the state it reached, or refuse if that state is final.
        self._queue.remove(task_id)
        self._waiting.cancel(task_id)
        return await self._change(Transition(task_id, TaskStatus.CANCELLED, reason="cancelled by request"))

    async def requeue(
        self, task_id: str, *, reason: str, fresh_attempts: bool = False, expect: TaskStatus | None = None
    ) -> Task:
        """Queue a waiting or finished task again (an answer, a follow-up, an operator retry).

        ``expect``: only from this status (``InvalidTransition`` otherwise); default: whatever
        status the task has when read here.
        """
        task = await self._require(task_id)
        delta = -task.attempt if fresh_attempts else 0
        self._waiting.cancel(task_id)
        task = await self._change(
            Transition(
                task_id, TaskStatus.QUEUED, expect=expect or task.status, reason=reason, attempt_delta=delta
            )
        )
        self._enqueue(task)
        return task

    # -- internals ------------------------------------------------------------------------------

    async def _change(self, change: Transition, delay_s: float | None = None) -> Task:
        """Make ``change`` and tell the task's story (``tasklog``) once it has committed."""
        task = await self.store.transition(change)
        tasklog.changed(task, change, delay_s)
        return task

    async def _require(self, task_id: str) -> Task:
        task = await self.store.get_task(task_id)
        if task is None:
            raise NotFound(f"no task {task_id}")
        return task

    def _on_committed(self, events: list[Event]) -> None:
        """This node's commits: note user messages; free the slot of an attempt whose outcome
        committed (a task submitted in the same moment then starts in it at once)."""
        for event in events:
            if event.type == "user.message":
                self._note_message(event.task_id)
            # (On a shared store a claim could take the task again meanwhile: its slot is free
            # only once the attempt is gone, see ``_start``.)
            elif (
                event.type == "task.status"
                and not self._shared
                and self._running.outcome_committed(event.task_id)
            ):
                self._kick()

    def _note_message(self, task_id: str) -> None:
        self._messaged.add(task_id)
        running = self._running.get(task_id)
        if running is not None:
            running.inbox.maybe_waiting = True

    def _on_remote(self, events: list[Event]) -> None:
        """Another node changed a task this node runs (a cancel, a takeover): stop, record nothing."""
        for event in events:
            if event.type == "user.message":
                self._note_message(event.task_id)
            running = self._running.get(event.task_id)
            if (
                running is not None
                and event.type == "task.status"
                and running.why_cancelled is None
                and running.started_seq is not None
                and event.seq > running.started_seq
            ):
                running.stop(CancelCause.ELSEWHERE)

    def _free(self) -> int:
        return self._concurrency - self._running.holding() - self._queue.slots_held()

    def _running_users(self) -> list[int]:
        return self._running.users()

    def _kick(self) -> None:
        self._changed.set()

    def _enqueue(self, task: Task) -> None:
        running = self._running.get(task.id)
        if running is not None:
            running.queued_again = True  # admitted once this attempt has let go of its slot
            return
        self._queue.push(task.user_id, task.id)  # a shared store's queue is the database itself
        self._kick()

    async def _recover(self) -> None:
        """Put back what this node's previous process left: running -> queued (or failed when
        out of attempts). On a shared store, other nodes' running tasks are theirs (their
        leases decide), and queued and waiting ones are found by claims and sweeps."""
        await self._recovery.put_back_own("recovered after restart", "the daemon stopped")
        if self._shared:
            return
        async for task in self._recovery.tasks_in(TaskStatus.QUEUED):
            self._queue.push(task.user_id, task.id)
        async for task in self._recovery.tasks_in(TaskStatus.WAITING_RETRY):
            self._schedule_retry(task.id, task.due_at or self.wall())

    async def _take_over(self) -> None:
        for task_id in await self._recovery.take_over():
            if task_id not in self._waiting:  # this node's own timer will do it on time
                await self._waiting.wake_now(task_id)

    async def _fence(self) -> None:
        """This node lost its lease: stop every attempt without recording, then queue again
        those of its tasks nobody took over yet (it registers again as a new holder)."""
        for running in self._running.all():
            running.stop(CancelCause.LEASE_LOST)
        await self.wait_idle()
        try:
            await self._recovery.put_back_own(REASON_LEASE_LOST, "the node lost its lease")
        except Exception:  # the store is unreachable: the nodes that reach it take them over
            log.exception("could not queue this node's tasks again after losing its lease")

    async def _admission_loop(self) -> None:
        while True:
            self._changed = trio.Event()
            free = self._free()
            # On a shared store, outcomes on their way free their slots in a moment: one claim
            # for all of them then, rather than a round for the first and another for the rest.
            if self._admitting and free > 0 and not (self._shared and self._running.recording()):
                taken = await self._queue.take(free, self._running_users(), lambda: self._admitting)
                for user_id, task_id, claimed in taken:
                    if self._admitting:
                        self._start(user_id, task_id, claimed)
                    else:  # drained while a claim was on its way (an in-memory take never waits)
                        assert claimed is not None
                        await self._queue.give_back(claimed)
                if self._shared and len(taken) == free:
                    continue  # every free slot filled: there may be more
            if self._shared:  # also look now and then for work nobody announced
                with trio.move_on_after(CLAIM_POLL_S):
                    await self._changed.wait()
            else:
                await self._changed.wait()
