"""The SQL of the SQLite backend, as plain functions of a connection.

Write functions here run on the writer thread inside its transaction; read functions on a reader
thread. None of them may be called from the Trio thread.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import apsw

from ..errors import NotFound
from ..notify.outbox import NOTIFYING_TYPES, plan_notifications
from ..states import TaskStatus
from . import cluster_queries, outbox_queries, sqlite_space

# GitHub identities (and the user row decoder) are written once for both backends.
from .identity_queries import (  # noqa: F401
    link_github,
    sign_in_github,
    user_by_github_id,
    user_from_row,
)
from .lifecycle import Transition, created_events, plan_transition
from .models import Event, NewEvent, NewTask, Task, Usage
from .retention_queries import RetentionQueries
from .secret_queries import SecretQueries

# The writer calls q.append_event_batch; the encoder is every write's.
# Numbered events of one task are written there too; a task's last seq is MAX(seq) of its
# events (``TASK_LAST_SEQ``), no longer ``tasks.last_seq``.
from .sqlite_appends import (  # noqa: F401
    TASK_LAST_SEQ,
    append_event_batch,
    dumps as _dumps,
    insert_events as _insert_events,
    last_seq as _last_seq,
    read_events,
)
from .sqlite_conns import Row, scalar

# Users and API tokens.
from .sqlite_users import (  # noqa: F401
    github_token_enc,
    insert_token,
    list_users,
    revoke_token,
    revoke_user,
    set_github_token,
    upsert_user,
    user_by_id,
    user_by_login,
    user_by_token_hash,
)
from .task_ids import task_ids_with_prefix  # noqa: F401 - one SQL text for both backends

# Row decoding is backend-neutral; the PostgreSQL modules import it from here.
from .task_rows import NEW_TASK_COLUMNS, new_task_values, task_from_row

_TASK_COLUMNS = (
    "id, user_id, repo_url, prompt, base_branch, status, attempt, created_at, updated_at, due_at, "
    f"reason, error, budget, usage, branch, pr_url, diff, started_at, finished_at, {TASK_LAST_SEQ}, "
    "idempotency_key, node_id, workspace_branch, model, draft, pr_title, compacted_at"
)


# -- tasks --------------------------------------------------------------------------------------


def get_task(conn: apsw.Connection, task_id: str) -> Task | None:
    row = conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
    return task_from_row(row) if row else None


def require_task(conn: apsw.Connection, task_id: str) -> Task:
    task = get_task(conn, task_id)
    if task is None:
        raise NotFound(f"no task {task_id}")
    return task


def insert_task(conn: apsw.Connection, new: NewTask, now: float) -> tuple[Task, list[Event], bool]:
    """Insert a queued task with its first events; with a known idempotency key, return that task."""
    cursor = conn.cursor()
    if new.idempotency_key is not None:
        row = cursor.execute(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE user_id = ? AND idempotency_key = ?",
            (new.user_id, new.idempotency_key),
        ).fetchone()
        if row:
            return task_from_row(row), [], False
    budget_json = _dumps(new.budget)
    events = _number_events(new.id, created_events(new), now, 0)
    cursor.execute(
        f"INSERT INTO tasks ({NEW_TASK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        new_task_values(new, new.prompt, budget_json, now),
    )
    _insert_events(conn, cursor, events)
    # The row as get_task would read it back, without reading it back.
    task = Task(
        id=new.id,
        user_id=new.user_id,
        repo_url=new.repo_url,
        prompt=new.prompt,
        base_branch=new.base_branch,
        status=TaskStatus.QUEUED,
        attempt=0,
        created_at=now,
        updated_at=now,
        budget=json.loads(budget_json),
        last_seq=len(events),
        idempotency_key=new.idempotency_key,
        model=new.model,
        draft=new.draft,
        pr_title=new.pr_title,
    )
    return task, events, True


def transition(conn: apsw.Connection, change: Transition, now: float) -> tuple[Task, list[Event]]:
    """Apply ``change``, validated, with its ``task.status`` (and ``task.finished``) events.

    What it writes is decided by ``lifecycle.plan_transition``, the same for every backend.
    """
    # One cursor for the four statements: apsw makes a new one for each ``conn.execute``, and
    # that is a good part of a statement's cost here.
    cursor = conn.cursor()
    task_id = change.task_id
    row = cursor.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if row is None:
        raise NotFound(f"no task {task_id}")
    task = task_from_row(row)
    changed, new = plan_transition(task, change, now=now)
    events = _number_events(task_id, new, now, task.last_seq)
    cursor.execute(
        "UPDATE tasks SET status = ?, attempt = ?, reason = ?, error = ?, due_at = ?, "
        "started_at = ?, finished_at = ?, updated_at = ?, node_id = ? WHERE id = ?",
        (
            change.target.value,
            changed.attempt,
            changed.reason,
            changed.error,
            changed.due_at,
            changed.started_at,
            changed.finished_at,
            now,
            changed.node_id,
            task_id,
        ),
    )
    _insert_events(conn, cursor, events)
    if change.target.is_terminal or change.target is TaskStatus.WAITING_INPUT:  # may notify (notify.outbox)
        notes = plan_notifications(changed, new, now)
        if notes:
            OUTBOX.insert_planned(conn, notes, now)
    return changed, events


def update_task(conn: apsw.Connection, task_id: str, now: float, **fields: Any) -> Task:
    """Set result fields (usage, branch, pr_url, diff) of a task."""
    allowed = {"usage", "branch", "pr_url", "diff", "budget", "workspace_branch"}
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"cannot update task fields {sorted(unknown)}")
    encoded = {
        key: _dumps(value.__dict__ if isinstance(value, Usage) else value)
        if key in ("usage", "diff", "budget")
        else value
        for key, value in fields.items()
    }
    assignments = ", ".join(f"{key} = ?" for key in encoded)
    conn.execute(
        f"UPDATE tasks SET {assignments}, updated_at = ? WHERE id = ?",
        (*encoded.values(), now, task_id),
    )
    return require_task(conn, task_id)


def set_usage(conn: apsw.Connection, task_id: str, usage: Usage, now: float) -> None:
    """The task's usage so far (an agent turn writes it with its message; nothing read back)."""
    conn.execute(
        "UPDATE tasks SET usage = ?, updated_at = ? WHERE id = ?", (_dumps(usage.__dict__), now, task_id)
    )


