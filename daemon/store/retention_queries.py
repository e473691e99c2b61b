"""The SQL of retention (daemon/retention.py): one text for both backends, in bounded batches.

Each function runs in one short write transaction of the backend (SQLite's writer, a
PostgreSQL worker) and deletes ``limit`` rows at most, so the store's one writer is never held
for long. Whatever decides on a task reads (and on PostgreSQL locks) the task row in the same
transaction: a follow-up that puts the task back to work between two batches stops its
compaction at the next one.

A task's history goes in two steps: first its events but the last and its tool calls, in
batches; then its conversation, the inputs it took and the mark ``compacted_at``, in one
transaction (the agent reads a conversation whole or not at all: a follow-up never sees half
of one; its size is bounded by the turn cap of a task's budget). The last event stays because
it carries the seq on: SQLite reads a task's last seq from its events, so a follow-up appends
after it and no seq is used twice (PostgreSQL keeps the counter on the row besides).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..states import TERMINAL

_TERMINAL = ", ".join(f"'{status.value}'" for status in sorted(TERMINAL))
# A finished task whose history is due: finished before the cutoff, not compacted since. The
# text of the index ``tasks_to_compact`` (schema v14), so that the planner uses it.
_DUE = (
    "finished_at IS NOT NULL AND (compacted_at IS NULL OR compacted_at < finished_at) "
    f"AND finished_at < {{p}} AND status IN ({_TERMINAL})"
)


@dataclass(frozen=True)
class RetentionQueries:
    """Retention's statements in one backend's dialect.

    ``p``: the placeholder; ``last_seq``: a task's last seq as a column of ``tasks``;
    ``event_key``: how events name their task, given the task's ``(seqno, id)``; ``lock``: what
    locks the task row read; ``changed(conn, cursor)``: rows the last statement changed.
    """

    p: str
    last_seq: str
    event_key: tuple[str, Callable[[int, str], Any]]
    lock: str
    changed: Callable[[Any, Any], int]

    def _delete(self, conn: Any, sql: str, params: tuple[Any, ...]) -> int:
        return self.changed(conn, conn.execute(sql.format(p=self.p), params))

    def due_tasks(self, conn: Any, finished_before: float, limit: int) -> list[str]:
        """Ids of up to ``limit`` finished tasks whose history is due, the oldest first."""
        rows = conn.execute(
            f"SELECT id FROM tasks WHERE {_DUE.format(p=self.p)} ORDER BY finished_at LIMIT {self.p}",
            (finished_before, limit),
        ).fetchall()
        return [row[0] for row in rows]

    def _still_due(self, conn: Any, task_id: str, finished_before: float) -> tuple[int, int] | None:
        """``(seqno, last_seq)`` of the task if its history is still due, else None."""
        row = conn.execute(
            f"SELECT seqno, {self.last_seq} FROM tasks WHERE id = {self.p} AND {_DUE.format(p=self.p)}"
            f"{self.lock}",
            (task_id, finished_before),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def delete_task_details(self, conn: Any, task_id: str, finished_before: float, limit: int) -> int | None:
        """Delete up to ``limit`` of the task's events (all but its last) and tool calls; how
        many (0: none left). None: the task is no longer due (it went back to work)."""
        due = self._still_due(conn, task_id, finished_before)
        if due is None:
            return None
        seqno, last_seq = due
        column, key = self.event_key
        removed = self._delete(
            conn,
            f"DELETE FROM events WHERE {column} = {{p}} AND seq IN "
            f"(SELECT seq FROM events WHERE {column} = {{p}} AND seq < {{p}} ORDER BY seq LIMIT {{p}})",
            (key(seqno, task_id), key(seqno, task_id), last_seq, limit),
        )
        if removed < limit:
            removed += self._delete(
                conn,
                "DELETE FROM tool_calls WHERE task_id = {p} AND tool_use_id IN "
                "(SELECT tool_use_id FROM tool_calls WHERE task_id = {p} LIMIT {p})",
                (task_id, task_id, limit - removed),
            )
        return removed

    def finish_compaction(self, conn: Any, task_id: str, finished_before: float, now: float) -> int | None:
        """Delete the task's conversation and the inputs it took, and mark it compacted at
        ``now``; how many rows went. None: no longer due (nothing written)."""
        if self._still_due(conn, task_id, finished_before) is None:
            return None
        removed = self._delete(conn, "DELETE FROM messages WHERE task_id = {p}", (task_id,))
        removed += self._delete(
            conn, "DELETE FROM inbox WHERE task_id = {p} AND taken_at IS NOT NULL", (task_id,)
        )
        conn.execute(f"UPDATE tasks SET compacted_at = {self.p} WHERE id = {self.p}", (now, task_id))
        return removed

    def delete_dead_tokens(self, conn: Any, before: float, limit: int) -> int:
        """Delete up to ``limit`` API tokens revoked or expired before ``before``; how many."""
        return self._delete_dead(conn, "api_tokens", before, limit)

    def delete_dead_share_links(self, conn: Any, before: float, limit: int) -> int:
        """Delete up to ``limit`` share links revoked or expired before ``before``; how many."""
        return self._delete_dead(conn, "share_links", before, limit)

    def _delete_dead(self, conn: Any, table: str, before: float, limit: int) -> int:
        # ``table``: one of the two above, never a caller's text.
        return self._delete(
            conn,
            f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} "
            "WHERE revoked_at < {p} OR expires_at < {p} LIMIT {p})",
            (before, before, limit),
        )

    def delete_old_deliveries(self, conn: Any, before: float, limit: int) -> int:
        """Delete up to ``limit`` outbox deliveries made before ``before`` that are over
        (delivered or failed: the sender will not touch them again); how many."""
        return self._delete(
            conn,
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE created_at < {p} "
            "AND status IN ('delivered', 'failed') LIMIT {p})",
            (before, limit),
        )


class NoSpace:
    """``queries.SPACE`` of a backend that gives the room of deleted rows back by itself
    (PostgreSQL: autovacuum makes it reusable, without a lock; see ``upkeep_store``)."""

    reclaims = False


NO_SPACE = NoSpace()
