"""Share links of tasks (schema v12), written once for both backends: the SQL is portable.

A share link is a read-only, expiring, revocable token for one task. The store keeps only the
token's hash (``daemon.tokens.hash_token``, as for API tokens), so nothing in it reads a task.
A link is live while it is neither revoked nor expired and the user who made it is not
disabled (an operator's ``user-revoke`` ends that user's links too).

Each function runs inside the one transaction the store opened for it. ``ph`` is the backend's
placeholder (``?`` for apsw, ``%s`` for psycopg).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SHARE_ID_PREFIX = "sh_"
_COLUMNS = "id, task_id, user_id, created_at, expires_at, revoked_at"


@dataclass(frozen=True)
class ShareLink:
    """A share link as stored, without its token (which only its maker saw, once)."""

    id: str
    task_id: str
    user_id: int
    created_at: float
    expires_at: float
    revoked_at: float | None

    def live(self, now: float) -> bool:
        return self.revoked_at is None and now < self.expires_at

    def public(self, now: float) -> dict[str, Any]:
        """The JSON shape the task's owner sees (never the token, nor its hash)."""
        return {
            "id": self.id,
            "task_id": self.task_id,
            "user_id": self.user_id,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "live": self.live(now),
        }


def new_share_id() -> str:
    return SHARE_ID_PREFIX + secrets.token_hex(8)


def _sql(text: str, ph: str) -> str:
    return text if ph == "?" else text.replace("?", ph)


def _link(row: Sequence[Any]) -> ShareLink:
    share_id, task_id, user_id, created_at, expires_at, revoked_at = row
    return ShareLink(share_id, task_id, int(user_id), created_at, expires_at, revoked_at)


def insert_share(
    conn: Any,
    link: ShareLink,
    token_hash: str,
    live_cap: int,
    *,
    ph: str = "?",
) -> bool:
    """Store ``link`` under ``token_hash``, unless its task has ``live_cap`` live links already
    (False, nothing written): what one task's owner can grow is bounded."""
    (live,) = conn.execute(
        _sql(
            "SELECT COUNT(*) FROM share_links WHERE task_id = ? AND revoked_at IS NULL AND expires_at > ?", ph
        ),
        (link.task_id, link.created_at),
    ).fetchone()
    if live >= live_cap:
        return False
    conn.execute(
        _sql(
            f"INSERT INTO share_links ({_COLUMNS}, token_hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ph,
        ),
        (link.id, link.task_id, link.user_id, link.created_at, link.expires_at, None, token_hash),
    )
    return True


def list_shares(conn: Any, task_id: str, *, ph: str = "?") -> list[ShareLink]:
    """The task's links, live or not, oldest first."""
    rows = conn.execute(
        _sql(f"SELECT {_COLUMNS} FROM share_links WHERE task_id = ? ORDER BY created_at, id", ph),
        (task_id,),
    ).fetchall()
    return [_link(row) for row in rows]


def share_by_id(conn: Any, share_id: str, *, ph: str = "?") -> ShareLink | None:
    row = conn.execute(_sql(f"SELECT {_COLUMNS} FROM share_links WHERE id = ?", ph), (share_id,)).fetchone()
    return _link(row) if row else None


def revoke_share(conn: Any, task_id: str, share_id: str, now: float, *, ph: str = "?") -> ShareLink | None:
    """Revoke the task's link ``share_id`` (once: a revoked one keeps its first ``revoked_at``);
    the link as it is now, or None when the task has no such link."""
    conn.execute(
        _sql("UPDATE share_links SET revoked_at = ? WHERE id = ? AND task_id = ? AND revoked_at IS NULL", ph),
        (now, share_id, task_id),
    )
    row = conn.execute(
        _sql(f"SELECT {_COLUMNS} FROM share_links WHERE id = ? AND task_id = ?", ph), (share_id, task_id)
    ).fetchone()
    return _link(row) if row else None


def share_by_token_hash(conn: Any, token_hash: str, now: float, *, ph: str = "?") -> ShareLink | None:
    """The live link with this token hash, or None (unknown, revoked, expired, maker disabled)."""
    columns = ", ".join(f"s.{name.strip()}" for name in _COLUMNS.split(","))
    row = conn.execute(
        _sql(
            f"SELECT {columns} FROM share_links s JOIN users u ON u.id = s.user_id "
            "WHERE s.token_hash = ? AND s.revoked_at IS NULL AND s.expires_at > ? AND NOT u.disabled",
            ph,
        ),
        (token_hash, now),
    ).fetchone()
    return _link(row) if row else None
