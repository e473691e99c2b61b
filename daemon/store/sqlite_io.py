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
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

import apsw
import trio

from .inflight import track

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


class _Job(Generic[T]):
    """One write: the function, who waits for it, and how it ended."""

    __slots__ = ("fn", "on_commit", "task", "result", "error")

    def __init__(self, fn: Callable[[apsw.Connection], T], on_commit: Callable[[T], None] | None,
                 task: trio.lowlevel.Task) -> None:
        self.fn = fn
        self.on_commit = on_commit
        self.task = task
        self.result: Any = None
        self.error: BaseException | None = None


_STOP = object()


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
        job: _Job[T] = _Job(fn, on_commit, trio.lowlevel.current_task())
        track(+1)
        started = time.perf_counter()
        self._queue.put(job)
        # Uncancellable, like a shielded wait, without a cancel scope and an Event per write:
        # ``_deliver`` reschedules this task once the batch has committed.
        await trio.lowlevel.wait_task_rescheduled(_refuse_abort)
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
        # The common case, every job succeeding, needs no savepoints. When one fails, the whole
        # batch is rolled back and run again with a savepoint per job, so that only the failed
        # job's writes are undone. (A job is a pure function of the connection: safe to rerun.)
        try:
            for job in jobs:
                job.result = job.fn(conn)
        except BaseException:  # noqa: BLE001 - sorted out per job just below
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                job.result = job.error = None
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


def _refuse_abort(raise_cancel: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


def _deliver(jobs: list[_Job[Any]]) -> None:
    for job in jobs:
        if job.error is None and job.on_commit is not None:
            try:
                job.on_commit(job.result)
            except Exception:  # a broken listener must not lose the other results
                log.exception("on_commit callback failed")
        trio.lowlevel.reschedule(job.task)
    track(-len(jobs))


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