def list_tasks(
    conn: apsw.Connection,
    *,
    user_id: int | None = None,
    statuses: Sequence[TaskStatus] | None = None,
    before_seqno: int | None = None,
    limit: int = 50,
    oldest_first: bool = False,
) -> list[tuple[int, Task]]:
    """Tasks with their ``seqno`` (a stable cursor), newest first unless ``oldest_first``."""
    where, params = [], []  # type: list[str], list[Any]
    if user_id is not None:
        where.append("user_id = ?")
        params.append(user_id)
    if statuses:
        where.append(f"status IN ({', '.join('?' * len(statuses))})")
        params.extend(status.value for status in statuses)
    if before_seqno is not None:
        where.append("seqno < ?" if not oldest_first else "seqno > ?")
        params.append(before_seqno)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    order = "ASC" if oldest_first else "DESC"
    rows: list[Row] = conn.execute(
        f"SELECT seqno, {_TASK_COLUMNS} FROM tasks {clause} ORDER BY seqno {order} LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [(row[0], task_from_row(row[1:])) for row in rows]


def count_by_status(conn: apsw.Connection) -> dict[str, int]:
    rows: list[Row] = conn.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall()
    return dict(rows)


# -- events -------------------------------------------------------------------------------------


def append_events(
    conn: apsw.Connection,
    task_id: str,
    new: Sequence[NewEvent],
    *,
    now: float | None = None,
    last_seq: int | None = None,
) -> list[Event]:
    """Give each event the task's next ``seq``: one more than the task's last event's.

    ``last_seq``, when the caller has just read the task in this transaction, saves a query.
    Events are written only through ``_insert_events`` (here, in ``insert_task`` and
    ``transition``) and ``append_event_batch``, which keep the writer's memory of each task's
    last seq (``WriterConnection.last_seqs``) up to date.
    """
    if not new:
        return []
    now = time.time() if now is None else now
    cursor = conn.cursor()
    if last_seq is None:
        last_seq = _last_seq(conn, cursor, task_id)
    events = _number_events(task_id, new, now, last_seq)
    _insert_events(conn, cursor, events)
    if any(item.type in NOTIFYING_TYPES for item in new):  # a PR opened (notify.outbox)
        notes = plan_notifications(require_task(conn, task_id), new, now)
        if notes:
            OUTBOX.insert_planned(conn, notes, now)
    return events


def _number_events(task_id: str, new: Sequence[NewEvent], now: float, last_seq: int) -> list[Event]:
    return [
        Event(task_id, last_seq + i, now, item.type, item.data, _dumps(item.data))
        for i, item in enumerate(new, 1)
    ]


# -- conversation -------------------------------------------------------------------------------


def append_message(
    conn: apsw.Connection, task_id: str, role: str, content: Any, now: float, stop_reason: str | None = None
) -> int:
    index: int = scalar(
        conn.execute("SELECT COALESCE(MAX(idx), -1) + 1 FROM messages WHERE task_id = ?", (task_id,))
    )
    conn.execute(
        "INSERT INTO messages (task_id, idx, role, content, created_at, stop_reason) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (task_id, index, role, _dumps(content), now, stop_reason),
    )
    return index


def list_messages(conn: apsw.Connection, task_id: str) -> list[dict[str, Any]]:
    """The conversation in Anthropic's shape; assistant turns also say why they stopped."""
    rows: list[Row] = conn.execute(
        "SELECT role, content, stop_reason FROM messages WHERE task_id = ? ORDER BY idx", (task_id,)
    ).fetchall()
    turns = []
    for role, content, stop_reason in rows:
        turn: dict[str, Any] = {"role": role, "content": json.loads(content)}
        if stop_reason is not None:
            turn["stop_reason"] = stop_reason
        turns.append(turn)
    return turns


def start_tool_call(
    conn: apsw.Connection, task_id: str, tool_use_id: str, name: str, tool_input: Any, now: float
) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO tool_calls (task_id, tool_use_id, name, input, status, started_at) "
        "VALUES (?, ?, ?, ?, 'started', ?)",
        (task_id, tool_use_id, name, _dumps(tool_input), now),
    )


