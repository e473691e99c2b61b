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
