"""The SQL of the PostgreSQL backend, as plain functions of a psycopg connection.

Each function runs on a worker thread inside one transaction opened by ``PostgresStore``
(READ COMMITTED), never on the Trio thread; those of ``postgres_changes`` (a task's row with
its events) and the claims may also run without one, each statement its own transaction.
Nothing here assumes a single writer: several processes may write the same task at once.
Whatever reads a task's counters to write them (the next message index, the status) first locks
the task row with ``SELECT ... FOR UPDATE``, or writes only if the row is still as read; a
concurrent writer then waits for the commit and reads the new row, so seqs stay gap-free and a
status change is decided on the current status.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

from psycopg import Connection, Cursor

from ..errors import NotFound
from ..states import TaskStatus
from . import identity_queries, outbox_queries, task_ids
from .lifecycle import created_events
from .models import Event, NewEvent, NewTask, Task, Usage, User
from .postgres_changes import (  # the writes of a task's row with its events: one statement each
    append_events as append_events,
    dumps as _dumps,
    get_task as get_task,
    require_task,
    tell_others as tell_others,
    text as _text,
    transition as transition,
)
from .postgres_claims import TASK_COLUMNS as _TASK_COLUMNS, PostgresDialect
from .retention_queries import NO_SPACE, RetentionQueries
from .secret_queries import SecretQueries

# Row decoding is backend-neutral (same columns, same JSON text); shared, not copied.
from .sqlite_queries import task_from_row, user_from_row
from .task_rows import NEW_TASK_COLUMNS, new_task_values

_USER_COLUMNS = identity_queries.USER_COLUMNS
# GitHub identities: one SQL text for both backends, with this backend's placeholder.
sign_in_github = functools.partial(identity_queries.sign_in_github, ph="%s")
link_github = functools.partial(identity_queries.link_github, ph="%s")
user_by_github_id = functools.partial(identity_queries.user_by_github_id, ph="%s")
task_ids_with_prefix = functools.partial(task_ids.task_ids_with_prefix, ph="%s")


# -- tasks --------------------------------------------------------------------------------------


def _one(cursor: Cursor[Any]) -> tuple[Any, ...]:
    """The one row a query always yields (an aggregate, ``RETURNING``, a row known to exist)."""
    row = cursor.fetchone()
    assert row is not None, "the query yields one row"
    return row


def insert_task(conn: Connection, new: NewTask, now: float) -> tuple[Task, list[Event], bool]:
    """Insert a queued task with its first events; with a known idempotency key, return that task.

    Two nodes creating with one key at once: the unique index makes the second insert wait for
    the first to commit, then do nothing; it then reads and returns the first one's task.
    """
    row = conn.execute(
        f"INSERT INTO tasks ({NEW_TASK_COLUMNS}) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (user_id, idempotency_key) DO NOTHING RETURNING id",
        new_task_values(new, _text(new.prompt), _dumps(new.budget), now),
    ).fetchone()
    if row is None:
        existing = _one(
            conn.execute(
                f"SELECT {_TASK_COLUMNS} FROM tasks WHERE user_id = %s AND idempotency_key = %s",
                (new.user_id, new.idempotency_key),
            )
        )
        return task_from_row(existing), [], False
    events = append_events(conn, new.id, created_events(new), now=now, last_seq=0)
    return require_task(conn, new.id), events, True


def update_task(conn: Connection, task_id: str, now: float, **fields: Any) -> Task:
    """Set result fields (usage, branch, pr_url, diff, budget) of a task."""
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
    assignments = ", ".join(f"{key} = %s" for key in encoded)  # keys are from ``allowed`` only
    conn.execute(
        f"UPDATE tasks SET {assignments}, updated_at = %s WHERE id = %s",
        (*encoded.values(), now, task_id),
    )
    return require_task(conn, task_id)


def set_usage(conn: Connection, task_id: str, usage: Usage, now: float) -> None:
    """The task's usage so far (an agent turn writes it with its message; nothing read back)."""
    conn.execute(
        "UPDATE tasks SET usage = %s, updated_at = %s WHERE id = %s", (_dumps(usage.__dict__), now, task_id)
    )


def list_tasks(
    conn: Connection,
    *,
    user_id: int | None = None,
    statuses: Sequence[TaskStatus] | None = None,
    before_seqno: int | None = None,
    limit: int = 50,
    oldest_first: bool = False,
) -> list[tuple[int, Task]]:
    """Tasks with their ``seqno`` (a stable cursor), newest first unless ``oldest_first``."""
    where: list[str] = []
    params: list[Any] = []
    if user_id is not None:
        where.append("user_id = %s")
        params.append(user_id)
    if statuses:
        where.append("status = ANY(%s)")
        params.append([status.value for status in statuses])
    if before_seqno is not None:
        where.append("seqno < %s" if not oldest_first else "seqno > %s")
        params.append(before_seqno)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    order = "ASC" if oldest_first else "DESC"
    rows = conn.execute(
        f"SELECT seqno, {_TASK_COLUMNS} FROM tasks {clause} ORDER BY seqno {order} LIMIT %s",
        (*params, limit),
    ).fetchall()
    return [(row[0], task_from_row(row[1:])) for row in rows]


