"""The attempts one node runs, and the concurrency slots they hold."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field

import trio

from .runner import Inbox


class CancelCause(enum.Enum):
    """Why the supervisor cancelled an attempt (an attempt cancelled with none: its max duration)."""

    CANCEL = enum.auto()  # a user or operator cancelled the task: recorded as cancelled
    SHUTDOWN = enum.auto()  # the daemon stops: the task is queued again, the attempt uncounted
    ELSEWHERE = enum.auto()  # another node changed the task: nothing of the attempt is recorded
    LEASE_LOST = enum.auto()  # this node lost its lease: nothing of the attempt is recorded

    @property
    def records(self) -> bool:
        """Whether the attempt's end is recorded (the task is still this node's)."""
        return self not in (CancelCause.ELSEWHERE, CancelCause.LEASE_LOST)


@dataclass(eq=False)
class Attempt:
    task_id: str
    user_id: int
    scope: trio.CancelScope
    why_cancelled: CancelCause | None = None
    queued_again: bool = False  # queued while this attempt was still winding down
    started_seq: int | None = None  # the seq of its "running" event, once started
    done: trio.Event = field(default_factory=trio.Event)
    inbox: Inbox = field(default_factory=Inbox)  # told when a user message arrives
    # The runner returned and the outcome is on its way to the store; once it has committed
    # (``slot_free``) the next task may have the slot, while this attempt still winds down.
    recording: bool = False
    slot_free: bool = False

    def stop(self, cause: CancelCause) -> None:
        """Cancel the attempt; ``cause`` decides what its end records."""
        self.why_cancelled = cause
        self.scope.cancel()


class Attempts:
    """This node's attempts by task id, until each has wound down.

    An attempt holds a concurrency slot from its start until its outcome has committed
    (``outcome_committed``), which may be a little before it is gone (``remove``).
    """

    def __init__(self) -> None:
        self._by_task: dict[str, Attempt] = {}
        self._freed = 0  # attempts here whose slot is free already

    def __len__(self) -> int:
        return len(self._by_task)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._by_task

    def get(self, task_id: str) -> Attempt | None:
        return self._by_task.get(task_id)

    def all(self) -> Iterator[Attempt]:
        return iter(list(self._by_task.values()))

    def add(self, attempt: Attempt) -> None:
        assert attempt.task_id not in self._by_task, "one attempt per task at a time"
        self._by_task[attempt.task_id] = attempt

    def remove(self, attempt: Attempt) -> None:
        del self._by_task[attempt.task_id]
        if attempt.slot_free:
            self._freed -= 1

    def outcome_committed(self, task_id: str) -> bool:
        """The outcome of ``task_id``'s attempt committed: its slot is free. False if it held
        none (no attempt recording, or freed already)."""
        attempt = self._by_task.get(task_id)
        if attempt is None or not attempt.recording or attempt.slot_free:
            return False
        attempt.slot_free = True
        self._freed += 1
        return True

    def recording(self) -> int:
        """How many attempts have ended and record their outcome: until it has committed (a
        store only this daemon writes), or until they are gone (a shared store)."""
        return sum(1 for attempt in self._by_task.values() if attempt.recording and not attempt.slot_free)

    def holding(self) -> int:
        """How many slots the attempts hold."""
        return len(self._by_task) - self._freed

    def users(self) -> list[int]:
        """The user of each slot held (a user once per attempt)."""
        return [attempt.user_id for attempt in self._by_task.values() if not attempt.slot_free]
