"""Admission order: round-robin across users, first-in first-out within a user."""

from __future__ import annotations

import collections
from collections.abc import Collection


class FairQueue:
    def __init__(self) -> None:
        self._by_user: collections.OrderedDict[int, collections.deque[str]] = collections.OrderedDict()
        self._owner: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._owner)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._owner

    def push(self, user_id: int, task_id: str) -> None:
        if task_id in self._owner:
            return
        self._owner[task_id] = user_id
        self._by_user.setdefault(user_id, collections.deque()).append(task_id)

    def pop(self, skip: Collection[int] = ()) -> tuple[int, str] | None:
        """The next task: the head of the user whose turn it is; that user moves to the back.

        Users in ``skip`` (at their cap) keep their place and their turn for later.
        """
        user_id = next((user for user in self._by_user if user not in skip), None)
        if user_id is None:
            return None
        tasks = self._by_user[user_id]
        task_id = tasks.popleft()
        del self._owner[task_id]
        if tasks:
            self._by_user.move_to_end(user_id)
        else:
            del self._by_user[user_id]
        return user_id, task_id

    def remove(self, task_id: str) -> bool:
        user_id = self._owner.pop(task_id, None)
        if user_id is None:
            return False
        tasks = self._by_user[user_id]
        tasks.remove(task_id)
        if not tasks:
            del self._by_user[user_id]
        return True

    def users_waiting(self) -> int:
        return len(self._by_user)