def count_by_status(conn: Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall())


def database_size(conn: Connection) -> int:
    size: int = _one(conn.execute("SELECT pg_database_size(current_database())"))[0]
    return size


# -- events -------------------------------------------------------------------------------------


def read_events(conn: Connection, task_id: str, after: int, limit: int) -> list[Event]:
    rows = conn.execute(
        "SELECT seq, ts, type, data FROM events WHERE task_id = %s AND seq > %s ORDER BY seq LIMIT %s",
        (task_id, after, limit),
    ).fetchall()
    return [Event(task_id, seq, ts, etype, json.loads(data), data) for seq, ts, etype, data in rows]


# -- conversation -------------------------------------------------------------------------------


def append_message(
    conn: Connection, task_id: str, role: str, content: Any, now: float, stop_reason: str | None = None
) -> int:
    # The task row lock makes "next index" safe when two nodes append (a taken-over task).
    conn.execute("SELECT 1 FROM tasks WHERE id = %s FOR UPDATE", (task_id,))
    idx: int = _one(
        conn.execute("SELECT COALESCE(MAX(idx), -1) + 1 FROM messages WHERE task_id = %s", (task_id,))
    )[0]
    conn.execute(
        "INSERT INTO messages (task_id, idx, role, content, created_at, stop_reason) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (task_id, idx, role, _dumps(content), now, stop_reason),
    )
    return idx


def list_messages(conn: Connection, task_id: str) -> list[dict[str, Any]]:
    """The conversation in Anthropic's shape; assistant turns also say why they stopped."""
    rows = conn.execute(
        "SELECT role, content, stop_reason FROM messages WHERE task_id = %s ORDER BY idx", (task_id,)
    ).fetchall()
    turns = []
    for role, content, stop_reason in rows:
        turn: dict[str, Any] = {"role": role, "content": json.loads(content)}
        if stop_reason is not None:
            turn["stop_reason"] = stop_reason
        turns.append(turn)
    return turns


def start_tool_call(
    conn: Connection, task_id: str, tool_use_id: str, name: str, tool_input: Any, now: float
) -> None:
    conn.execute(
        "INSERT INTO tool_calls (task_id, tool_use_id, name, input, status, started_at) "
        "VALUES (%s, %s, %s, %s, 'started', %s) ON CONFLICT DO NOTHING",
        (task_id, tool_use_id, name, _dumps(tool_input), now),
    )


def finish_tool_call(
    conn: Connection, task_id: str, tool_use_id: str, output: str, is_error: bool, now: float
) -> None:
    conn.execute(
        "UPDATE tool_calls SET status = 'done', output = %s, is_error = %s, finished_at = %s "
        "WHERE task_id = %s AND tool_use_id = %s",
        (_text(output), bool(is_error), now, task_id, tool_use_id),
    )


def list_tool_calls(conn: Connection, task_id: str) -> list[dict[str, Any]]:
    # Ties on started_at (one turn's calls share a clock reading) fall back to the key, the
    # order SQLite's primary-key scan gives.
    rows = conn.execute(
        "SELECT tool_use_id, name, input, status, output, is_error FROM tool_calls "
        "WHERE task_id = %s ORDER BY started_at, tool_use_id",
        (task_id,),
    ).fetchall()
    return [
        {"id": tid, "name": name, "input": json.loads(inp), "status": status, "output": out, "is_error": err}
        for tid, name, inp, status, out, err in rows
    ]


def add_input(conn: Connection, task_id: str, text: str, now: float) -> list[Event]:
    """Keep a user message for the agent's next turn, and say so with a ``user.message`` event."""
    task = require_task(conn, task_id, lock=True)
    conn.execute(
        "INSERT INTO inbox (task_id, text, created_at) VALUES (%s, %s, %s)", (task_id, _text(text), now)
    )
    return append_events(
        conn, task_id, [NewEvent("user.message", {"text": text})], now=now, last_seq=task.last_seq
    )


def take_inputs(conn: Connection, task_id: str, now: float) -> list[str]:
    # One UPDATE ... RETURNING: a message taken by another node at the same moment is skipped
    # here (the row is re-checked after its lock is released), so each is given exactly once.
    rows = conn.execute(
        "UPDATE inbox SET taken_at = %s WHERE task_id = %s AND taken_at IS NULL RETURNING id, text",
        (now, task_id),
    ).fetchall()
    return [text for _, text in sorted(rows)]


