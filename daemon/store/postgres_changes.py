"""Writes of a task's row with its events on PostgreSQL: each one statement.

A task's event counter (``last_seq``) lives on its row. One ``WITH`` statement updates the row
(the counter, and a status change's columns), inserts the events with the seqs that follow and
sends the notice other daemons listen for (``postgres_listen``): the row's lock orders
concurrent writers, so seqs stay gap-free, and the whole is atomic without a transaction around
it. A status change is planned by ``lifecycle.plan_transition`` on the row as read; the write
then applies only if the row is still as read (its counter and status unchanged), else the
change is decided again on the row locked (``transition``).

These functions may run inside a transaction the store opened, or on a connection in autocommit
mode, where each statement is its own transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from psycopg import Connection

from ..errors import NotFound
from ..notify.outbox import NOTIFYING_TYPES, Notification, plan_notifications
from ..states import TaskStatus
from .lifecycle import Transition, plan_transition
from .models import Event, NewEvent, Task
from .postgres_claims import TASK_COLUMNS, transaction

# Row decoding is backend-neutral (same columns, same JSON text); shared, not copied.
from .sqlite_queries import task_from_row

# One encoder for every write (json.dumps with options builds a new one per call). ASCII-only
# output also escapes lone surrogates, which PostgreSQL's UTF-8 text would refuse.
dumps = json.JSONEncoder(separators=(",", ":")).encode


def text(value: str | None) -> str | None:
    """Free text as PostgreSQL TEXT holds it: NUL (SQLite keeps it) becomes U+FFFD, rather than
    the write of a tool's output or an error message failing over one byte of binary."""
    return value.replace("\x00", "\ufffd") if value and "\x00" in value else value


def get_task(conn: Connection, task_id: str, *, lock: bool = False) -> Task | None:
    """The task, or None; ``lock`` holds its row until the transaction ends."""
    suffix = " FOR UPDATE" if lock else ""
    row = conn.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = %s{suffix}", (task_id,)).fetchone()
    return task_from_row(row) if row else None


def require_task(conn: Connection, task_id: str, *, lock: bool = False) -> Task:
    task = get_task(conn, task_id, lock=lock)
    if task is None:
        raise NotFound(f"no task {task_id}")
    return task


# The statement: ``{sets}`` are the status change's columns (or nothing), ``{only_if}`` its
# condition on the row as read (or nothing). The notice: "<node> <task> <first> <last> <flags>".
_WRITE = """
WITH row AS (
    UPDATE tasks SET {sets}last_seq = last_seq + %(n)s WHERE id = %(id)s{only_if}
    RETURNING last_seq - %(n)s AS before
), logged AS (
    INSERT INTO events (task_id, seq, ts, type, data)
    SELECT %(id)s, row.before + e.i, %(now)s, e.type, e.data
    FROM row, unnest(%(types)s::text[], %(data)s::text[]) WITH ORDINALITY AS e(type, data, i)
){outbox}
SELECT before, pg_notify('agentd_events', concat_ws(' ',
    COALESCE(NULLIF(current_setting('agentd.node', true), ''), '-'), %(id)s::text,
    before + 1, before + %(n)s, %(flags)s::text))
FROM row
"""
_TELL = """SELECT pg_notify('agentd_events', concat_ws(' ',
    COALESCE(NULLIF(current_setting('agentd.node', true), ''), '-'), %s::text))"""


def tell_others(conn: Connection, notice: str) -> None:
    """Send ``notice`` (prefixed with this node, as an event write's) to the daemons listening
    (``postgres_listen``): on commit, in commit order with the event notices."""
    conn.execute(_TELL, (notice,))


_STATUS_SETS = (
    "status = %(status)s, attempt = %(attempt)s, reason = %(reason)s, error = %(error)s, "
    "due_at = %(due_at)s, started_at = %(started_at)s, finished_at = %(finished_at)s, "
    "updated_at = %(now)s, node_id = %(node_id)s, "
)
# The outbox rows of the notifications the events make (notify.outbox), written by the same
# statement when its task row was (``{written}``): one per matching target of the task's owner
# or operator-wide; none when there is none. (A data-modifying WITH runs even unreferenced.)
OUTBOX_CTE = """,
outboxed AS (
    INSERT INTO outbox (id, target_id, user_id, task_id, kind, payload, status, attempts, next_at,
                        created_at, pending_since)
    SELECT 'dlv_' || n.nonce || substr(t.id, 4), t.id, n.user_id, n.task_id, n.kind, n.payload,
           'pending', 0, n.now, n.now, n.now
    FROM unnest(%(n_tasks)s::text[], %(n_users)s::bigint[], %(n_kinds)s::text[],
                %(n_nonces)s::text[], %(n_payloads)s::text[], %(n_nows)s::float8[])
        AS n(task_id, user_id, kind, nonce, payload, now)
    JOIN notify_targets t ON (t.user_id = n.user_id OR t.user_id IS NULL) AND t.disabled_at IS NULL
        AND t.events LIKE '%%"' || n.kind || '"%%'
    WHERE {written}
)"""
_OUTBOX_ONE = OUTBOX_CTE.format(written="EXISTS (SELECT 1 FROM row)")


def _statements(sets: str, only_if: str) -> tuple[str, str]:
    """The statement, without and with the outbox rows."""
    return (
        _WRITE.format(sets=sets, only_if=only_if, outbox=""),
        _WRITE.format(sets=sets, only_if=only_if, outbox=_OUTBOX_ONE),
    )


