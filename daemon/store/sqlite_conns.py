"""Connections to the SQLite file besides the writer's: how one is opened, the readers, the checkpointer.

The single writer is in ``sqlite_io``; these never write the database's content.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import apsw
import trio

from ..cpu_pin import release as release_cpu
from .inflight import track

log = logging.getLogger(__name__)

T = TypeVar("T")
#: A row as apsw returns it, typed where it is read (the schema says what each column holds).
Row = tuple[Any, ...]
BUSY_TIMEOUT_MS = 5000
# The writer asks for a checkpoint once the WAL holds this many pages (SQLite's own default),
# and runs one itself only if the WAL outgrows the second figure (the checkpointer lags).
CHECKPOINT_PAGES = 1000
CHECKPOINT_INLINE_PAGES = 16000


def scalar(cursor: apsw.Cursor) -> Any:
    """The first value of the one row ``cursor`` yields (an aggregate, a PRAGMA)."""
    row = cursor.fetchone()
    assert row is not None, "the query yields one row"
    return row[0]


def open_connection(
    path: Path,
    *,
    synchronous: str = "NORMAL",
    readonly: bool = False,
    factory: type[apsw.Connection] = apsw.Connection,
) -> apsw.Connection:
    flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    conn = factory(str(path), flags=flags)
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    if not readonly:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class Checkpointer:
    """Copies the WAL back into the database on a thread of its own, off the writer's path.

    SQLite's automatic checkpoint runs inside the commit that crosses the threshold, on the
    writer thread, so every write waits for it. Here the writer's WAL hook only wakes this
    thread, which runs a PASSIVE checkpoint (it never blocks the writer or the readers) on its
    own connection. The WAL restarts from its beginning at the first write after a complete
    checkpoint, as with the automatic one.
    """

    def __init__(self, path: Path, synchronous: str) -> None:
        self._path = path
        self._synchronous = synchronous
        self._wanted = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def attach(self, writer: apsw.Connection) -> None:
        """Take over checkpointing from ``writer`` (replaces its automatic checkpoint)."""
        self._thread = thread = threading.Thread(
            target=self._main, name="agentd-sqlite-checkpoint", daemon=True
        )
        thread.start()
        assert thread.native_id is not None  # set once started
        release_cpu(thread.native_id)  # a checkpoint runs off the GIL: not on the loop's CPU
        writer.set_wal_hook(self._on_commit)

    def _on_commit(self, conn: apsw.Connection, dbname: str, pages: int) -> int:
        if pages >= CHECKPOINT_PAGES and not self._wanted.is_set():
            self._wanted.set()
        if pages >= CHECKPOINT_INLINE_PAGES:
            try:
                conn.wal_checkpoint(dbname, apsw.SQLITE_CHECKPOINT_PASSIVE)
            except apsw.BusyError:  # the checkpointer is at it
                pass
        return apsw.SQLITE_OK

    def _main(self) -> None:
        conn = open_connection(self._path, synchronous=self._synchronous)
        try:
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stopping:
                    return
                try:
                    conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
                except apsw.Error as exc:  # busy, or I/O: the next commit asks again
                    log.debug("sqlite checkpoint: %s", exc)
        finally:
            conn.close()

    def stop(self) -> None:
        """Stop the thread (blocking: from the writer thread, before it closes its connection)."""
        if self._thread is None:
            return
        self._stopping = True
        self._wanted.set()
        self._thread.join()


class ReaderPool:
    """Read-only connections, one per worker thread, used through ``trio.to_thread``."""

    def __init__(self, path: Path, *, threads: int = 4) -> None:
        self._path = path
        self._local = threading.local()
        self._all: list[apsw.Connection] = []
        self._idle = threading.Condition()
        self._busy = 0
        self._closed = False
        self._limiter = trio.CapacityLimiter(threads)

    async def run(self, fn: Callable[[apsw.Connection], T]) -> T:
        """Run ``fn(conn)`` on a reader thread.

        Cancellation: abandons the wait, the query runs to its (short) end in its thread;
        ``close`` waits for it.
        """
        track(+1)
        try:
            return await trio.to_thread.run_sync(
                self._call, fn, limiter=self._limiter, abandon_on_cancel=True
            )
        finally:
            track(-1)

    def _call(self, fn: Callable[[apsw.Connection], T]) -> T:
        with self._idle:
            if self._closed:
                raise trio.ClosedResourceError("the store is closed")
            self._busy += 1
        try:
            conn = getattr(self._local, "conn", None)
            if conn is None:
                release_cpu()  # a new worker thread: its queries may run beside the loop
                conn = open_connection(self._path, readonly=True)
                self._local.conn = conn
                with self._idle:
                    self._all.append(conn)
            with conn:  # one read transaction: a consistent snapshot for multi-statement reads
                return fn(conn)
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def close(self, timeout: float = 30.0) -> None:
        """Close every connection once no read is running (blocking: call it from a thread)."""
        with self._idle:
            self._closed = True
            self._idle.wait_for(lambda: self._busy == 0, timeout)
            for conn in self._all:
                conn.close()
            self._all.clear()
