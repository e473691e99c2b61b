"""The SQLite backend of the store: ``<data-dir>/agentd.db`` through apsw, WAL, one writer."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, TypeVar

import apsw
import trio

from ..cpu_pin import release as release_cpu
from ..notify.outbox import NOTIFYING_TYPES
from . import sqlite_queries as q, sqlite_space
from .base import StoreBase
from .datadir import lock_data_dir
from .models import Event, NewEvent
from .schema import migrate
from .sqlite_conns import ReaderPool, open_connection, scalar
from .sqlite_io import WriterThread

T = TypeVar("T")


class SqliteStore(StoreBase):
    """Tasks, events, conversations, users and tokens in one SQLite file.

    Every write runs on the single writer thread (group-committed); every read on a reader
    thread; nothing here blocks the Trio thread. Listeners added with ``add_listener`` see each
    committed batch of events, in commit order, on the Trio thread.
    """

    backend = "sqlite"
    queries: ClassVar[ModuleType] = q

    def __init__(self, data_dir: Path, *, synchronous: str = "NORMAL") -> None:
        super().__init__()
        self.data_dir = data_dir
        self.path = data_dir / "agentd.db"
        self._writer = WriterThread(self.path, synchronous=synchronous)
        self._readers = ReaderPool(self.path)
        self._lock_fd: int | None = None
        # One object for every append, so the writer can publish a batch's appends in one call.
        self._publish_appends = self._publish

    @classmethod
    async def open(cls, data_dir: Path, **kwargs: Any) -> SqliteStore:
        """Lock the data dir, migrate the schema, start the writer.

        Cancellation: the store is closed again before the cancellation goes on.
        """
        store = cls(data_dir, **kwargs)
        store._lock_fd = await trio.to_thread.run_sync(lock_data_dir, data_dir)
        try:
            await trio.to_thread.run_sync(store._migrate)
            store._writer.start()
        except BaseException:
            await store.aclose()
            raise
        return store

    def _migrate(self) -> None:
        conn = open_connection(self.path)
        try:
            sqlite_space.convert_at_open(conn, self.path)  # before the writer and the readers
            migrate(conn)
            # An upgrade that rewrote a table (v6 copies the events) leaves a WAL as large as
            # the copy; nobody else has the file open yet, so give that room back now.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    async def aclose(self) -> None:
        """Commit what is queued, stop the writer, close every connection, release the lock."""
        with trio.CancelScope(shield=True):
            await self._writer.aclose()
            await trio.to_thread.run_sync(self._readers.close)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def observe_writes(self, callback: Callable[[float], None]) -> None:
        """Have ``callback(seconds)`` told each write's round trip (the metrics use it)."""
        self._writer.on_round_trip = callback

    # -- the runners of StoreBase: the reader pool and the single writer ------------------------

    async def _read(self, fn: Callable[[apsw.Connection], T]) -> T:
        return await self._readers.run(fn)

    # Every job of the writer runs in a transaction (``transaction`` is always true here).

    async def _write(self, fn: Callable[[apsw.Connection], T], *, transaction: bool = True) -> T:
        return await self._writer.run(fn)

    async def _write_events(
        self,
        task_id: str | None,
        fn: Callable[[apsw.Connection], tuple[T, list[Event]]],
        *,
        transaction: bool = True,
    ) -> T:
        # One writer commits in submission order and runs on_commit in that order: the events
        # of every task are published in commit order without a lock per task.
        result, _ = await self._writer.run(fn, on_commit=lambda out: self._publish(out[1]))
        return result

    async def append_events(self, task_id: str, new: Sequence[NewEvent]) -> list[Event]:
        """As ``StoreBase.append_events``; the writer merges the appends waiting together.

        Cancellation: as ``_write``.
        """
        if not new:
            return []
        if not NOTIFYING_TYPES.isdisjoint(item.type for item in new):  # may write the outbox too
            return await super().append_events(task_id, new)
        return await self._writer.run_merged(
            q.append_event_batch, (task_id, new, self.now()), self._publish_appends
        )

    # -- maintenance ----------------------------------------------------------------------------

    async def backup(self, destination: Path) -> None:
        """An online backup (consistent while tasks write) into a new file at ``destination``,
        readable by the daemon's user only. ``OSError`` naming ``destination`` when it cannot
        be written (a file there already, no such directory, no permission, a full disk); a
        failed copy leaves no file behind.

        Cancellation: the copy runs to its end in its thread; the caller stops waiting.
        """

        def copy() -> None:
            release_cpu()  # a long copy, mostly outside the GIL: not on the event loop's CPU
            # Made here, exclusively: a backup never overwrites a file, and whatever stops it
            # being made is an OSError with the path, before SQLite opens it (an empty file is
            # an empty database).
            os.close(os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            try:
                target = apsw.Connection(str(destination))
                try:
                    source = open_connection(self.path, readonly=True)
                    try:
                        with target.backup("main", source, "main") as backup:
                            while not backup.done:
                                backup.step(1024)
                    finally:
                        source.close()
                finally:
                    target.close()
            except BaseException as exc:
                destination.unlink(missing_ok=True)
                if isinstance(exc, apsw.FullError):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(destination)) from exc
                raise

        await trio.to_thread.run_sync(copy, abandon_on_cancel=True)

    async def integrity_check(self) -> str:
        return await self._read(lambda conn: scalar(conn.execute("PRAGMA integrity_check")))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path, self.path.with_name("agentd.db-wal")) if p.exists())
