"""SQLite I/O off the Trio thread: one writer thread with group commit, pooled reader threads.

All writes go through one thread that owns the only writing connection. It takes every job
that is waiting, runs them in one ``BEGIN IMMEDIATE`` transaction, commits once, then hands all
results back to the Trio thread in one callback, in submission order. Under load that is one
fsync for many jobs. One failing job does not undo the others: the batch is then run again with
a savepoint per job. Consecutive jobs of the same kind can be merged (``run_merged``): the event
appends of a batch become one ``INSERT`` and one ``UPDATE`` for all their tasks, and their events
reach the listeners in one call.
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
# The writer asks for a checkpoint once the WAL holds this many pages (SQLite's own default),
# and runs one itself only if the WAL outgrows the second figure (the checkpointer lags).
CHECKPOINT_PAGES = 1000
CHECKPOINT_INLINE_PAGES = 16000


class WriterConnection(apsw.Connection):
    """The writer thread's connection, with what it may remember between its transactions.

    ``last_seqs``: each task's event counter as this connection last wrote or read it (see
    ``sqlite_appends.append_event_batch``). Safe because this is the file's only writer; the
    writer forgets it whenever a transaction or savepoint is rolled back.
    """

    __slots__ = ("last_seqs",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_seqs: dict[str, int] = {}


def open_connection(path: Path, *, synchronous: str = "NORMAL", readonly: bool = False,
                    factory: type[apsw.Connection] = apsw.Connection):
    flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    conn = factory(str(path), flags=flags)
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    if not readonly:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


Merge = Callable[[Any, list[Any]], list[Any]]


class _Job(Generic[T]):
    """One write: the function (or merge function and its argument), who waits, how it ended."""

    __slots__ = ("fn", "merge", "arg", "on_commit", "task", "started", "result", "error")

    def __init__(self, fn: Callable[[apsw.Connection], T] | None, merge: Merge | None, arg: Any,
                 on_commit: Callable[[T], None] | None, task: trio.lowlevel.Task) -> None:
        self.fn = fn
        self.merge = merge
        self.arg = arg
        self.on_commit = on_commit
        self.task = task
        self.started = 0.0
        self.result: Any = None
        self.error: BaseException | None = None

    def run_alone(self, conn: apsw.Connection) -> None:
        if self.merge is None:
            self.result = self.fn(conn)  # type: ignore[misc]
            return
        (out,) = self.merge(conn, [self.arg])
        if isinstance(out, BaseException):
            raise out
        self.result = out


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
        return await self._submit(_Job(fn, None, None, on_commit, trio.lowlevel.current_task()))

    async def run_merged(self, merge: Merge, arg: Any, on_commit: Callable[[list[Any]], None] | None = None) -> list[Any]:
        """Like ``run``, for a job that may be merged with the waiting jobs of the same ``merge``.

        Consecutive jobs of a batch with the same ``merge`` run as one call,
        ``merge(conn, [arg, ...])``, which returns one outcome per argument: the job's result
        (a list), or an exception for that job alone (``merge`` must then have written nothing
        for it). If ``merge`` raises, the batch is run again with a savepoint per job and each
        of them alone (``merge(conn, [arg])``).

        ``on_commit`` is called once for the committed jobs of a batch that are next to each
        other and share it (the same object), with their results concatenated in order: the
        event appends of a batch reach the listeners in one call. Cancellation: as ``run``.
        """
        return await self._submit(_Job(None, merge, arg, on_commit, trio.lowlevel.current_task()))

    async def _submit(self, job: _Job[T]) -> T:
        if self._closed:
            raise trio.ClosedResourceError("the store is closed")
        track(+1)
        job.started = time.perf_counter()
        self._queue.put(job)
        # Uncancellable, like a shielded wait, without a cancel scope and an Event per write:
        # ``_deliver`` reschedules this task once the batch has committed.
        await trio.lowlevel.wait_task_rescheduled(_refuse_abort)
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
            conn = open_connection(self._path, synchronous=self._synchronous, factory=WriterConnection)
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            failure.append(exc)
            ready.set()
            return
        checkpointer = Checkpointer(self._path, self._synchronous)
        checkpointer.attach(conn)
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
                    self._token.run_sync_soon(self._deliver, jobs)
                if stop:
                    return
        finally:
            checkpointer.stop()
            conn.close()

    @staticmethod
    def _run_batch(conn: WriterConnection, jobs: list[_Job[Any]]) -> None:
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
            _run_merging(conn, jobs)
        except BaseException:  # noqa: BLE001 - sorted out per job just below
            conn.execute("ROLLBACK")
            conn.last_seqs.clear()
            conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                job.result = job.error = None
                conn.execute("SAVEPOINT job")
                try:
                    job.run_alone(conn)
                except BaseException as exc:  # noqa: BLE001 - given back to the job's caller
                    job.error = exc
                    conn.execute("ROLLBACK TO job")
                    conn.last_seqs.clear()
                conn.execute("RELEASE job")
        try:
            conn.execute("COMMIT")
        except apsw.Error as exc:
            log.error("sqlite commit failed: %s", exc)
            if not conn.getautocommit():
                conn.execute("ROLLBACK")
            conn.last_seqs.clear()
            for job in jobs:
                job.error, job.result = exc, None

    def _deliver(self, jobs: list[_Job[Any]]) -> None:
        """On the Trio thread, once a batch committed: its callbacks in order, then its waiters."""
        # The results of neighbouring merged jobs with one ``on_commit`` go out in one call (for
        # the appends, one pass through the listeners per batch instead of one per append).
        gathered: list[Any] = []
        gathered_for: Callable[[Any], None] | None = None
        for job in jobs:
            on_commit = job.on_commit
            if job.error is not None or on_commit is None:
                continue
            if job.merge is not None:
                if on_commit is not gathered_for:
                    _call(gathered_for, gathered)
                    gathered, gathered_for = [], on_commit
                gathered.extend(job.result)
                continue
            _call(gathered_for, gathered)
            gathered, gathered_for = [], None
            _call(on_commit, job.result)
        _call(gathered_for, gathered)
        observe = self.on_round_trip
        now = time.perf_counter()
        reschedule = trio.lowlevel.reschedule
        for job in jobs:
            if observe is not None:
                observe(now - job.started)
            reschedule(job.task)
        track(-len(jobs))


def _run_merging(conn: apsw.Connection, jobs: list[_Job[Any]]) -> None:
    """Run the jobs in order, each run of consecutive jobs with one ``merge`` as one call."""
    i, n = 0, len(jobs)
    while i < n:
        job = jobs[i]
        merge = job.merge
        if merge is None:
            job.result = job.fn(conn)  # type: ignore[misc]
            i += 1
            continue
        j = i + 1
        while j < n and jobs[j].merge is merge:
            j += 1
        group = jobs[i:j]
        for member, out in zip(group, merge(conn, [member.arg for member in group]), strict=True):
            if isinstance(out, BaseException):
                member.error = out
            else:
                member.result = out
        i = j


def _refuse_abort(raise_cancel: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


def _call(callback: Callable[[Any], None] | None, value: Any) -> None:
    if callback is None:
        return
    try:
        callback(value)
    except Exception:  # a broken listener must not lose the other results
        log.exception("on_commit callback failed")


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
        self._thread = threading.Thread(target=self._main, name="agentd-sqlite-checkpoint", daemon=True)
        self._thread.start()
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
