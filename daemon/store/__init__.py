"""The store: every durable fact of agentd behind one narrow, typed, async interface.

The supervisor, API and agent loop use only the methods of ``Store`` (``StoreBase``: tasks,
events, conversation, tool calls, users, tokens). Each backend supplies its runners and queries
module beneath it: SQLite (apsw, PRAGMAs, the single writer) in ``sqlite*.py``, PostgreSQL in
``postgres*.py``.
"""

import os

from .base import StoreBase
from .datadir import DataDirLocked
from .lifecycle import Claim, Transition
from .models import (
    Event,
    NewEvent,
    NewTask,
    Node,
    NodeState,
    RemoteNotice,
    Revoked,
    Task,
    ToolCallStatus,
    Usage,
    User,
    new_task_id,
)
from .sqlite import SqliteStore

Store = StoreBase

__all__ = [
    "Claim",
    "DataDirLocked",
    "Event",
    "NewEvent",
    "NewTask",
    "Node",
    "NodeState",
    "RemoteNotice",
    "Revoked",
    "SqliteStore",
    "Store",
    "StoreBase",
    "Task",
    "ToolCallStatus",
    "Transition",
    "Usage",
    "User",
    "is_sqlite",
    "new_task_id",
    "open_store",
]


def is_sqlite(url: str | None) -> bool:
    """Whether the store setting ``url`` names SQLite in the data dir (the default)."""
    return not url or url == "sqlite"


async def open_store(
    data_dir: str | os.PathLike[str], url: str | None = None, *, node_id: str | None = None
) -> Store:
    """Open the store the settings name: SQLite in ``data_dir`` (default), or PostgreSQL.

    ``url`` is None/"" (or "sqlite") for ``<data_dir>/agentd.db``, or a ``postgresql://`` DSN
    for a database that several daemons may share (``node_id`` names this one in what it
    tells the others). Cancellation: as the backend's ``open``.
    """
    from pathlib import Path

    from ..errors import ConfigError

    if url is None or is_sqlite(url):
        return await SqliteStore.open(Path(data_dir))
    if url.startswith(("postgresql://", "postgres://")):
        # Imported here so that psycopg is needed only by those who choose PostgreSQL.
        from .postgres import PostgresStore

        return await PostgresStore.open(url, node_id=node_id, data_dir=Path(data_dir))
    scheme = url.split("://", 1)[0] if "://" in url else url
    raise ConfigError(
        f"store: unsupported store {scheme!r}; leave it unset for SQLite in the data dir, "
        "or give a postgresql://user@host/dbname URL"
    )
