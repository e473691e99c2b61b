"""The store interface, written once over the backends' private runners and queries modules."""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, TypeVar

from ..states import TaskStatus
from . import share_queries
from .cluster_store import ClusterStore
from .identity_store import IdentityStore
from .lifecycle import Transition
from .models import Event, NewEvent, NewTask, Task, Usage, new_task_id
from .outbox_store import OutboxStore
from .share_queries import ShareLink, new_share_id
from .upkeep_store import UpkeepStore

log = logging.getLogger(__name__)

T = TypeVar("T")
EventListener = Callable[[list[Event]], None]


class StoreBase(IdentityStore, ClusterStore, OutboxStore, UpkeepStore, abc.ABC):
    """The one narrow, typed interface every store backend provides.

    The supervisor, API and agent loop see only this: tasks, events, the conversation, tool
    calls, users and tokens (``IdentityStore``), share links, nodes, claims and what the
    daemons sharing the store agree on (``ClusterStore``), notification targets and the outbox
    (``OutboxStore``), and a little maintenance (``UpkeepStore``). Each method is the same for
    every backend: it calls the function of the same name in the backend's ``queries`` module
    (the same names and signatures in each) through three private runners the backend
    provides, ``_read``, ``_write`` and ``_write_events``. Every timestamp written is ``self.now()``
    (tests replace ``now``).

    Listeners added with ``add_listener`` see each committed batch of events on the Trio
    thread, after the commit, in commit order per task.

    Cancellation: a read stops being waited for (the query runs to its short end in its
    thread); a write is never abandoned, so the caller always learns whether it committed, and
    every committed event is published.
    """

    backend: ClassVar[str]
    #: True when other daemons may share the database (claims, leases, remote events matter).
    shared: ClassVar[bool] = False
    #: The backend's queries module (``sqlite_queries``, ``postgres_queries``).
    queries: ClassVar[ModuleType]
    #: Where the data is, as ``agentctl status`` shows it.
    path: Any
    #: The node this store speaks for to other daemons (a shared store), if it was given one.
    node_id: str | None = None

    def __init__(self) -> None:
        self._listeners: list[EventListener] = []
        self.now: Callable[[], float] = time.time

    # -- what each backend provides -------------------------------------------------------------

    @abc.abstractmethod
    async def _read(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(conn)`` in one read transaction off the Trio thread.

        Cancellation: the caller stops waiting; the query runs to its (short) end in its thread.
        """

    @abc.abstractmethod
    async def _write(self, fn: Callable[[Any], T], *, transaction: bool = True) -> T:
        """Run ``fn(conn)`` in one write transaction off the Trio thread; return once committed.

        ``transaction`` False: ``fn`` needs none around it (each of its writes is one atomic
        statement, or it opens a transaction of its own); a backend may give it one anyway.

        Cancellation: not abandoned; the caller waits for the (short) transaction to end.
        """

    @abc.abstractmethod
    async def _write_events(
        self, task_id: str | None, fn: Callable[[Any], tuple[T, list[Event]]], *, transaction: bool = True
    ) -> T:
        """Run a write whose ``fn`` returns ``(result, events)`` about ``task_id``; return result.
        ``transaction``: as for ``_write``.

        ``task_id`` None: the events are about several tasks (a claim); their order is then
        only the seq order each subscriber checks.

        The events are published (``_publish``) once committed, in commit order per task.
        Cancellation: as ``_write``.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Refuse new calls and release what the store holds. Cancellation: shielded."""

    @abc.abstractmethod
    def observe_writes(self, callback: Callable[[float], None]) -> None:
        """Have ``callback(seconds)`` told each write's round trip (the metrics use it)."""

    @abc.abstractmethod
    async def backup(self, destination: Path) -> None:
        """An online, consistent copy of the store in a new file at ``destination``."""

    @abc.abstractmethod
    async def integrity_check(self) -> str:
        """ "ok" when the store is sound; else what is wrong."""

    @abc.abstractmethod
    def size_bytes(self) -> int:
        """How much room the store takes (``agentctl status``)."""

    # -- listeners ------------------------------------------------------------------------------

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def _publish(self, events: list[Event]) -> None:
        if not events:
            return
        for listener in self._listeners:
            try:
                listener(events)
            except Exception:  # a broken listener must not hide the write's result
                log.exception("event listener failed")

    # -- tasks ----------------------------------------------------------------------------------

    async def create_task(
        self,
        *,
        user_id: int,
        repo_url: str,
        prompt: str,
        base_branch: str | None = None,
        budget: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        model: str | None = None,
        draft: bool = False,
        pr_title: str | None = None,
        start_on: str | None = None,
    ) -> tuple[Task, bool]:
        """Insert a queued task; with a known idempotency key return the first one (created=False).

        ``start_on``: a node id; the new task then goes on, in the same transaction, from queued
        to running there (attempt 1, events of both changes), as ``transition`` would do it.
        """
        now = self.now()
        task_id = new_task_id(now)
        new = NewTask(
            task_id,
            user_id,
            repo_url,
            prompt,
            base_branch,
            budget or {},
            idempotency_key,
            model=model,
            draft=draft,
            pr_title=pr_title,
        )

        def write(conn: Any) -> tuple[tuple[Task, bool], list[Event]]:
            task, events, created = self.queries.insert_task(conn, new, now)
            if created and start_on is not None:
                task, started = self.queries.transition(
                    conn,
                    Transition(
                        task_id,
                        TaskStatus.RUNNING,
                        expect=TaskStatus.QUEUED,
                        attempt_delta=1,
                        node_id=start_on,
                    ),
                    now,
                )
                events = [*events, *started]
            return (task, created), events

        return await self._write_events(task_id, write)

    async def transition(self, change: Transition) -> Task:
        """Validate and apply a status change, with its events, in one transaction.

        Refused (``InvalidTransition``) when the task is not in ``change.expect``, when
        ``change.claim`` no longer holds it, or when the state machine forbids the change;
        ``NotFound`` for an unknown task. Two changes of one task at once (in one process or,
        on a shared database, on two nodes): the second waits for the first's commit and is
        validated against the status it left.
        """
        return await self._transition(change, self.now())

    async def _transition(self, change: Transition, now: float) -> Task:
        """``transition``'s write (a backend may write several callers' changes together)."""
        return await self._write_events(
            change.task_id, lambda conn: self.queries.transition(conn, change, now), transaction=False
        )

    async def update_task(self, task_id: str, *, events: Sequence[NewEvent] = (), **fields: Any) -> Task:
        """Set result fields of a task, and append ``events`` about them in the same transaction.

        One transaction, so that no crash can leave a result recorded that no event announces:
        a task resumed after one sees the result recorded and does not announce it again.
        """
        now = self.now()
        if not events:
            return await self._write(lambda conn: self.queries.update_task(conn, task_id, now, **fields))

        def write(conn: Any) -> tuple[Task, list[Event]]:
            appended = self.queries.append_events(conn, task_id, events, now=now)
            return self.queries.update_task(conn, task_id, now, **fields), appended

        return await self._write_events(task_id, write)

    async def get_task(self, task_id: str) -> Task | None:
        return await self._read(lambda conn: self.queries.get_task(conn, task_id))

    async def task_ids_with_prefix(
        self, prefix: str, *, user_id: int | None = None, limit: int = 100
    ) -> list[str]:
        """Ids of the tasks whose id starts with ``prefix``, in order, ``limit`` at most; only
        ``user_id``'s when given. Ids are digits and lower-case letters: any other prefix
        matches none. A range of the ids' index (``task_ids``)."""
        return await self._read(
            lambda conn: self.queries.task_ids_with_prefix(conn, prefix, user_id=user_id, limit=limit)
        )

    async def list_tasks(
        self,
        *,
        user_id: int | None = None,
        statuses: Sequence[TaskStatus] | None = None,
        before: int | None = None,
        limit: int = 50,
        oldest_first: bool = False,
    ) -> list[tuple[int, Task]]:
        """Tasks with their cursor value, newest first (``before`` = a cursor from a prior page)."""
        return await self._read(
            lambda conn: self.queries.list_tasks(
                conn,
                user_id=user_id,
                statuses=statuses,
                before_seqno=before,
                limit=limit,
                oldest_first=oldest_first,
            )
        )

    async def count_by_status(self) -> dict[str, int]:
        return await self._read(self.queries.count_by_status)

    # -- events ---------------------------------------------------------------------------------

    async def append_events(self, task_id: str, new: Sequence[NewEvent]) -> list[Event]:
        now = self.now()

        def write(conn: Any) -> tuple[list[Event], list[Event]]:
            events = self.queries.append_events(conn, task_id, new, now=now)
            return events, events

        return await self._write_events(task_id, write, transaction=False)

    async def read_events(self, task_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        return await self._read(lambda conn: self.queries.read_events(conn, task_id, after, limit))

    # -- conversation ---------------------------------------------------------------------------

    async def append_message(
        self,
        task_id: str,
        role: str,
        content: Any,
        *,
        stop_reason: str | None = None,
        usage: Usage | None = None,
        events: Sequence[NewEvent] = (),
    ) -> int:
        """Append one turn of the conversation; returns its index.

        In the same transaction: ``usage``, the task's usage so far, and ``events`` (an agent
        turn is one commit, not three).
        """
        now = self.now()

        def write(conn: Any) -> tuple[int, list[Event]]:
            index = self.queries.append_message(conn, task_id, role, content, now, stop_reason)
            if usage is not None:
                self.queries.set_usage(conn, task_id, usage, now)
            return index, self.queries.append_events(conn, task_id, events, now=now)

        return await self._write_events(task_id, write)

    async def list_messages(self, task_id: str) -> list[dict[str, Any]]:
        return await self._read(lambda conn: self.queries.list_messages(conn, task_id))

    async def start_tool_call(
        self, task_id: str, tool_use_id: str, name: str, tool_input: Any, *, events: Sequence[NewEvent] = ()
    ) -> None:
        """Record that a tool call starts, with ``events`` in the same transaction."""
        now = self.now()

        def write(conn: Any) -> tuple[None, list[Event]]:
            self.queries.start_tool_call(conn, task_id, tool_use_id, name, tool_input, now)
            return None, self.queries.append_events(conn, task_id, events, now=now)

        await self._write_events(task_id, write)

    async def finish_tool_call(
        self, task_id: str, tool_use_id: str, output: str, is_error: bool, *, events: Sequence[NewEvent] = ()
    ) -> None:
        """Record a tool call's result, with ``events`` in the same transaction."""
        now = self.now()

        def write(conn: Any) -> tuple[None, list[Event]]:
            self.queries.finish_tool_call(conn, task_id, tool_use_id, output, is_error, now)
            return None, self.queries.append_events(conn, task_id, events, now=now)

        await self._write_events(task_id, write)

    async def list_tool_calls(self, task_id: str) -> list[dict[str, Any]]:
        return await self._read(lambda conn: self.queries.list_tool_calls(conn, task_id))

    async def add_input(self, task_id: str, text: str) -> Event:
        """Keep a user message for the agent (answer, follow-up) with its ``user.message`` event."""
        now = self.now()

        def write(conn: Any) -> tuple[Event, list[Event]]:
            events = self.queries.add_input(conn, task_id, text, now)
            return events[0], events

        return await self._write_events(task_id, write)

    async def take_inputs(self, task_id: str) -> list[str]:
        """The user messages not yet given to the agent, oldest first; they count as given."""
        now = self.now()
        return await self._write(lambda conn: self.queries.take_inputs(conn, task_id, now))

    async def pending_inputs(self, task_id: str) -> int:
        """How many user messages wait for the agent."""
        return await self._read(lambda conn: self.queries.pending_inputs(conn, task_id))

    # -- share links (``share_queries``: one SQL text for both backends) ------------------------

    async def add_share_link(
        self, task_id: str, user_id: int, token_hash: str, *, expires_at: float, live_cap: int
    ) -> ShareLink | None:
        """A new link to ``task_id`` made by ``user_id``; None (nothing stored) when the task
        has ``live_cap`` live links already."""
        link = ShareLink(new_share_id(), task_id, user_id, self.now(), expires_at, None)
        ph = self.queries.CLUSTER.placeholder
        added = await self._write(
            lambda conn: share_queries.insert_share(conn, link, token_hash, live_cap, ph=ph)
        )
        return link if added else None

    async def list_share_links(self, task_id: str) -> list[ShareLink]:
        ph = self.queries.CLUSTER.placeholder
        return await self._read(lambda conn: share_queries.list_shares(conn, task_id, ph=ph))

    async def share_link(self, share_id: str) -> ShareLink | None:
        """The link ``share_id``, live or not."""
        ph = self.queries.CLUSTER.placeholder
        return await self._read(lambda conn: share_queries.share_by_id(conn, share_id, ph=ph))

    async def revoke_share_link(self, task_id: str, share_id: str) -> ShareLink | None:
        """Revoke the task's link ``share_id`` (again: no change); None when there is none."""
        now, ph = self.now(), self.queries.CLUSTER.placeholder
        return await self._write(lambda conn: share_queries.revoke_share(conn, task_id, share_id, now, ph=ph))

    async def share_link_by_token_hash(self, token_hash: str) -> ShareLink | None:
        """The live link with this token hash (not revoked, not expired, maker enabled), or None."""
        now, ph = self.now(), self.queries.CLUSTER.placeholder
        return await self._read(lambda conn: share_queries.share_by_token_hash(conn, token_hash, now, ph=ph))
