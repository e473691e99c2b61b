"""SQLite I/O off the Trio thread: one writer thread with group commit, pooled reader threads.

All writes go through one thread that owns the only writing connection. It takes every job
that is waiting, runs them in one ``BEGIN IMMEDIATE`` transaction (each in its own savepoint,
so one failing job does not undo the others), commits once, then hands all results back to the
Trio thread in one callback, in submission order. Under load that is one fsync for many jobs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

import apsw
import trio

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BATCH = 512
BUSY_TIMEOUT_MS = 5000


def open_connection(path: Path, *, synchronous: str = "NORMAL", readonly: bool = False):
    flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    conn = apsw.Connection(str(path), flags=flags)
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    if not readonly:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@dataclass(eq=False)
class _Job(Generic[T]):
    fn: Callable[[apsw.Connection], T]
    on_commit: Callable[[T], None] | None
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


_STOP = object()

# Jobs handed to SQLite threads and not yet answered. Only tests read it: their mock clock must
# not jump ahead while real work is under way in a thread (see tests/conftest.py).
_in_flight = 0


def jobs_in_flight() -> int:
    return _in_flight


def _track(delta: int) -> None:
    global _in_flight
    _in_flight += delta


class WriterThread:
    """The single writer of one SQLite file."""

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        self._path = path
        self._synchronous = synchronous
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._closed = False
        # Told each write's round trip in seconds (queue + group commit), e.g. by the metrics.
        self.on_round_trip: Callable[[float], None] | None = None

    def start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._main, args=(ready, failure), name="agentd-sqlite-writer", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]

    async def run(
        self, fn: Callable[[apsw.Connection], T], on_commit: Callable[[T], None] | None = None
    ) -> T:
        """Run ``fn(conn)`` inside a write transaction and return its result once committed.

        ``on_commit(result)`` runs on the Trio thread after the commit, in commit order (the
        event log publishes live events from there).

        Cancellation: the wait is shielded. A submitted write is short, and the caller always
        learns whether it committed, so memory and the store never disagree.
        """
        if self._closed:
            raise trio.ClosedResourceError("the store is closed")
        job: _Job[T] = _Job(fn, on_commit)
        _track(+1)
        started = time.perf_counter()
        self._queue.put(job)
        with trio.CancelScope(shield=True):
            await job.done.wait()
        if self.on_round_trip is not None:
            self.on_round_trip(time.perf_counter() - started)
        if job.error is not None:
            raise job.error
        return job.result

    async def aclose(self) -> None:
        """Finish the queued writes, then stop the thread and close its connection."""
        if self._closed or self._thread is None:
            return
        self._closed = True
        self._queue.put(_STOP)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join)

    # -- the thread --------------------------------------------------------------------------

    def _main(self, ready: threading.Event, failure: list[BaseException]) -> None:
        try:
            conn = open_connection(self._path, synchronous=self._synchronous)
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            failure.append(exc)
            ready.set()
            return
        ready.set()
        try:
            while True:
                batch = [self._queue.get()]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = any(job is _STOP for job in batch)
                jobs = [job for job in batch if job is not _STOP]
                if jobs:
                    self._run_batch(conn, jobs)
                    assert self._token is not None
                    self._token.run_sync_soon(_deliver, jobs)
                if stop:
                    return
        finally:
            conn.close()

    @staticmethod
    def _run_batch(conn: apsw.Connection, jobs: list[_Job[Any]]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except apsw.Error as exc:
            for job in jobs:
                job.error = exc
            return
        for job in jobs:
            conn.execute("SAVEPOINT job")
            try:
                job.result = job.fn(conn)
            except BaseException as exc:  # noqa: BLE001 - given back to the job's caller
                job.error = exc
                conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
        try:
            conn.execute("COMMIT")
        except apsw.Error as exc:
            log.error("sqlite commit failed: %s", exc)
            if not conn.getautocommit():
                conn.execute("ROLLBACK")
            for job in jobs:
                job.error, job.result = exc, None


def _deliver(jobs: list[_Job[Any]]) -> None:
    for job in jobs:
        if job.error is None and job.on_commit is not None:
            try:
                job.on_commit(job.result)
            except Exception:  # a broken listener must not lose the other results
                log.exception("on_commit callback failed")
        job.done.set()
    _track(-len(jobs))


class ReaderPool:
    """Read-only connections, one per worker thread, used through ``trio.to_thread``."""

    def __init__(self, path: Path, *, threads: int = 4) -> None:
        self._path = path
        self._local = threading.local()
        self._all: list[apsw.Connection] = []
        self._lock = threading.Lock()
        self._limiter = trio.CapacityLimiter(threads)

    async def run(self, fn: Callable[[apsw.Connection], T]) -> T:
        """Run ``fn(conn)`` on a reader thread.

        Cancellation: abandons the wait, the query runs to its (short) end in its thread.
        """
        _track(+1)
        try:
            return await trio.to_thread.run_sync(
                self._call, fn, limiter=self._limiter, abandon_on_cancel=True
            )
        finally:
            _track(-1)

    def _call(self, fn: Callable[[apsw.Connection], T]) -> T:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = open_connection(self._path, readonly=True)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        with conn:  # one read transaction: a consistent snapshot for multi-statement reads
            return fn(conn)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
