"""Which tasks start next: an in-memory fair queue, or claims from a store other daemons share.

Both give round-robin across users, FIFO within a user, and a cap on one user's running tasks
(``user_limit``, 0: none). In memory (a store only this daemon writes), the cap counts this
daemon's attempts and a task starts with its own ``queued -> running`` transition. On a shared
store the database is the queue: ``store.claim_tasks`` starts tasks (running, with this node's
id) in one transaction and the cap counts every node's running tasks.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable

from ..states import TaskStatus
from ..store import Claim, Store, Task, Transition
from . import tasklog
from .fairqueue import FairQueue

log = logging.getLogger(__name__)


class Admission:
    def __init__(self, store: Store, node_id: str, user_limit: int = 0) -> None:
        self.store = store
        self.node_id = node_id
        self.user_limit = user_limit
        self.shared = store.shared
        self._queue = FairQueue()
        self._held: Counter[int] = Counter()  # per user: slots of tasks being created running

    def __len__(self) -> int:
        """Tasks waiting in memory (a shared store's queue is counted in the database)."""
        return len(self._queue)

    def push(self, user_id: int, task_id: str) -> None:
        if not self.shared:
            self._queue.push(user_id, task_id)

    def remove(self, task_id: str) -> None:
        self._queue.remove(task_id)

    def hold_slot(self, user_id: int, running_users: list[int], free: int) -> bool:
        """Whether a task submitted now may be created already running (one commit, not two):
        in memory only, a slot ``free``, nobody waiting, the user under the cap. If so, the slot
        is held for it until ``release_slot``: ``slots_held`` counts it, ``take`` sees its user.
        """
        if self.shared or free <= 0 or len(self._queue):
            return False
        if self.user_limit and running_users.count(user_id) + self._held[user_id] >= self.user_limit:
            return False
        self._held[user_id] += 1
        return True

    def release_slot(self, user_id: int) -> None:
        """The task is written (and started, or queued): its slot is counted as running now."""
        self._held[user_id] -= 1
        if not self._held[user_id]:
            del self._held[user_id]

    def slots_held(self) -> int:
        return self._held.total()

    async def take(
        self, free: int, running_users: Iterable[int], still_wanted: Callable[[], bool]
    ) -> list[tuple[int, str, Task | None]]:
        """Up to ``free`` tasks to start: ``(user_id, task_id, task)``, where ``task`` is the
        task already started by a claim, or None when the attempt must start it. A claim asks
        ``still_wanted()`` once more just before it claims.

        Cancellation (shared store): the claim's transaction is not abandoned (see
        ``StoreBase._write``); a failed claim is logged and yields nothing.
        """
        if self.shared:
            try:
                claimed = await self.store.claim_tasks(
                    self.node_id, free, self.user_limit, still_wanted=still_wanted
                )
            except Exception:
                log.exception("claiming tasks failed; trying again shortly")
                return []
            return [(task.user_id, task.id, task) for task in claimed]
        counts = Counter(running_users) + self._held
        at_cap = {user for user, n in counts.items() if self.user_limit and n >= self.user_limit}
        taken: list[tuple[int, str, Task | None]] = []
        while len(taken) < free:
            popped = self._queue.pop(skip=at_cap)
            if popped is None:
                break
            user_id, task_id = popped
            taken.append((user_id, task_id, None))
            counts[user_id] += 1
            if self.user_limit and counts[user_id] >= self.user_limit:
                at_cap.add(user_id)
        return taken

    async def give_back(self, task: Task) -> Task:
        """A task started for this node (claimed, or created running) that it will not run
        after all (it drained meanwhile): queued again, the attempt not counted."""
        change = Transition(
            task.id, TaskStatus.QUEUED, reason="node draining", attempt_delta=-1, claim=Claim.of(task)
        )
        given_back = await self.store.transition(change)
        tasklog.changed(given_back, change)
        return given_back
