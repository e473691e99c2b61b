"""One batch of the SQLite writer (``sqlite_io.WriterThread``), inside its transaction: the jobs
run in one ``BEGIN IMMEDIATE``, consecutive jobs of one ``merge`` as one call, and when one
fails the batch runs again with a savepoint per job. Runs on the writer thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import apsw
import trio

__all__ = ["Job", "Merge", "WriterConnection", "fail_batch", "run_batch"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class WriterConnection(apsw.Connection):
    """The writer thread's connection, with what it may remember between its transactions.

    ``last_seqs``: each task's last event seq as this connection last wrote or read it;
    ``task_nos``: each task's ``seqno``, the key of its events (see ``sqlite_appends``). Safe
    because this is the file's only writer; the writer forgets both whenever a transaction or
    savepoint is rolled back.
    """

    __slots__ = ("last_seqs", "task_nos")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_seqs: dict[str, int] = {}
        self.task_nos: dict[str, int] = {}

    def forget(self) -> None:
        self.last_seqs.clear()
        self.task_nos.clear()


Merge = Callable[[Any, list[Any]], list[Any]]


class Job(Generic[T]):
    """One write: the function (or merge function and its argument), who waits, how it ended."""

    __slots__ = ("arg", "error", "fn", "merge", "on_commit", "result", "started", "task")

    def __init__(
        self,
        fn: Callable[[apsw.Connection], T] | None,
        merge: Merge | None,
        arg: Any,
        on_commit: Callable[[T], None] | None,
        task: trio.lowlevel.Task,
    ) -> None:
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


def run_batch(conn: WriterConnection, jobs: list[Job[Any]]) -> None:
    """Run ``jobs`` in one transaction and commit, each job's result or error set on it. Raises
    only what it cannot sort out (a BEGIN or ROLLBACK that fails after a failed job): then the
    writer calls ``fail_batch``."""
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
        conn.forget()
        conn.execute("BEGIN IMMEDIATE")
        for job in jobs:
            job.result = job.error = None
            conn.execute("SAVEPOINT job")
            try:
                job.run_alone(conn)
            except BaseException as exc:  # noqa: BLE001 - given back to the job's caller
                job.error = exc
                conn.execute("ROLLBACK TO job")
                conn.forget()
            conn.execute("RELEASE job")
    try:
        conn.execute("COMMIT")
    except apsw.Error as exc:
        log.error("sqlite commit failed: %s", exc)
        if not conn.getautocommit():
            conn.execute("ROLLBACK")
        conn.forget()
        for job in jobs:
            job.error, job.result = exc, None


def fail_batch(conn: WriterConnection, jobs: list[Job[Any]], exc: Exception) -> None:
    """What ``run_batch`` cannot sort out itself (a ROLLBACK or BEGIN that fails, say on an
    I/O error or a full disk): every job of the batch fails with ``exc``, so that its caller
    learns it instead of waiting for ever, and the writer goes on with the next batch."""
    log.error("sqlite writer: a batch failed: %s", exc)
    for job in jobs:
        job.error, job.result = exc, None
    conn.forget()
    try:
        if not conn.getautocommit():
            conn.execute("ROLLBACK")
    except apsw.Error:
        pass


def _run_merging(conn: apsw.Connection, jobs: list[Job[Any]]) -> None:
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
