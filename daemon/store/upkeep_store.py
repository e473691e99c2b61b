"""The store's interface to retention, room and the secret rotation sweep (a part of ``StoreBase``).

Every method runs one short transaction through the backend's runners, with the SQL of its
``queries.RETENTION`` (``retention_queries``), ``queries.SECRETS`` (``secret_queries``) and
``queries.SPACE`` (SQLite: ``sqlite_space``; PostgreSQL: ``retention_queries.NO_SPACE``, its
autovacuum makes the room of deleted rows reusable by itself).

Cancellation: as the runners' (a read stops being waited for; a write is never abandoned).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, ClassVar

import trio

from .secret_queries import SecretColumn

#: Checkpoints tried after a reclaim step while another one is under way, a few ms apart.
CHECKPOINT_TRIES = 20


class UpkeepStore:
    """Retention, room and secrets; mixed into ``StoreBase``, which provides the runners."""

    queries: ClassVar[ModuleType]
    now: Callable[[], float]
    path: Any
    _read: Any
    _write: Any

    # -- retention (daemon/retention.py) --------------------------------------------------------

    async def tasks_due_for_compaction(self, finished_before: float, limit: int) -> list[str]:
        """Up to ``limit`` finished tasks whose history is due (``retention_queries``)."""
        return list(
            await self._read(lambda conn: self.queries.RETENTION.due_tasks(conn, finished_before, limit))
        )

    async def delete_task_details(self, task_id: str, finished_before: float, limit: int) -> int | None:
        """One batch of a task's compaction: up to ``limit`` of its events (all but the last)
        and tool calls; how many (0: none left); None when it is no longer due."""
        removed: int | None = await self._write(
            lambda conn: self.queries.RETENTION.delete_task_details(conn, task_id, finished_before, limit)
        )
        return removed

    async def finish_compaction(self, task_id: str, finished_before: float) -> int | None:
        """The last step of a task's compaction: its conversation and taken inputs go, and it
        is marked compacted now; rows removed, None when it is no longer due."""
        now = self.now()
        removed: int | None = await self._write(
            lambda conn: self.queries.RETENTION.finish_compaction(conn, task_id, finished_before, now)
        )
        return removed

    async def delete_dead_tokens(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` API tokens revoked or expired before ``before``; how many."""
        return int(
            await self._write(lambda conn: self.queries.RETENTION.delete_dead_tokens(conn, before, limit))
        )

    async def delete_dead_share_links(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` share links revoked or expired before ``before``; how many."""
        return int(
            await self._write(
                lambda conn: self.queries.RETENTION.delete_dead_share_links(conn, before, limit)
            )
        )

    async def delete_old_deliveries(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` finished outbox deliveries made before ``before``; how many."""
        return int(
            await self._write(lambda conn: self.queries.RETENTION.delete_old_deliveries(conn, before, limit))
        )

    # -- room -----------------------------------------------------------------------------------

    async def reclaim_space(self, pages: int) -> int:
        """Give back up to ``pages`` pages of deleted rows to the file system, in one short
        write; the bytes given back (0 on a backend that reclaims by itself)."""
        space = self.queries.SPACE
        if not space.reclaims:
            return 0
        return int(await self._write(lambda conn: space.reclaim(conn, pages)))

    async def settle_space(self) -> None:
        """After ``reclaim_space``: on SQLite the file shrinks once the WAL is copied back into
        it, which a PASSIVE checkpoint does now, on a thread of its own (it never waits for the
        writer or the readers; tried again a few ms later while the checkpointer's runs)."""
        space = self.queries.SPACE
        for _ in range(CHECKPOINT_TRIES if space.reclaims else 0):
            if await trio.to_thread.run_sync(space.checkpoint, self.path):
                return
            await trio.sleep(0.005)

    async def reclaimable_bytes(self) -> int:
        """Room of deleted rows ``reclaim_space`` could still give back."""
        space = self.queries.SPACE
        return int(await self._read(space.free_bytes)) if space.reclaims else 0

    async def request_full_compaction(self) -> bool:
        """Ask for what a backend does only at its next start (SQLite: the one-time conversion
        of a large file to incremental vacuum); False when nothing is needed."""
        space, now = self.queries.SPACE, self.now()
        return (
            bool(await self._write(lambda conn: space.request_conversion(conn, now)))
            if space.reclaims
            else False
        )

    # -- the secret rotation sweep (daemon/key_rotation.py) -------------------------------------

    async def secret_page(self, column: SecretColumn, after: Any, limit: int) -> list[tuple[Any, bytes]]:
        """Up to ``limit`` ``(key, encrypted)`` of ``column`` after key ``after`` (None: first)."""
        return list(await self._read(lambda conn: self.queries.SECRETS.page(conn, column, after, limit)))

    async def newest_secrets(self, column: SecretColumn, limit: int) -> list[bytes]:
        """The secrets of ``column``'s last ``limit`` rows in key order."""
        return list(await self._read(lambda conn: self.queries.SECRETS.newest(conn, column, limit)))

    async def count_secrets(self, column: SecretColumn) -> int:
        return int(await self._read(lambda conn: self.queries.SECRETS.count(conn, column)))

    async def swap_secrets(self, column: SecretColumn, changes: Sequence[tuple[Any, bytes, bytes]]) -> int:
        """Replace each ``(key, old, new)`` where the stored secret still is ``old``; how many."""
        return int(await self._write(lambda conn: self.queries.SECRETS.swap(conn, column, changes)))
