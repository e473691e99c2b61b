"""The SQL of users and their API tokens on SQLite, as plain functions of a connection.

A part of ``sqlite_queries``, which re-exports every function here: the store calls them as
``queries.<name>``. GitHub identities (and the user row decoder) are written once for both
backends in ``identity_queries``. Write functions run on the writer thread inside its
transaction; read functions on a reader thread; none on the Trio thread.
"""

from __future__ import annotations

import apsw

from ..errors import NotFound
from .identity_queries import USER_COLUMNS as _USER_COLUMNS, user_from_row
from .models import User


def upsert_user(
    conn: apsw.Connection,
    login: str,
    now: float,
    *,
    github_id: int | None = None,
    name: str | None = None,
    is_operator: bool | None = None,
) -> User:
    conn.execute(
        "INSERT INTO users (login, github_id, name, is_operator, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (login) DO UPDATE SET "
        "github_id = COALESCE(excluded.github_id, github_id), name = COALESCE(excluded.name, name), "
        "is_operator = CASE WHEN ? IS NULL THEN is_operator ELSE excluded.is_operator END, "
        "disabled = 0, updated_at = excluded.updated_at",
        (login, github_id, name, int(bool(is_operator)), now, now, is_operator),
    )
    return user_by_login(conn, login)  # type: ignore[return-value]


def user_by_login(conn: apsw.Connection, login: str) -> User | None:
    row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE login = ?", (login,)).fetchone()
    return user_from_row(row) if row else None


def list_users(conn: apsw.Connection) -> list[User]:
    return [user_from_row(r) for r in conn.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY id")]


def insert_token(
    conn: apsw.Connection,
    user_id: int,
    token_hash: str,
    now: float,
    expires_at: float | None,
    label: str | None,
) -> None:
    conn.execute(
        "INSERT INTO api_tokens (user_id, token_hash, label, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
        (user_id, token_hash, label, now, expires_at),
    )


def user_by_token_hash(conn: apsw.Connection, token_hash: str, now: float) -> User | None:
    row = conn.execute(
        f"SELECT {', '.join('u.' + c.strip() for c in _USER_COLUMNS.split(','))} "
        "FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = ? "
        "AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > ?) AND u.disabled = 0",
        (token_hash, now),
    ).fetchone()
    return user_from_row(row) if row else None


def revoke_user(conn: apsw.Connection, login: str, now: float) -> int:
    user = user_by_login(conn, login)
    if user is None:
        raise NotFound(f"no user {login}")
    conn.execute(
        "UPDATE api_tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL", (now, user.id)
    )
    revoked = conn.changes()
    conn.execute("UPDATE users SET disabled = 1, updated_at = ? WHERE id = ?", (now, user.id))
    return revoked


def revoke_token(conn: apsw.Connection, token_hash: str, now: float) -> bool:
    conn.execute(
        "UPDATE api_tokens SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL", (now, token_hash)
    )
    return conn.changes() > 0


def set_github_token(conn: apsw.Connection, user_id: int, token_enc: bytes | None, now: float) -> None:
    conn.execute(
        "UPDATE users SET github_token_enc = ?, updated_at = ? WHERE id = ?", (token_enc, now, user_id)
    )


def github_token_enc(conn: apsw.Connection, user_id: int) -> bytes | None:
    row = conn.execute("SELECT github_token_enc FROM users WHERE id = ?", (user_id,)).fetchone()
    return row[0] if row else None


def user_by_id(conn: apsw.Connection, user_id: int) -> User | None:
    row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (user_id,)).fetchone()
    return user_from_row(row) if row else None