def finish_tool_call(
    conn: apsw.Connection, task_id: str, tool_use_id: str, output: str, is_error: bool, now: float
) -> None:
    conn.execute(
        "UPDATE tool_calls SET status = 'done', output = ?, is_error = ?, finished_at = ? "
        "WHERE task_id = ? AND tool_use_id = ?",
        (output, int(is_error), now, task_id, tool_use_id),
    )


def list_tool_calls(conn: apsw.Connection, task_id: str) -> list[dict[str, Any]]:
    rows: list[Row] = conn.execute(
        "SELECT tool_use_id, name, input, status, output, is_error FROM tool_calls "
        "WHERE task_id = ? ORDER BY started_at",
        (task_id,),
    ).fetchall()
    return [
        {
            "id": tid,
            "name": name,
            "input": json.loads(inp),
            "status": status,
            "output": out,
            "is_error": None if err is None else bool(err),
        }
        for tid, name, inp, status, out, err in rows
    ]


def add_input(conn: apsw.Connection, task_id: str, text: str, now: float) -> list[Event]:
    """Keep a user message for the agent's next turn, and say so with a ``user.message`` event."""
    require_task(conn, task_id)
    conn.execute("INSERT INTO inbox (task_id, text, created_at) VALUES (?, ?, ?)", (task_id, text, now))
    return append_events(conn, task_id, [NewEvent("user.message", {"text": text})], now=now)


def take_inputs(conn: apsw.Connection, task_id: str, now: float) -> list[str]:
    rows: list[Row] = conn.execute(
        "SELECT id, text FROM inbox WHERE task_id = ? AND taken_at IS NULL ORDER BY id", (task_id,)
    ).fetchall()
    if rows:
        conn.execute("UPDATE inbox SET taken_at = ? WHERE task_id = ? AND taken_at IS NULL", (now, task_id))
    return [text for _, text in rows]


def pending_inputs(conn: apsw.Connection, task_id: str) -> int:
    pending: int = scalar(
        conn.execute("SELECT COUNT(*) FROM inbox WHERE task_id = ? AND taken_at IS NULL", (task_id,))
    )
    return pending


def tell_others(conn: apsw.Connection, notice: str) -> None:
    """Nobody else shares an SQLite store: there is no one to tell (``ClusterStore.tell_revoked``)."""


# -- nodes and claims (one SQL text for both backends: cluster_queries) ---------------------------

CLUSTER = cluster_queries.Dialect(placeholder="?", lock_rows="", transition=transition)

# -- retention and the secret key rotation (one SQL text for both backends) ----------------------

RETENTION = RetentionQueries(
    p="?",
    last_seq=TASK_LAST_SEQ,
    event_key=("task_no", lambda seqno, task_id: seqno),
    lock="",  # the one writer: nothing changes the row between the read and the delete
    changed=lambda conn, cursor: conn.changes(),
)
SECRETS = SecretQueries(p="?", changed=lambda conn, cursor: conn.changes())
SPACE = sqlite_space.SPACE
# Notification targets and the outbox (one SQL text for both backends: outbox_queries).
OUTBOX = outbox_queries.Dialect(placeholder="?", lock_rows="")
