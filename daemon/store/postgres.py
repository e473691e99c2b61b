"""The PostgreSQL backend of the store: the same interface as ``SqliteStore``, for several daemons.

psycopg 3 is a blocking driver; every query runs on a worker thread (``trio.to_thread``) with a
connection from a ``psycopg_pool.ConnectionPool``, and a ``trio.CapacityLimiter`` as large as
the pool, so a thread never waits for a connection and the Trio loop never waits for either.
(An async driver would need asyncio; trio-asyncio for one dependency is more machinery than a
handful of threads.)

Each call is one short transaction. There is no writer thread: PostgreSQL serializes what must
be serialized with row locks (see ``postgres_queries``), which also holds across processes.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence, TypeVar

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from ..errors import ConfigError, PermanentError
from ..states import TaskStatus
from . import postgres_queries as q
from .models import Event, NewEvent, Task, User, new_task_id
from .postgres_schema import LATEST, migrate, schema_version

# The test clock's "work in flight" counter (tests/conftest.py); shared with the SQLite backend.
from .sqlite_io import _track

log = logging.getLogger(__name__)

T = TypeVar("T")
EventListener = Callable[[list[Event]], None]
DEFAULT_POOL_SIZE = 8
CONNECT_TIMEOUT_S = 10
SIZE_MAX_AGE_S = 30.0  # how stale size_bytes() may be; refreshed by count_by_status


class StoreUnavailable(ConfigError):
    """The database named by ``--store`` cannot be reached at startup."""

    code = "store_unavailable"


def redact(dsn: str) -> str:
    """The DSN without its password, for messages and ``agentctl status``."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable DSN)"
    params.pop("password", None)
    user, host = params.get("user"), params.get("host", "")
    port, dbname = params.get("port"), params.get("dbname", "")
    return f"postgresql://{user + '@' if user else ''}{host}{':' + str(port) if port else ''}/{dbname}"


