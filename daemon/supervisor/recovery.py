"""Putting back what dead attempts left: this node's own (after a restart, or a lost lease)
and, on a shared store, those of nodes whose lease ran out.

A task is put back only while the dead attempt still holds it (its ``Claim``):
whoever moved it meanwhile (a cancel, another node's takeover) wins.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from ..errors import InvalidTransition, NotFound
from ..states import REASON_TAKEN_OVER, TaskStatus
from ..store import Claim, Store, Task, Transition
from . import tasklog
from .retry import Backoff

log = logging.getLogger(__name__)

_PAGE = 1000


class Recovery:
    def __init__(self, store: Store, backoff: Backoff, node_id: str, lease_s: float) -> None:
        self.store = store
        self.backoff = backoff
        self.node_id = node_id
        self.lease_s = lease_s

    async def tasks_in(self, status: TaskStatus) -> AsyncIterator[Task]:
        """Every task in ``status``, oldest first, a page at a time."""
        cursor = None
        while True:
            page = await self.store.list_tasks(
                statuses=[status], before=cursor, limit=_PAGE, oldest_first=True
            )
            for seqno, task in page:
                cursor = seqno
                yield task
            if len(page) < _PAGE:
                return

    async def put_back_own(self, reason: str, why: str) -> None:
        """Queue this node's running tasks again: none of its attempts runs any more.

        On a store only this daemon writes, every running task is its own.
        """
        async for task in self.tasks_in(TaskStatus.RUNNING):
            if not self.store.shared or task.node_id in (None, self.node_id):
                await self.put_back(task.id, Claim.of(task), reason, why)

    async def put_back(self, task_id: str, held: Claim, reason: str, why: str) -> None:
        """Queue a task whose attempt (``held``) died with its node (failed when that was the
        last one). The dead attempt counts as failed: the node may have died of the task."""
        if self.backoff.exhausted(held.attempt):
            change = Transition(
                task_id,
                TaskStatus.FAILED,
                reason="interrupted",
                claim=held,
                error=f"{why} during attempt {held.attempt}, the last allowed",
            )
        else:
            change = Transition(task_id, TaskStatus.QUEUED, reason=reason, claim=held)
        try:
            task = await self.store.transition(change)
        except (InvalidTransition, NotFound):
            return
        tasklog.changed(task, change)

    async def take_over(self) -> list[str]:
        """Shared store: mark nodes whose lease ran out lost and queue their running tasks
        again; return the tasks whose retry is due (their node may be gone with its timer)."""
        for lost in await self.store.mark_lost_nodes(self.lease_s):
            log.warning("node %s lost its lease; taking its tasks over", lost)
        for task_id, node_id, attempt in await self.store.orphaned_tasks(self.lease_s):
            await self.put_back(
                task_id, Claim(node_id, attempt), f"{REASON_TAKEN_OVER} {node_id}", f"node {node_id} stopped"
            )
        return await self.store.due_retries()
