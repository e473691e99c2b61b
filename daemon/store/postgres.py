"""The PostgreSQL backend of the store (``StoreBase``), for one database several daemons share.

psycopg 3 is a blocking driver; every query runs on a worker thread (``trio.to_thread``) with a
connection from a ``psycopg_pool.ConnectionPool``, and a ``trio.CapacityLimiter`` as large as
the pool, so a thread never waits for a connection and the Trio loop never waits for either.
(An async driver would need asyncio; trio-asyncio for one dependency is more machinery than a
handful of threads.)

Each call is one short transaction. There is no writer thread: PostgreSQL serializes what must
be serialized with row locks (see ``postgres_queries``), which also holds across processes.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, TypeVar

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from ..errors import ConfigError, PermanentError
from . import postgres_queries as q
from .base import StoreBase
from .datadir import lock_data_dir

# The test clock's "work in flight" counter (tests/conftest.py); shared with the SQLite backend.
from .inflight import track
from .lifecycle import Transition
from .models import Event, RemoteNotice, Revoked, Task
from .postgres_batches import Outcome, TransitionBatches, write_batch
from .postgres_listen import listen
from .postgres_schema import LATEST, migrate, schema_version

T = TypeVar("T")
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
    return f"postgresql://{f'{user}@' if user else ''}{host}{f':{port}' if port else ''}/{dbname}"


class PostgresStore(StoreBase):
    """Tasks, events, conversations, users and tokens in one PostgreSQL database.

    Several stores (in several processes) may share the database: event seqs stay gap-free per
    task and a status change is decided on the current row. Listeners added with
    ``add_listener`` see the events committed by *this* store, on the Trio thread, after the
    commit, in commit order per task (writes of one task are ordered in this process; other
    processes' events are not seen here).
    """

    backend = "postgresql"
    queries: ClassVar[ModuleType] = q
    shared = True

    def __init__(self, dsn: str, *, pool_size: int = DEFAULT_POOL_SIZE, node_id: str | None = None) -> None:
        super().__init__()
        self.dsn = dsn
        self.node_id = node_id
        self.path = redact(dsn)  # what `agentctl status` shows as the database
        self._pool = ConnectionPool(
            dsn,
            min_size=min(2, pool_size),
            max_size=pool_size,
            open=False,
            name="agentd-store",
            # autocommit: each call opens its own explicit transaction (conn.transaction()).
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            configure=self._configure,
        )
        self._limiter = trio.CapacityLimiter(pool_size)
        # Per task (None: the claims, whose events are about several tasks).
        self._order_locks: dict[str | None, tuple[trio.Lock, list[int]]] = {}
        self._closed = False
        self._lock_fd: int | None = None
        self._size = 0
        self._size_at = -math.inf
        self._on_round_trip: Callable[[float], None] | None = None
        self._batches = TransitionBatches(self._write_batch)

    @classmethod
    async def open(cls, dsn: str, *, data_dir: Path | None = None, **kwargs: Any) -> PostgresStore:
        """Connect, migrate the schema (once across concurrently starting daemons), open the pool.

        ``data_dir``: this daemon's own directory, locked (``DataDirLocked``) while open.

        Raises ``StoreUnavailable`` when the server cannot be reached. Cancellation: the
        connecting thread is not abandoned; once it ends the store is closed again and the
        cancellation goes on.
        """
        store = cls(dsn, **kwargs)
        try:
            if data_dir is not None:  # the node's own files (workspaces, node id) stay its own
                store._lock_fd = await trio.to_thread.run_sync(lock_data_dir, data_dir)
            await store._thread(store._open_sync, abandon=False)
            await trio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            await store.aclose()
            raise
        return store

    def _configure(self, conn: psycopg.Connection) -> None:
        # The NOTIFY of each event write names its node, so that a node skips its own.
        conn.execute("SELECT set_config('agentd.node', %s, false)", (self.node_id or "",))

    async def watch_remote(
        self,
        on_notices: Callable[[list[RemoteNotice | Revoked] | None], None],
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
        wanted: Callable[[RemoteNotice | Revoked], bool] = lambda notice: True,
    ) -> None:
        """Call ``on_notices`` with other daemons' committed events and revocations
        (``postgres_listen.listen``)."""
        await listen(
            self.dsn,
            self.node_id,
            on_notices,
            connect_timeout=CONNECT_TIMEOUT_S,
            wanted=wanted,
            task_status=task_status,
        )

    def _open_sync(self) -> None:
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.OperationalError as exc:
            reason = " ".join(line.strip() for line in str(exc).splitlines()) or type(exc).__name__
            raise StoreUnavailable(f"cannot connect to the store {self.path}: {reason}") from None
        with conn:
            migrate(conn)
            self._refresh_size(conn)
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
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def observe_writes(self, callback: Callable[[float], None]) -> None:
        """Have ``callback(seconds)`` told each write's round trip (the metrics use it)."""
        self._on_round_trip = callback

    # -- running SQL off the Trio thread: the runners of StoreBase ------------------------------

    async def _thread(self, fn: Callable[[], T], *, abandon: bool) -> T:
        if self._closed:
            raise trio.ClosedResourceError("the store is closed")
        track(+1)  # the test clock must not jump while a thread works (tests/conftest.py)
        try:
            return await trio.to_thread.run_sync(fn, limiter=self._limiter, abandon_on_cancel=abandon)
        finally:
            track(-1)

    def _in_transaction(self, fn: Callable[[psycopg.Connection], T], transaction: bool = True) -> T:
        with self._pool.connection() as conn:
            if not transaction:  # each statement its own transaction (autocommit)
                return fn(conn)
            with conn.transaction():
                return fn(conn)

    async def _read(self, fn: Callable[[psycopg.Connection], T]) -> T:
        """Run ``fn(conn)`` in a transaction on a worker thread.

        Cancellation: the caller stops waiting; the query runs to its (short) end in its thread.
        """
        return await self._thread(lambda: self._in_transaction(fn), abandon=True)

    async def _write(self, fn: Callable[[psycopg.Connection], T], *, transaction: bool = True) -> T:
        """Run ``fn(conn)`` in a transaction (``transaction`` False: without one, each statement
        its own) on a worker thread; return once committed.

        Cancellation: not abandoned. The caller waits for the (short) transaction to end, so it
        always learns whether it committed, and every committed event is published.
        """
        started = time.perf_counter()
        result = await self._thread(lambda: self._in_transaction(fn, transaction), abandon=False)
        if self._on_round_trip is not None:
            self._on_round_trip(time.perf_counter() - started)
        return result

    @asynccontextmanager
    async def _task_order(self, task_id: str | None) -> AsyncIterator[None]:
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

    async def _write_events(
        self,
        task_id: str | None,
        fn: Callable[[psycopg.Connection], tuple[T, list[Event]]],
        *,
        transaction: bool = True,
    ) -> T:
        async with self._task_order(task_id):
            result, events = await self._write(fn, transaction=transaction)
            self._publish(events)
        return result

    async def _transition(self, change: Transition, now: float) -> Task:
        """Status changes go in batches (``postgres_batches``): while one is written, those asked
        for meanwhile gather for the next. Each is published once committed, in commit order per
        task. Cancellation: as ``_write``."""
        async with self._task_order(change.task_id):
            task, events = await self._batches.change(change, now)
            self._publish(events)
        return task

    async def _write_batch(self, items: list[tuple[Transition, float]]) -> list[Outcome]:
        def write(conn: psycopg.Connection) -> list[Outcome]:
            return write_batch(conn, items)

        return await self._write(write, transaction=False)

    # -- what differs from StoreBase ------------------------------------------------------------

    async def count_by_status(self) -> dict[str, int]:
        """Task counts by status; also refreshes ``size_bytes()`` when it is stale."""
        if time.monotonic() - self._size_at > SIZE_MAX_AGE_S:
            await self._read(self._refresh_size)
        return await super().count_by_status()

    def _refresh_size(self, conn: psycopg.Connection) -> None:
        self._size, self._size_at = q.database_size(conn), time.monotonic()

    # -- maintenance ----------------------------------------------------------------------------

    async def backup(self, destination: Path) -> None:
        """Not done by agentd for PostgreSQL: the server's own tools back it up consistently."""
        raise PermanentError(
            f"the store is PostgreSQL ({self.path}): back it up with pg_dump (or the server's "
            f"own backups); nothing was written to {destination}",
            code="backup_unsupported",
        )

    async def integrity_check(self) -> str:
        """ "ok" when the database answers and its schema is this agentd's; else what is wrong."""

        def check(conn: psycopg.Connection) -> str:
            version = schema_version(conn)
            self._refresh_size(conn)
            return "ok" if version == LATEST else f"schema version {version}, expected {LATEST}"

        return await self._read(check)

    def size_bytes(self) -> int:
        """The database's size as of the last refresh (open, ``count_by_status``: <= 30 s old)."""
        return self._size
