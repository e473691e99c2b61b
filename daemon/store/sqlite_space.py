"""Giving the room of deleted rows back to the file system, on SQLite, without stopping.

A deleted row's pages go to SQLite's free list: reused by later writes, but the file keeps
its size. With ``auto_vacuum = INCREMENTAL`` the pages on the free list can be moved to the end
of the file and cut off, a few at a time (``PRAGMA incremental_vacuum(N)``): each step is one
short write transaction of the one writer, like any other, so readers (WAL) and writers never
wait long. Retention runs such steps after it deletes (``reclaim``).

A database made before this mode was chosen needs one ``VACUUM`` to switch to it: it rewrites
the whole file and holds it exclusively while it does, seconds per hundred MiB. It runs at
open, before the writer and the readers exist (``convert_at_open``): at once for a file up to
``CONVERT_AT_OPEN_MAX_BYTES``; for a larger one only when an operator asked for it with
``agentctl compact --full`` (it then runs at the next start, which takes that much longer);
until then the free pages are reused but not given back. A new database is converted at its
first open, while it is still empty.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import apsw

from .sqlite_conns import open_connection, scalar

log = logging.getLogger(__name__)

INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL
#: Files up to this size are converted at open without being asked (about a second).
CONVERT_AT_OPEN_MAX_BYTES = 256 * 1024 * 1024
#: How large the WAL stays once it starts over after a reclaim (``PRAGMA journal_size_limit``).
WAL_LIMIT_BYTES = 64 * 1024 * 1024
#: The ``cluster_values`` name of an operator's request to convert a larger file at next open.
CONVERT_REQUEST = "sqlite_incremental_vacuum_requested"


def convert_at_open(conn: apsw.Connection, path: Path) -> bool:
    """Switch the database to incremental vacuum if it is not yet, when it is small or an
    operator asked; whether it converted. Only at open: nothing else may use the file (the
    data dir is locked), and ``conn`` is in no transaction. Blocking."""
    if scalar(conn.execute("PRAGMA auto_vacuum")) == INCREMENTAL:
        return False
    size = path.stat().st_size
    requested = _requested(conn)
    if size > CONVERT_AT_OPEN_MAX_BYTES and not requested:
        log.info(
            "the database (%d MiB) gives deleted rows' room back only after a one-time "
            "conversion: run `agentctl compact --full`, and it converts at the next start",
            size >> 20,
        )
        return False
    began = time.perf_counter()
    conn.execute(f"PRAGMA auto_vacuum = {INCREMENTAL}")
    conn.execute("VACUUM")
    if requested:
        with conn:
            conn.execute("DELETE FROM cluster_values WHERE name = ?", (CONVERT_REQUEST,))
    log.info(
        "database converted to incremental vacuum in %.1f s (%d MiB before, %d MiB after)",
        time.perf_counter() - began,
        size >> 20,
        path.stat().st_size >> 20,
    )
    return True


def _requested(conn: apsw.Connection) -> bool:
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'cluster_values'").fetchone()
    if not exists:
        return False
    found = conn.execute("SELECT 1 FROM cluster_values WHERE name = ?", (CONVERT_REQUEST,)).fetchone()
    return found is not None


def request_conversion(conn: apsw.Connection, now: float) -> bool:
    """Ask for the conversion at the next open (a write); False when none is needed."""
    if scalar(conn.execute("PRAGMA auto_vacuum")) == INCREMENTAL:
        return False
    conn.execute(
        "INSERT OR REPLACE INTO cluster_values (name, value, node, updated_at) VALUES (?, ?, NULL, ?)",
        (CONVERT_REQUEST, b"1", now),
    )
    return True


def reclaim(conn: apsw.Connection, pages: int) -> int:
    """Give back up to ``pages`` free pages (a write, in the writer's transaction); the bytes
    given back. 0 when there are none or the file is not in incremental mode yet."""
    if scalar(conn.execute("PRAGMA auto_vacuum")) != INCREMENTAL:
        return 0
    # The pages moved pass through the WAL, which keeps the largest size it reached: cut it
    # back to WAL_LIMIT_BYTES when it next starts over (the writer's connection keeps this).
    conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}").fetchall()
    before = scalar(conn.execute("PRAGMA freelist_count"))
    if not before:
        return 0
    # Stepped to its end: each step of the statement moves one page.
    conn.execute(f"PRAGMA incremental_vacuum({int(pages)})").fetchall()
    after = scalar(conn.execute("PRAGMA freelist_count"))
    return int(before - after) * int(scalar(conn.execute("PRAGMA page_size")))


def checkpoint(path: Path) -> bool:
    """A PASSIVE checkpoint on a connection of its own: copies what it can of the WAL into the
    file (and cuts the file to the database's size once all of it is). False when another
    checkpoint (the checkpointer thread's) was under way. Blocking."""
    conn = open_connection(path)
    try:
        conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        return True
    except apsw.BusyError:
        return False
    finally:
        conn.close()


def free_bytes(conn: apsw.Connection) -> int:
    """Room on the free list: what ``reclaim`` could still give back (or later writes reuse)."""
    return int(scalar(conn.execute("PRAGMA freelist_count"))) * int(scalar(conn.execute("PRAGMA page_size")))


class SqliteSpace:
    """``queries.SPACE`` of the SQLite backend (see ``upkeep_store``)."""

    reclaims = True
    reclaim = staticmethod(reclaim)
    free_bytes = staticmethod(free_bytes)
    request_conversion = staticmethod(request_conversion)
    checkpoint = staticmethod(checkpoint)


SPACE = SqliteSpace()
