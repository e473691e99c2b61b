"""The store: every durable fact of agentd behind one narrow, typed, async interface.

The supervisor, API and agent loop use only the methods of ``SqliteStore`` (tasks, events,
conversation, tool calls, users, tokens); SQLite specifics (apsw, PRAGMAs, the single writer)
stay inside ``sqlite*.py`` so that another backend can take its place.
"""

from .models import Event, NewEvent, Task, Usage, User, new_task_id
from .sqlite import DataDirLocked, SqliteStore

Store = SqliteStore

__all__ = [
    "DataDirLocked", "Event", "NewEvent", "SqliteStore", "Store", "Task", "Usage", "User",
    "new_task_id",
]


async def open_store(data_dir, url: str | None = None) -> Store:
    """Open the store the settings name: SQLite in ``data_dir`` (default), or PostgreSQL.

    ``url`` is None/"" (or "sqlite") for ``<data_dir>/agentd.db``, or a ``postgresql://`` DSN
    for a database that several daemons may share. Cancellation: as the backend's ``open``.
    """
    from pathlib import Path

    from ..errors import ConfigError

    if not url or url == "sqlite":
        return await SqliteStore.open(Path(data_dir))
    if url.startswith(("postgresql://", "postgres://")):
        # Imported here so that psycopg is needed only by those who choose PostgreSQL.
        from .postgres import PostgresStore

        return await PostgresStore.open(url)  # type: ignore[return-value]
    scheme = url.split("://", 1)[0] if "://" in url else url
    raise ConfigError(
        f"store: unsupported store {scheme!r}; leave it unset for SQLite in the data dir, "
        "or give a postgresql://user@host/dbname URL"
    )