def pending_inputs(conn: Connection, task_id: str) -> int:
    pending: int = _one(
        conn.execute("SELECT COUNT(*) FROM inbox WHERE task_id = %s AND taken_at IS NULL", (task_id,))
    )[0]
    return pending


# -- users and tokens ---------------------------------------------------------------------------


def upsert_user(
    conn: Connection,
    login: str,
    now: float,
    *,
    github_id: int | None = None,
    name: str | None = None,
    is_operator: bool | None = None,
) -> User:
    row = _one(
        conn.execute(
            "INSERT INTO users (login, github_id, name, is_operator, created_at, updated_at) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (login) DO UPDATE SET "
            "github_id = COALESCE(excluded.github_id, users.github_id), "
            "name = COALESCE(excluded.name, users.name), "
            "is_operator = CASE WHEN %s::boolean IS NULL THEN users.is_operator "
            "ELSE excluded.is_operator END, "
            f"disabled = false, updated_at = excluded.updated_at RETURNING {_USER_COLUMNS}",
            (login, github_id, name, bool(is_operator), now, now, is_operator),
        )
    )
    return user_from_row(row)


def user_by_login(conn: Connection, login: str) -> User | None:
    row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE login = %s", (login,)).fetchone()
    return user_from_row(row) if row else None


def user_by_id(conn: Connection, user_id: int) -> User | None:
    row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE id = %s", (user_id,)).fetchone()
    return user_from_row(row) if row else None


def list_users(conn: Connection) -> list[User]:
    rows = conn.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY id").fetchall()
    return [user_from_row(r) for r in rows]


def insert_token(
    conn: Connection, user_id: int, token_hash: str, now: float, expires_at: float | None, label: str | None
) -> None:
    conn.execute(
        "INSERT INTO api_tokens (user_id, token_hash, label, created_at, expires_at) "
        "VALUES (%s, %s, %s, %s, %s)",
        (user_id, token_hash, label, now, expires_at),
    )


def user_by_token_hash(conn: Connection, token_hash: str, now: float) -> User | None:
    row = conn.execute(
        f"SELECT {', '.join('u.' + c.strip() for c in _USER_COLUMNS.split(','))} "
        "FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = %s "
        "AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > %s) AND NOT u.disabled",
        (token_hash, now),
    ).fetchone()
    return user_from_row(row) if row else None


def revoke_user(conn: Connection, login: str, now: float) -> int:
    """Revoke the user's tokens and disable the user; returns how many tokens were revoked."""
    user = user_by_login(conn, login)
    if user is None:
        raise NotFound(f"no user {login}")
    revoked = conn.execute(
        "UPDATE api_tokens SET revoked_at = %s WHERE user_id = %s AND revoked_at IS NULL", (now, user.id)
    ).rowcount
    conn.execute("UPDATE users SET disabled = true, updated_at = %s WHERE id = %s", (now, user.id))
    return revoked


def revoke_token(conn: Connection, token_hash: str, now: float) -> bool:
    return (
        conn.execute(
            "UPDATE api_tokens SET revoked_at = %s WHERE token_hash = %s AND revoked_at IS NULL",
            (now, token_hash),
        ).rowcount
        > 0
    )


def set_github_token(conn: Connection, user_id: int, token_enc: bytes | None, now: float) -> None:
    conn.execute(
        "UPDATE users SET github_token_enc = %s, updated_at = %s WHERE id = %s", (token_enc, now, user_id)
    )


def github_token_enc(conn: Connection, user_id: int) -> bytes | None:
    row = conn.execute("SELECT github_token_enc FROM users WHERE id = %s", (user_id,)).fetchone()
    return bytes(row[0]) if row and row[0] is not None else None


# -- nodes and claims (one SQL text for both backends, claims PostgreSQL's own: postgres_claims) --

CLUSTER = PostgresDialect(
    placeholder="%s",
    lock_rows=" FOR UPDATE SKIP LOCKED",
    transition=transition,
    least="LEAST",
    greatest="GREATEST",
)

# -- retention and the secret key rotation (one SQL text for both backends) ----------------------

RETENTION = RetentionQueries(
    p="%s",
    last_seq="last_seq",
    event_key=("task_id", lambda seqno, task_id: task_id),
    lock=" FOR UPDATE",  # a follow-up's status change waits for the batch, then stops the next
    changed=lambda conn, cursor: cursor.rowcount,
)
SECRETS = SecretQueries(p="%s", changed=lambda conn, cursor: cursor.rowcount)
SPACE = NO_SPACE  # autovacuum makes the room of deleted rows reusable (retention's docstring)

# Notification targets and the outbox (one SQL text for both backends: outbox_queries); the
# rows written with events are written in the events' statement (postgres_changes).
OUTBOX = outbox_queries.Dialect(placeholder="%s", lock_rows=" FOR UPDATE SKIP LOCKED")
