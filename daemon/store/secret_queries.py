"""The SQL of the secret key rotation sweep (daemon/secrets.py): one text for both backends.

A secret column is named once, in ``daemon.secrets.SECRET_COLUMNS``, as a ``SecretColumn``:
the table, the column that finds a row (ordered: the sweep goes through it in pages), the
encrypted column, and an optional filter (a table of which only some rows hold secrets). The
names come from that list in the code, never from a request; ``SecretColumn`` checks they are
plain identifiers before any of them goes into SQL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


@dataclass(frozen=True)
class SecretColumn:
    """A column of encrypted secrets; ``what`` names them for an operator."""

    table: str
    key: str
    column: str
    what: str
    #: Only rows where ``key`` is this value hold a secret (None: every row).
    only_key: str | None = None

    def __post_init__(self) -> None:
        for name in (self.table, self.key, self.column):
            if not _IDENTIFIER.fullmatch(name):
                raise ValueError(f"not an SQL identifier: {name!r}")


@dataclass(frozen=True)
class SecretQueries:
    """The sweep's statements with the backend's placeholder ``p`` and ``changed(conn,
    cursor)``, the rows the last statement changed."""

    p: str
    changed: Callable[[Any, Any], int]

    def _where(self, col: SecretColumn) -> tuple[str, tuple[Any, ...]]:
        if col.only_key is None:
            return f"{col.column} IS NOT NULL", ()
        return f"{col.column} IS NOT NULL AND {col.key} = {self.p}", (col.only_key,)

    def page(self, conn: Any, col: SecretColumn, after: Any, limit: int) -> list[tuple[Any, bytes]]:
        """Up to ``limit`` ``(key, secret)`` pairs with key after ``after`` (None: from the
        first), in key order."""
        where, params = self._where(col)
        if after is not None:
            where, params = f"{where} AND {col.key} > {self.p}", (*params, after)
        rows = conn.execute(
            f"SELECT {col.key}, {col.column} FROM {col.table} WHERE {where} "
            f"ORDER BY {col.key} LIMIT {self.p}",
            (*params, limit),
        ).fetchall()
        return [(key, bytes(value)) for key, value in rows]

    def newest(self, conn: Any, col: SecretColumn, limit: int) -> list[bytes]:
        """The secrets of the last ``limit`` rows in key order (the most recently made)."""
        where, params = self._where(col)
        rows = conn.execute(
            f"SELECT {col.column} FROM {col.table} WHERE {where} ORDER BY {col.key} DESC LIMIT {self.p}",
            (*params, limit),
        ).fetchall()
        return [bytes(row[0]) for row in rows]

    def count(self, conn: Any, col: SecretColumn) -> int:
        where, params = self._where(col)
        row = conn.execute(f"SELECT COUNT(*) FROM {col.table} WHERE {where}", params).fetchone()
        return int(row[0])

    def swap(self, conn: Any, col: SecretColumn, changes: Sequence[tuple[Any, bytes, bytes]]) -> int:
        """Set each ``(key, old, new)``'s secret to ``new`` where it still is ``old`` (a row
        changed meanwhile, by a sign-in say, keeps its newer secret); how many were set."""
        swapped = 0
        p = self.p
        sql = f"UPDATE {col.table} SET {col.column} = {p} WHERE {col.key} = {p} AND {col.column} = {p}"
        for key, old, new in changes:
            swapped += self.changed(conn, conn.execute(sql, (new, key, old)))
        return swapped