class PostgresStore:
    """Tasks, events, conversations, users and tokens in one PostgreSQL database.

    Several stores (in several processes) may share the database: event seqs stay gap-free per
    task and a status change is decided on the current row. Listeners added with
    ``add_listener`` see the events committed by *this* store, on the Trio thread, after the
    commit, in commit order per task (writes of one task are ordered in this process; other
    processes' events are not seen here).
    """

    backend = "postgresql"

    def __init__(self, dsn: str, *, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        self.dsn = dsn
        self.path = redact(dsn)  # what `agentctl status` shows as the database
        self._pool = ConnectionPool(
            dsn, min_size=min(2, pool_size), max_size=pool_size, open=False, name="agentd-store",
            # autocommit: each call opens its own explicit transaction (conn.transaction()).
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
        )
        self._limiter = trio.CapacityLimiter(pool_size)
        self._listeners: list[EventListener] = []
        self._order_locks: dict[str, tuple[trio.Lock, list[int]]] = {}
        self._closed = False
        self._size = 0
        self._size_at = -math.inf
        self._on_round_trip: Callable[[float], None] | None = None
        self.now: Callable[[], float] = time.time

    @classmethod
    async def open(cls, dsn: str, **kwargs: Any) -> PostgresStore:
        """Connect, migrate the schema (once across concurrently starting daemons), open the pool.

        Raises ``StoreUnavailable`` when the server cannot be reached. Cancellation: the
        connecting thread is not abandoned; once it ends the store is closed again and the
        cancellation goes on.
        """
        store = cls(dsn, **kwargs)
        try:
            await store._thread(store._open_sync, abandon=False)
            await trio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            await store.aclose()
            raise
        return store

    def _open_sync(self) -> None:
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.OperationalError as exc:
            reason = " ".join(line.strip() for line in str(exc).splitlines()) or type(exc).__name__
            raise StoreUnavailable(f"cannot connect to the store {self.path}: {reason}") from None
        with conn:
            migrate(conn)
            self._size, self._size_at = q.database_size(conn), time.monotonic()
        self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)

    async def aclose(self) -> None:
        """Refuse new calls and close the pool (connections still out close when returned).

        Cancellation: shielded; the pool is always closed.
        """
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._pool.close)

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def observe_writes(self, callback: Callable[[float], None]) -> None:
        """Have ``callback(seconds)`` told each write's round trip (the metrics use it)."""
        self._on_round_trip = callback

    # -- running SQL off the Trio thread --------------------------------------------------------

    async def _thread(self, fn: Callable[[], T], *, abandon: bool) -> T:
        if self._closed:
            raise trio.ClosedResourceError("the store is closed")
        _track(+1)  # the test clock must not jump while a thread works (tests/conftest.py)
        try:
            return await trio.to_thread.run_sync(fn, limiter=self._limiter, abandon_on_cancel=abandon)
        finally:
            _track(-1)

    def _in_transaction(self, fn: Callable[[psycopg.Connection], T]) -> T:
        with self._pool.connection() as conn, conn.transaction():
            return fn(conn)

    async def _read(self, fn: Callable[[psycopg.Connection], T]) -> T:
        """Run ``fn(conn)`` in a transaction on a worker thread.

        Cancellation: the caller stops waiting; the query runs to its (short) end in its thread.
        """
        return await self._thread(lambda: self._in_transaction(fn), abandon=True)

    async def _write(self, fn: Callable[[psycopg.Connection], T]) -> T:
        """Run ``fn(conn)`` in a transaction on a worker thread; return once committed.

        Cancellation: not abandoned. The caller waits for the (short) transaction to end, so it
        always learns whether it committed, and every committed event is published.
        """
        started = time.perf_counter()
        result = await self._thread(lambda: self._in_transaction(fn), abandon=False)
        if self._on_round_trip is not None:
            self._on_round_trip(time.perf_counter() - started)
        return result

    @asynccontextmanager
    async def _task_order(self, task_id: str) -> AsyncIterator[None]:
        """Let this process's event writes of one task commit and publish one at a time.

        The row lock already serializes them in the database; this also keeps their publishing
        in commit order, which threads returning in any order would not. Waiting for the lock
        is cancellable (nothing was written yet).
        """
        lock, users = self._order_locks.setdefault(task_id, (trio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._order_locks[task_id]

    async def _write_events(self, task_id: str, fn: Callable[[psycopg.Connection], tuple[T, list[Event]]]) -> T:
        async with self._task_order(task_id):
            result, events = await self._write(fn)
            self._publish(events)
        return result

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
    ) -> tuple[Task, bool]:
        """Insert a queued task; with a known idempotency key return the first one (created=False)."""
        now = self.now()
        task_id = new_task_id(now)

        def write(conn: psycopg.Connection) -> tuple[tuple[Task, bool], list[Event]]:
            task, events, created = q.insert_task(
                conn, task_id=task_id, user_id=user_id, repo_url=repo_url, prompt=prompt,
                base_branch=base_branch, budget=budget or {}, idempotency_key=idempotency_key, now=now,
            )
            return (task, created), events

        return await self._write_events(task_id, write)

    async def transition(
        self,
        task_id: str,
        target: TaskStatus,
        *,
        expect: TaskStatus | None = None,
        reason: str | None = None,
        error: str | None = None,
        due_at: float | None = None,
        attempt_delta: int = 0,
        events_before: Sequence[NewEvent] = (),
    ) -> Task:
        """Validate and apply a status change, with its events, in one transaction.

        Two nodes changing one task at once: the second waits for the first's commit and is
        validated against the status it left (``InvalidTransition`` if no longer allowed).
        """
        now = self.now()
        return await self._write_events(task_id, lambda conn: q.transition(
            conn, task_id, target, now=now, expect=expect, reason=reason, error=error,
            due_at=due_at, attempt_delta=attempt_delta, events_before=events_before,
        ))

    async def update_task(self, task_id: str, **fields: Any) -> Task:
        now = self.now()
        return await self._write(lambda conn: q.update_task(conn, task_id, now, **fields))

    async def get_task(self, task_id: str) -> Task | None:
        return await self._read(lambda conn: q.get_task(conn, task_id))

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
        return await self._read(lambda conn: q.list_tasks(
            conn, user_id=user_id, statuses=statuses, before_seqno=before, limit=limit,
            oldest_first=oldest_first,
        ))

    async def count_by_status(self) -> dict[str, int]:
        """Task counts by status; also refreshes ``size_bytes()`` when it is stale."""
        def read(conn: psycopg.Connection) -> dict[str, int]:
            if time.monotonic() - self._size_at > SIZE_MAX_AGE_S:
                self._size, self._size_at = q.database_size(conn), time.monotonic()
            return q.count_by_status(conn)

        return await self._read(read)

    # -- events ---------------------------------------------------------------------------------

    async def append_events(self, task_id: str, new: Sequence[NewEvent]) -> list[Event]:
        now = self.now()

        def write(conn: psycopg.Connection) -> tuple[list[Event], list[Event]]:
            events = q.append_events(conn, task_id, new, now=now)
            return events, events

        return await self._write_events(task_id, write)

    async def read_events(self, task_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        return await self._read(lambda conn: q.read_events(conn, task_id, after, limit))

    # -- conversation ---------------------------------------------------------------------------

    async def append_message(self, task_id: str, role: str, content: Any, *,
                             stop_reason: str | None = None) -> int:
        """Append one turn of the conversation; returns its index."""
        now = self.now()
        return await self._write(
            lambda conn: q.append_message(conn, task_id, role, content, now, stop_reason)
        )

    async def list_messages(self, task_id: str) -> list[dict[str, Any]]:
        return await self._read(lambda conn: q.list_messages(conn, task_id))

    async def start_tool_call(self, task_id: str, tool_use_id: str, name: str, tool_input: Any) -> None:
        now = self.now()
        await self._write(lambda conn: q.start_tool_call(conn, task_id, tool_use_id, name, tool_input, now))

    async def finish_tool_call(self, task_id: str, tool_use_id: str, output: str, is_error: bool) -> None:
        now = self.now()
        await self._write(lambda conn: q.finish_tool_call(conn, task_id, tool_use_id, output, is_error, now))

    async def list_tool_calls(self, task_id: str) -> list[dict[str, Any]]:
        return await self._read(lambda conn: q.list_tool_calls(conn, task_id))

    async def add_input(self, task_id: str, text: str) -> Event:
        """Keep a user message for the agent (answer, follow-up) with its ``user.message`` event."""
        now = self.now()

        def write(conn: psycopg.Connection) -> tuple[Event, list[Event]]:
            events = q.add_input(conn, task_id, text, now)
            return events[0], events

        return await self._write_events(task_id, write)

    async def take_inputs(self, task_id: str) -> list[str]:
        """The user messages not yet given to the agent, oldest first; they count as given."""
        now = self.now()
        return await self._write(lambda conn: q.take_inputs(conn, task_id, now))

    async def pending_inputs(self, task_id: str) -> int:
        """How many user messages wait for the agent."""
        return await self._read(lambda conn: q.pending_inputs(conn, task_id))

    # -- users and tokens -----------------------------------------------------------------------

    async def upsert_user(self, login: str, **fields: Any) -> User:
        now = self.now()
        return await self._write(lambda conn: q.upsert_user(conn, login, now, **fields))

    async def user_by_id(self, user_id: int) -> User | None:
        return await self._read(lambda conn: q.user_by_id(conn, user_id))

    async def set_github_token(self, user_id: int, token_enc: bytes | None) -> None:
        """Store the user's GitHub token, already encrypted by the caller (never plain text)."""
        now = self.now()
        await self._write(lambda conn: q.set_github_token(conn, user_id, token_enc, now))

    async def github_token_enc(self, user_id: int) -> bytes | None:
        return await self._read(lambda conn: q.github_token_enc(conn, user_id))

    async def user_by_login(self, login: str) -> User | None:
        return await self._read(lambda conn: q.user_by_login(conn, login))

    async def list_users(self) -> list[User]:
        return await self._read(q.list_users)

    async def add_token(self, user_id: int, token_hash: str, *, expires_at: float | None = None,
                        label: str | None = None) -> None:
        now = self.now()
        await self._write(lambda conn: q.insert_token(conn, user_id, token_hash, now, expires_at, label))

    async def user_by_token_hash(self, token_hash: str) -> User | None:
        now = self.now()
        return await self._read(lambda conn: q.user_by_token_hash(conn, token_hash, now))

    async def revoke_user(self, login: str) -> int:
        now = self.now()
        return await self._write(lambda conn: q.revoke_user(conn, login, now))

    # -- maintenance ----------------------------------------------------------------------------

    async def backup(self, destination: Path) -> None:
        """Not done by agentd for PostgreSQL: the server's own tools back it up consistently."""
        raise PermanentError(
            f"the store is PostgreSQL ({self.path}): back it up with pg_dump (or the server's "
            f"own backups); nothing was written to {destination}",
            code="backup_unsupported",
        )

    async def integrity_check(self) -> str:
        """"ok" when the database answers and its schema is this agentd's; else what is wrong."""
        def check(conn: psycopg.Connection) -> str:
            version = schema_version(conn)
            self._size, self._size_at = q.database_size(conn), time.monotonic()
            return "ok" if version == LATEST else f"schema version {version}, expected {LATEST}"

        return await self._read(check)

    def size_bytes(self) -> int:
        """The database's size as of the last refresh (open, ``count_by_status``: <= 30 s old)."""
        return self._size
