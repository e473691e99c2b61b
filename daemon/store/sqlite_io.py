"""SQLite writes off the Trio thread: one writer thread with group commit (readers: sqlite_conns).

All writes go through one thread that owns the only writing connection. It takes every job
that is waiting, runs them in one ``BEGIN IMMEDIATE`` transaction, commits once, then hands all
results back to the Trio thread in one callback, in submission order. Under load that is one
fsync for many jobs. One failing job does not undo the others: the batch is then run again with
a savepoint per job. Consecutive jobs of the same kind can be merged (``run_merged``): the event
appends of a batch become one ``INSERT``, and their events reach the listeners in one call. While
many tasks write, the writer lingers a little before a batch to make it larger, and batches that
commit before the Trio thread took the previous ones go back with it, with one wake-up. What
runs inside one batch's transaction (savepoints, merging, failures) is ``sqlite_batch.py``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import apsw
import trio

from .inflight import track
from .sqlite_batch import Job, Merge, WriterConnection, fail_batch, run_batch
from .sqlite_conns import Checkpointer, open_connection
from .trio_idle import TrioIdle

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BATCH = 512
# Lingering: after a batch of at least LINGER_AFTER jobs, the writer waits up to LINGER_S for
# more before it begins the next one, unless the Trio thread has nothing to do (see ``_take``).
LINGER_AFTER = 4
LINGER_S = 0.002


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
        # Committed jobs the Trio thread has yet to take, and whether it has been told to.
        self._done: list[Job[Any]] = []
        self._done_lock = threading.Lock()
        self._delivery_due = False
        # Told each write's round trip in seconds (queue + group commit), e.g. by the metrics.
        self.on_round_trip: Callable[[float], None] | None = None
        self.linger_after, self.linger_s = LINGER_AFTER, LINGER_S
        self._trio_idle = TrioIdle(self)

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
        job = Job(fn, None, None, on_commit, trio.lowlevel.current_task())
        self._enqueue(job)
        await trio.lowlevel.wait_task_rescheduled(_refuse_abort)
        if job.error is not None:
            raise job.error
        return job.result

    async def run_merged(
        self, merge: Merge, arg: Any, on_commit: Callable[[list[Any]], None] | None = None
    ) -> list[Any]:
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
        # (The wait is written out here and in ``run``, not shared: a coroutine between the
        # caller and the wait costs each of thousands of appends a second a little.)
        job = Job(None, merge, arg, on_commit, trio.lowlevel.current_task())
        self._enqueue(job)
        await trio.lowlevel.wait_task_rescheduled(_refuse_abort)
        if job.error is not None:
            raise job.error
        return job.result

    def _enqueue(self, job: Job[Any]) -> None:
        """Queue ``job``; its caller then waits (uncancellable like a shielded wait, without a
        cancel scope and an Event per write) until ``_deliver`` reschedules it."""
        if self._closed:
            raise trio.ClosedResourceError("the store is closed")
        track(+1)
        job.started = time.perf_counter()
        self._queue.put(job)

    async def aclose(self) -> None:
        """Finish the queued writes, then stop the thread and close its connection."""
        if self._closed or self._thread is None:
            return
        self._closed = True
        self._queue.put(_STOP)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join)
        self._trio_idle.watch(False)

    # One batch in one transaction (sqlite_batch.py); an attribute so tests can break it.
    _run_batch = staticmethod(run_batch)

    # -- the thread --------------------------------------------------------------------------

    def _main(self, ready: threading.Event, failure: list[BaseException]) -> None:
        try:
            conn = open_connection(self._path, synchronous=self._synchronous, factory=WriterConnection)
            assert isinstance(conn, WriterConnection)
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            failure.append(exc)
            ready.set()
            return
        checkpointer = Checkpointer(self._path, self._synchronous)
        checkpointer.attach(conn)
        ready.set()
        try:
            previous = 0
            while True:
                jobs, stop = self._take(previous)
                if jobs:
                    try:
                        self._run_batch(conn, jobs)
                    except Exception as exc:  # noqa: BLE001 - given to the batch's callers
                        fail_batch(conn, jobs, exc)
                    self._hand_back(jobs)
                if stop:
                    return
                previous = len(jobs)
        finally:
            checkpointer.stop()
            conn.close()

    def _take(self, previous: int) -> tuple[list[Job[Any]], bool]:
        """The next batch (waiting for its first job), and whether the store is closing.

        A commit costs about as much CPU as writing a few dozen events (BEGIN, COMMIT, the WAL
        frames, the Trio thread's wake-up, the handoffs of the GIL between the two threads),
        so while many tasks write, fewer and larger commits cost less. After a batch of
        ``linger_after`` jobs or more, the writer waits up to ``linger_s`` for more, but not
        once the Trio thread, where every write comes from, goes to sleep with no timer due
        within ``linger_s``: nothing more is coming then (every writer already waits on this
        one). A writer alone (batches of one) never waits, and Trio's sleep is watched only
        after large batches (``_deliver``). One wait, not a poll: each wake-up of this thread
        costs a GIL handoff.
        """
        batch: list[Any] = [self._queue.get()]
        self._drain(batch)
        idle = self._trio_idle
        if (
            previous >= self.linger_after
            and idle.watching
            and not idle.sleeping
            and len(batch) < MAX_BATCH
            and batch[-1] is not _STOP
        ):
            idle.woken.clear()
            idle.lingering = True  # before looking at ``sleeping`` again: see TrioIdle
            try:
                if not idle.sleeping:
                    idle.woken.wait(self.linger_s)
            finally:
                idle.lingering = False
            self._drain(batch)
        # Nothing is queued after _STOP (``_enqueue`` refuses once closed): it can only be last.
        if batch[-1] is _STOP:
            return batch[:-1], True
        return batch, False

    def _drain(self, batch: list[Any]) -> None:
        get = self._queue.get_nowait
        while len(batch) < MAX_BATCH and batch[-1] is not _STOP:
            try:
                batch.append(get())
            except queue.Empty:
                return

    def _hand_back(self, jobs: list[Job[Any]]) -> None:
        """Give a committed batch to the Trio thread, waking it only if it was not woken yet.

        Waking Trio from another thread costs it about as much as delivering a small batch
        (the wake-up socket, the loop's turn, the entry queue's task); while it is busy, the
        batches that commit meanwhile join the one it has yet to take, in commit order.
        """
        with self._done_lock:
            self._done += jobs
            if self._delivery_due:
                return
            self._delivery_due = True
        assert self._token is not None
        self._token.run_sync_soon(self._deliver_done)

    def _deliver_done(self) -> None:
        with self._done_lock:
            jobs, self._done = self._done, []
            self._delivery_due = False
        self._deliver(jobs)

    def _deliver(self, jobs: list[Job[Any]]) -> None:
        """On the Trio thread, once jobs committed: their callbacks in order, then their waiters."""
        # Watch Trio's sleep only while batches are large: it costs every turn of its loop.
        if len(jobs) >= self.linger_after:
            self._trio_idle.watch(True)
        elif len(jobs) == 1:
            self._trio_idle.watch(False)
        # The results of neighbouring merged jobs with one ``on_commit`` go out in one call (for
        # the appends, one pass through the listeners per batch instead of one per append).
        # The waiters resume only after this returns: rescheduling them as we go is the same.
        gathered: list[Any] = []
        gathered_for: Callable[[Any], None] | None = None
        observe = self.on_round_trip
        now = time.perf_counter()
        reschedule = trio.lowlevel.reschedule
        for job in jobs:
            if observe is not None:
                observe(now - job.started)
            reschedule(job.task)
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
        track(-len(jobs))


def _refuse_abort(raise_cancel: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


def _call(callback: Callable[[Any], None] | None, value: Any) -> None:
    if callback is None:
        return
    try:
        callback(value)
    except Exception:  # a broken listener must not lose the other results
        log.exception("on_commit callback failed")
