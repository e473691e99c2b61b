"""The store interface, written once over the backends' private runners and queries modules."""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, TypeVar

import trio

from ..states import TaskStatus
from . import share_queries
from .cluster_queries import ClaimRound
from .lifecycle import Transition
from .models import Event, NewEvent, NewTask, Node, NodeState, RemoteNotice, Task, Usage, User, new_task_id
from .outbox_store import OutboxStore
from .share_queries import ShareLink, new_share_id
from .upkeep_store import UpkeepStore

log = logging.getLogger(__name__)

T = TypeVar("T")
CLAIM_ROUNDS = 3  # claim statements per claim at most, when rounds meet other nodes' claims
EventListener = Callable[[list[Event]], None]


class StoreBase(OutboxStore, UpkeepStore, abc.ABC):
    """The one narrow, typed interface every store backend provides.

    The supervisor, API and agent loop see only this: tasks, events, the conversation, tool
    calls, users and tokens, notification targets and the outbox (``OutboxStore``), and a
    little maintenance. Each method below is the same for every
    backend: it calls the function of the same name in the backend's ``queries`` module (the
    same names and signatures in each) through three private runners the backend provides,
    ``_read``, ``_write`` and ``_write_events``. Every timestamp written is ``self.now()``
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

    # -- users and tokens -----------------------------------------------------------------------

    async def upsert_user(self, login: str, **fields: Any) -> User:
        now = self.now()
        return await self._write(lambda conn: self.queries.upsert_user(conn, login, now, **fields))

    async def user_by_id(self, user_id: int) -> User | None:
        return await self._read(lambda conn: self.queries.user_by_id(conn, user_id))

    async def set_github_token(self, user_id: int, token_enc: bytes | None) -> None:
        """Store the user's GitHub token, already encrypted by the caller (never plain text)."""
        now = self.now()
        await self._write(lambda conn: self.queries.set_github_token(conn, user_id, token_enc, now))

    async def github_token_enc(self, user_id: int) -> bytes | None:
        return await self._read(lambda conn: self.queries.github_token_enc(conn, user_id))

    async def user_by_login(self, login: str) -> User | None:
        return await self._read(lambda conn: self.queries.user_by_login(conn, login))

    async def user_by_github_id(self, github_id: int) -> User | None:
        return await self._read(lambda conn: self.queries.user_by_github_id(conn, github_id))

    async def sign_in_github(
        self, github_id: int, login: str, *, name: str | None, token_enc: bytes | None
    ) -> User:
        """The account of GitHub user ``github_id``, found by that id alone (made if none, as
        ``login`` or ``<login>-gh<id>``), with its encrypted token; see ``identity_queries``.
        Raises ``Forbidden`` (``account_disabled``, ``login_taken``), writing nothing."""
        now = self.now()
        return await self._write(
            lambda conn: self.queries.sign_in_github(conn, github_id, login, name, token_enc, now)
        )

    async def link_github(self, login: str, github_id: int, *, operator: bool = False) -> User:
        """An operator links the account ``login`` to GitHub user ``github_id`` (``operator``:
        and makes it an operator)."""
        now = self.now()
        return await self._write(lambda conn: self.queries.link_github(conn, login, github_id, operator, now))

    async def list_users(self) -> list[User]:
        return await self._read(self.queries.list_users)

    async def add_token(
        self, user_id: int, token_hash: str, *, expires_at: float | None = None, label: str | None = None
    ) -> None:
        now = self.now()
        await self._write(
            lambda conn: self.queries.insert_token(conn, user_id, token_hash, now, expires_at, label)
        )

    async def user_by_token_hash(self, token_hash: str) -> User | None:
        now = self.now()
        return await self._read(lambda conn: self.queries.user_by_token_hash(conn, token_hash, now))

    async def revoke_user(self, login: str) -> int:
        now = self.now()
        return await self._write(lambda conn: self.queries.revoke_user(conn, login, now))

    async def revoke_token(self, token_hash: str) -> bool:
        """Revoke the one token with this hash (a sign-out); False when none was live."""
        now = self.now()
        return await self._write(lambda conn: self.queries.revoke_token(conn, token_hash, now))

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

    # -- nodes, claims and leases (several daemons on one database) -----------------------------

    async def register_node(self, node: Node) -> None:
        await self._write(lambda conn: self.queries.CLUSTER.register_node(conn, node))

    async def heartbeat(self, node_id: str, *, state: NodeState, concurrency: int, running: int) -> bool:
        """Renew the node's lease; False when it was lost (its tasks are being taken over)."""
        now = self.now()
        return await self._write(
            lambda conn: self.queries.CLUSTER.heartbeat(
                conn, node_id, now, state=state, concurrency=concurrency, running=running
            )
        )

    async def leave(self, node_id: str) -> None:
        now = self.now()
        await self._write(lambda conn: self.queries.CLUSTER.leave(conn, node_id, now))

    async def list_nodes(self) -> list[Node]:
        return await self._read(self.queries.CLUSTER.list_nodes)

    async def mark_lost_nodes(self, lease_s: float) -> list[str]:
        now = self.now()
        return await self._write(lambda conn: self.queries.CLUSTER.mark_lost_nodes(conn, now, lease_s))

    async def orphaned_tasks(self, lease_s: float) -> list[tuple[str, str | None, int]]:
        """Running tasks no live node holds: ``(task_id, node_id, attempt)``."""
        now = self.now()
        return await self._read(lambda conn: self.queries.CLUSTER.orphaned_tasks(conn, now, lease_s))

    async def claim_tasks(
        self,
        node_id: str,
        limit: int,
        user_limit: int = 0,
        *,
        still_wanted: Callable[[], bool] = lambda: True,
    ) -> list[Task]:
        """Start up to ``limit`` queued tasks on ``node_id`` (see ``cluster_queries.claim_tasks``).

        ``still_wanted`` is asked once more in the transaction, just before claiming: a node
        that began draining while the claim waited for its turn claims nothing. A round that met
        other nodes' claims and left slots empty looks again at once (up to ``CLAIM_ROUNDS``
        transactions in all), so that a node does not wait for the next wake-up while work is
        queued.
        """
        claimed: list[Task] = []
        for _ in range(CLAIM_ROUNDS):
            now, wanted = self.now(), limit - len(claimed)

            def write(conn: Any, now: float = now, wanted: int = wanted) -> tuple[ClaimRound, list[Event]]:
                if not still_wanted():
                    return ClaimRound([], []), []
                round_ = self.queries.CLUSTER.claim_tasks(conn, node_id, wanted, user_limit, now)
                return round_, round_.events

            round_ = await self._write_events(None, write, transaction=False)
            claimed += round_.tasks
            if not round_.contended or len(claimed) >= limit:
                break
        return claimed

    async def due_retries(self, limit: int = 100) -> list[str]:
        now = self.now()
        return await self._read(lambda conn: self.queries.CLUSTER.due_retries(conn, now, limit))

    # -- what the daemons sharing the store agree on --------------------------------------------

    async def cluster_value(self, name: str, proposed: bytes, *, node: str) -> bytes:
        """The value every daemon sharing the store sees under ``name``: the one stored, or
        ``proposed`` (stored now, by ``node``) when there was none; the first to ask sets it."""
        now = self.now()
        return await self._write(
            lambda conn: self.queries.CLUSTER.cluster_value(conn, name, proposed, node, now)
        )

    async def swap_cluster_value(self, name: str, expected: bytes, new: bytes, *, node: str) -> bool:
        """Replace the value under ``name`` with ``new`` if it still is ``expected``; whether it was."""
        now = self.now()
        return await self._write(
            lambda conn: self.queries.CLUSTER.swap_cluster_value(conn, name, expected, new, node, now)
        )

    async def take_rate_token(self, key: str, *, per_min: float, burst: int) -> float:
        """Spend one token of the rate bucket ``key`` that every daemon sharing the store draws
        from (``burst`` at most, refilled at ``per_min`` a minute, on the store's clock): 0.0 if
        there was one, else the seconds until there is. One atomic write."""
        now = self.now()
        return await self._write(
            lambda conn: self.queries.CLUSTER.take_rate_token(conn, key, per_min, burst, now)
        )

    async def put_one_time(self, kind: str, key: str, value: str, *, ttl_s: float, limit: int) -> bool:
        """Keep ``value`` for ``ttl_s`` seconds of the store's clock, to be taken once, by any
        daemon sharing the store, with ``take_one_time(kind, key)``. ``key`` should be a hash
        of the secret the value is found by, so that the store holds nothing to redeem it with.
        False, and nothing kept, when ``limit`` unexpired values of ``kind`` are kept already.
        Expired values of every kind are deleted first."""
        now = self.now()
        return await self._write(
            lambda conn: self.queries.CLUSTER.put_one_time(conn, kind, key, value, now + ttl_s, limit, now)
        )

    async def take_one_time(self, kind: str, key: str) -> str | None:
        """The value kept under ``(kind, key)``, once: it is deleted in the statement that reads
        it, so of several callers on any daemons one gets it. None when there is none (never
        kept, already taken) or it has expired (deleted all the same)."""
        now = self.now()
        return await self._write(lambda conn: self.queries.CLUSTER.take_one_time(conn, kind, key, now))

    async def purge_one_time(self) -> int:
        """Delete the expired values ``put_one_time`` kept; how many (periodic maintenance)."""
        now = self.now()
        return await self._write(lambda conn: self.queries.CLUSTER.purge_one_time(conn, now))

    async def watch_remote(
        self,
        on_notices: Callable[[list[RemoteNotice] | None], None],
        *,
        task_status: Any,
        wanted: Callable[[RemoteNotice], bool] = lambda notice: True,
    ) -> None:
        """Call ``on_notices`` (on the Trio thread) with what other daemons commit; until cancelled.

        ``on_notices(None)``: notices may have been missed (listening began again after a lost
        connection): what the listener follows may have moved meanwhile. ``wanted(notice)`` is
        asked first, on the listening thread (so it may only read what it looks at): notices it
        turns down never reach the Trio thread.

        A store nobody else writes has nothing to tell: it only signals readiness.
        Cancellation: stops listening.
        """
        task_status.started()
        await trio.sleep_forever()
