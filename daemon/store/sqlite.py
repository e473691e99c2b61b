"""The SQLite backend of the store: ``<data-dir>/agentd.db`` through apsw, WAL, one writer."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import apsw
import trio

from ..errors import ConfigError
from ..states import TaskStatus
from . import sqlite_queries as q
from .models import Event, NewEvent, Task, User, new_task_id
from .schema import migrate
from .sqlite_io import ReaderPool, WriterThread, open_connection

EventListener = Callable[[list[Event]], None]


class DataDirLocked(ConfigError):
    code = "data_dir_locked"


def _lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on ``<data-dir>/agentd.lock`` for as long as the store is open."""
    path = data_dir / "agentd.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise DataDirLocked(
                f"another agentd (pid {holder}) is already using the data dir {data_dir}"
            ) from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class SqliteStore:
    """Tasks, events, conversations, users and tokens in one SQLite file.

    Every write runs on the single writer thread (group-committed); every read on a reader
    thread; nothing here blocks the Trio thread. Listeners added with ``add_listener`` see each
    committed batch of events, in commit order, on the Trio thread.
    """

    backend = "sqlite"

    def __init__(self, data_dir: Path, *, synchronous: str = "NORMAL") -> None:
        self.data_dir = data_dir
        self.path = data_dir / "agentd.db"
        self._writer = WriterThread(self.path, synchronous=synchronous)
        self._readers = ReaderPool(self.path)
        self._listeners: list[EventListener] = []
        self._lock_fd: int | None = None
        self.now: Callable[[], float] = time.time

    @classmethod
    async def open(cls, data_dir: Path, **kwargs: Any) -> "SqliteStore":
        """Lock the data dir, migrate the schema, start the writer.

        Cancellation: the store is closed again before the cancellation goes on.
        """
        data_dir.mkdir(parents=True, exist_ok=True)
        store = cls(data_dir, **kwargs)
        store._lock_fd = _lock_data_dir(data_dir)
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
            migrate(conn)
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

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def observe_writes(self, callback: Callable[[float], None]) -> None:
        """Have ``callback(seconds)`` told each write's round trip (the metrics use it)."""
        self._writer.on_round_trip = callback

    def _publish(self, events: list[Event]) -> None:
        if events:
            for listener in self._listeners:
                listener(events)

    async def _write_events(self, fn: Callable[[apsw.Connection], tuple[Any, list[Event]]]) -> Any:
        """Run a write that returns ``(result, events)``; publish the events once committed."""
        result, _ = await self._writer.run(fn, on_commit=lambda out: self._publish(out[1]))
        return result

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

        def write(conn: apsw.Connection) -> tuple[tuple[Task, bool], list[Event]]:
            task, events, created = q.insert_task(
                conn, task_id=new_task_id(now), user_id=user_id, repo_url=repo_url, prompt=prompt,
                base_branch=base_branch, budget=budget or {}, idempotency_key=idempotency_key, now=now,
            )
            return (task, created), events

        return await self._write_events(write)

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
        """Validate and apply a status change, with its events, in one transaction."""
        now = self.now()
        return await self._write_events(lambda conn: q.transition(
            conn, task_id, target, now=now, expect=expect, reason=reason, error=error,
            due_at=due_at, attempt_delta=attempt_delta, events_before=events_before,
        ))

    async def update_task(self, task_id: str, **fields: Any) -> Task:
        now = self.now()
        return await self._writer.run(lambda conn: q.update_task(conn, task_id, now, **fields))

    async def get_task(self, task_id: str) -> Task | None:
        return await self._readers.run(lambda conn: q.get_task(conn, task_id))

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
        return await self._readers.run(lambda conn: q.list_tasks(
            conn, user_id=user_id, statuses=statuses, before_seqno=before, limit=limit,
            oldest_first=oldest_first,
        ))

    async def count_by_status(self) -> dict[str, int]:
        return await self._readers.run(q.count_by_status)

    # -- events ---------------------------------------------------------------------------------

    async def append_events(self, task_id: str, new: Sequence[NewEvent]) -> list[Event]:
        now = self.now()

        def write(conn: apsw.Connection) -> tuple[list[Event], list[Event]]:
            events = q.append_events(conn, task_id, new, now=now)
            return events, events

        return await self._write_events(write)

    async def read_events(self, task_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        return await self._readers.run(lambda conn: q.read_events(conn, task_id, after, limit))

    # -- conversation ---------------------------------------------------------------------------

    async def append_message(self, task_id: str, role: str, content: Any, *,
                             stop_reason: str | None = None) -> int:
        """Append one turn of the conversation; returns its index."""
        now = self.now()
        return await self._writer.run(
            lambda conn: q.append_message(conn, task_id, role, content, now, stop_reason)
        )

    async def list_messages(self, task_id: str) -> list[dict[str, Any]]:
        return await self._readers.run(lambda conn: q.list_messages(conn, task_id))

    async def start_tool_call(self, task_id: str, tool_use_id: str, name: str, tool_input: Any) -> None:
        now = self.now()
        await self._writer.run(lambda conn: q.start_tool_call(conn, task_id, tool_use_id, name, tool_input, now))

    async def finish_tool_call(self, task_id: str, tool_use_id: str, output: str, is_error: bool) -> None:
        now = self.now()
        await self._writer.run(lambda conn: q.finish_tool_call(conn, task_id, tool_use_id, output, is_error, now))

    async def list_tool_calls(self, task_id: str) -> list[dict[str, Any]]:
        return await self._readers.run(lambda conn: q.list_tool_calls(conn, task_id))

    async def add_input(self, task_id: str, text: str) -> Event:
        """Keep a user message for the agent (answer, follow-up) with its ``user.message`` event."""
        now = self.now()

        def write(conn: apsw.Connection) -> tuple[Event, list[Event]]:
            events = q.add_input(conn, task_id, text, now)
            return events[0], events

        return await self._write_events(write)

    async def take_inputs(self, task_id: str) -> list[str]:
        """The user messages not yet given to the agent, oldest first; they count as given."""
        now = self.now()
        return await self._writer.run(lambda conn: q.take_inputs(conn, task_id, now))

    async def pending_inputs(self, task_id: str) -> int:
        """How many user messages wait for the agent."""
        return await self._readers.run(lambda conn: q.pending_inputs(conn, task_id))

    # -- users and tokens -----------------------------------------------------------------------

    async def upsert_user(self, login: str, **fields: Any) -> User:
        now = self.now()
        return await self._writer.run(lambda conn: q.upsert_user(conn, login, now, **fields))

    async def user_by_id(self, user_id: int) -> User | None:
        return await self._readers.run(lambda conn: q.user_by_id(conn, user_id))

    async def set_github_token(self, user_id: int, token_enc: bytes | None) -> None:
        """Store the user's GitHub token, already encrypted by the caller (never plain text)."""
        now = self.now()
        await self._writer.run(lambda conn: q.set_github_token(conn, user_id, token_enc, now))

    async def github_token_enc(self, user_id: int) -> bytes | None:
        return await self._readers.run(lambda conn: q.github_token_enc(conn, user_id))

    async def user_by_login(self, login: str) -> User | None:
        return await self._readers.run(lambda conn: q.user_by_login(conn, login))

    async def list_users(self) -> list[User]:
        return await self._readers.run(q.list_users)

    async def add_token(self, user_id: int, token_hash: str, *, expires_at: float | None = None,
                        label: str | None = None) -> None:
        now = self.now()
        await self._writer.run(lambda conn: q.insert_token(conn, user_id, token_hash, now, expires_at, label))

    async def user_by_token_hash(self, token_hash: str) -> User | None:
        now = self.now()
        return await self._readers.run(lambda conn: q.user_by_token_hash(conn, token_hash, now))

    async def revoke_user(self, login: str) -> int:
        now = self.now()
        return await self._writer.run(lambda conn: q.revoke_user(conn, login, now))

    # -- maintenance ----------------------------------------------------------------------------

    async def backup(self, destination: Path) -> None:
        """An online backup (consistent while tasks write) into a new file at ``destination``.

        Cancellation: the copy runs to its end in its thread; the caller stops waiting.
        """
        def copy() -> None:
            if destination.exists():
                raise FileExistsError(f"{destination} already exists")
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

        await trio.to_thread.run_sync(copy, abandon_on_cancel=True)

    async def integrity_check(self) -> str:
        return await self._readers.run(lambda conn: conn.execute("PRAGMA integrity_check").fetchone()[0])

    def size_bytes(self) -> int:
        return sum(
            p.stat().st_size for p in (self.path, self.path.with_name("agentd.db-wal")) if p.exists()
        )
