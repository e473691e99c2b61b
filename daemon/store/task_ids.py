"""Tasks found by the first characters of their id, written once for both backends.

A task id is digits and lower-case letters (Crockford base32, ``models.new_task_id``). A prefix is
looked up as the range ``prefix <= id < after`` of the ids' unique index, ``after`` being the
first string of digits and lower-case letters past every one that starts with ``prefix``
(``prefix_range``). Strings of digits and lower-case letters sort alike byte by byte (SQLite)
and in PostgreSQL's collations, and a range, unlike ``LIKE``, uses a b-tree index in any
collation; the ``substr`` test on top keeps a collation that sorted them otherwise from ever
returning an id that does not start with the prefix.
"""

from __future__ import annotations

from typing import Any

ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"  # in the order both backends sort them


def prefix_range(prefix: str) -> tuple[str, str | None]:
    """``(low, high)``: the strings of ``ID_ALPHABET`` that start with ``prefix`` (one of them)
    are those with ``low <= s < high``; ``high`` None when there is no upper end (all z)."""
    for i in range(len(prefix) - 1, -1, -1):
        place = ID_ALPHABET.index(prefix[i])
        if place + 1 < len(ID_ALPHABET):
            return prefix, prefix[:i] + ID_ALPHABET[place + 1]
    return prefix, None


def task_ids_with_prefix(
    conn: Any, prefix: str, *, user_id: int | None = None, limit: int = 100, ph: str = "?"
) -> list[str]:
    """The ids that start with ``prefix``, in order, ``limit`` at most; only the tasks of
    ``user_id`` when given. A prefix with anything but digits and lower-case letters (or none
    at all) matches no task. ``ph``: the backend's placeholder (``?`` apsw, ``%s`` psycopg)."""
    if not prefix or not set(prefix) <= set(ID_ALPHABET):
        return []
    low, high = prefix_range(prefix)
    where, params = ["id >= ?", "substr(id, 1, ?) = ?"], [low, len(prefix), prefix]
    if high is not None:
        where.append("id < ?")
        params.append(high)
    if user_id is not None:
        where.append("user_id = ?")
        params.append(user_id)
    sql = f"SELECT id FROM tasks WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
    rows = conn.execute(sql.replace("?", ph), [*params, limit]).fetchall()
    return [row[0] for row in rows]