_APPEND = _statements("", "")
_CHANGE = _statements(_STATUS_SETS, "")
_CHANGE_IF_AS_READ = _statements(_STATUS_SETS, " AND last_seq = %(read_seq)s AND status = %(read_status)s")


def outbox_params(notes: Sequence[Notification], now: float) -> dict[str, Any]:
    """The parameters of ``OUTBOX_CTE`` for ``notes``."""
    return {
        "n_tasks": [note.task_id for note in notes],
        "n_users": [note.user_id for note in notes],
        "n_kinds": [note.kind for note in notes],
        "n_nonces": [note.nonce for note in notes],
        "n_payloads": [note.payload for note in notes],
        "n_nows": [now for _ in notes],
    }


def _write(
    conn: Connection,
    sql: tuple[str, str],
    task_id: str,
    new: Sequence[NewEvent],
    now: float,
    notes: Sequence[Notification] = (),
    **params: Any,
) -> list[Event] | None:
    """Run one of the statements above (with the outbox rows of ``notes``, if any); the
    events written, or None when no row matched."""
    data = [dumps(item.data) for item in new]
    if notes:
        params.update(outbox_params(notes, now))
    row = conn.execute(
        sql[1] if notes else sql[0],
        {
            "id": task_id,
            "n": len(new),
            "now": now,
            "types": [item.type for item in new],
            "data": data,
            "flags": notice_flags(new),
            **params,
        },
    ).fetchone()
    if row is None:
        return None
    before: int = row[0]
    return [
        Event(task_id, before + i, now, item.type, item.data, json_text)
        for i, (item, json_text) in enumerate(zip(new, data, strict=True), 1)
    ]


def append_events(
    conn: Connection,
    task_id: str,
    new: Sequence[NewEvent],
    *,
    now: float,
    last_seq: int | None = None,
) -> list[Event]:
    """Give each event the task's next ``seq``; the counter lives on the task row, incremented in
    the same statement (``last_seq``, what the caller knows of it, is not needed here)."""
    if not new:
        return []
    notes: Sequence[Notification] = ()
    if any(item.type in NOTIFYING_TYPES for item in new):  # a PR opened (notify.outbox)
        notes = plan_notifications(require_task(conn, task_id), new, now)
    events = _write(conn, _APPEND, task_id, new, now, notes)
    if events is None:
        raise NotFound(f"no task {task_id}")
    return events


def transition(conn: Connection, change: Transition, now: float) -> tuple[Task, list[Event]]:
    """Apply ``change``, validated, with its ``task.status`` (and ``task.finished``) events.

    What it writes is decided by ``lifecycle.plan_transition``, the same for every backend: first
    on the row as read, written only if the row is still so (two statements, no lock held in
    between); when another writer came between, again on the row locked. A start (``running``)
    is always decided on the locked row, with its user's row locked too (``postgres_claims``:
    the per-user cap counts starts under that lock).
    """
    if change.target is not TaskStatus.RUNNING:
        task = require_task(conn, change.task_id)
        changed, new = plan_transition(task, change, now=now)
        events = _write(
            conn,
            _CHANGE_IF_AS_READ,
            task.id,
            new,
            now,
            _notes(change, changed, new, now),
            read_seq=task.last_seq,
            read_status=task.status.value,
            **status_columns(changed),
        )
        if events is not None:
            return changed, events
    with transaction(conn):
        task = require_task(conn, change.task_id, lock=True)
        changed, new = plan_transition(task, change, now=now)
        if change.target is TaskStatus.RUNNING:
            conn.execute("SELECT 1 FROM users WHERE id = %s FOR NO KEY UPDATE", (task.user_id,))
        events = _write(
            conn, _CHANGE, task.id, new, now, _notes(change, changed, new, now), **status_columns(changed)
        )
        assert events is not None, "the row is locked"
        return changed, events


def _notes(change: Transition, changed: Task, new: Sequence[NewEvent], now: float) -> list[Notification]:
    """What a status change notifies (``notify.outbox``): only an end or a question may."""
    if change.target.is_terminal or change.target is TaskStatus.WAITING_INPUT:
        return plan_notifications(changed, new, now)
    return []


def status_columns(changed: Task) -> dict[str, Any]:
    """What a status change writes on the task's row besides its event counter."""
    return {
        "status": changed.status.value,
        "attempt": changed.attempt,
        "reason": text(changed.reason),
        "error": text(changed.error),
        "due_at": changed.due_at,
        "started_at": changed.started_at,
        "finished_at": changed.finished_at,
        "node_id": changed.node_id,
    }


# The event types another node may have to act on: status changes (a cancel, a task to claim,
# a user's task list) and user messages (the inbox of a task it runs).
_NOTICE_TYPES = frozenset({"task.created", "task.status", "task.finished", "user.message"})


def notice_flags(new: Sequence[NewEvent]) -> str:
    """``s``: the batch has events other nodes act on; ``q``: a task became queued (work to
    claim); ``f``: a task stopped running (a user under a cap may start another); ``-``: none."""
    flags = ""
    if any(item.type in _NOTICE_TYPES for item in new):
        flags += "s"
    statuses = {item.data.get("status") for item in new if item.type == "task.status"}
    if "queued" in statuses:
        flags += "q"
    if statuses - {"queued", "running"}:
        flags += "f"
    return flags or "-"
