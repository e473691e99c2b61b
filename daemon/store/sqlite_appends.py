"""Event appends for the SQLite writer, merged or one at a time, and the JSON encoder of every write.

Events live in a rowid table in commit order (schema v6), found through the unique index
``events_by_task (task_no, seq)`` where ``task_no`` is the task's ``seqno``; a task's last seq is
the top of its range in that index. The writer thread hands consecutive ``append_events`` jobs
of one batch to ``append_event_batch`` (``sqlite_io``), which writes them with one ``INSERT``
over many rows, and remembers each task's ``task_no`` and last seq between its transactions.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import apsw

from ..errors import NotFound
from .models import Event, NewEvent
from .sqlite_conns import Row, scalar

# One encoder for every write: json.dumps with options builds a new one on each call, and
# JSONEncoder.encode its C encoder; this one is built once (every event's data goes through it).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# (CPython's private accelerator, None where it is missing: then ``_ENCODER`` does the work.)
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODE = (
    _c_make_encoder(
        None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )
    if _c_make_encoder is not None
    else None
)


def dumps(value: Any) -> str:
    """``value`` as compact JSON text, as ``_ENCODER.encode`` writes it."""
    if _C_ENCODE is None:
        return _ENCODER.encode(value)
    try:
        return "".join(_C_ENCODE(value, 0))
    except RecursionError:  # without the cycle check: let the usual encoder say what is wrong
        return _ENCODER.encode(value)


# A task's last seq, as a column of ``SELECT ... FROM tasks``: the last entry of its range in
# events_by_task (one seek), 0 before its first event.
TASK_LAST_SEQ = "COALESCE((SELECT MAX(seq) FROM events WHERE task_no = tasks.seqno), 0)"
_LOOKUP = f"SELECT seqno, {TASK_LAST_SEQ} FROM tasks WHERE id = ?"
_INSERT_ONE = "INSERT INTO events (task_no, seq, ts, type, data) VALUES (?, ?, ?, ?, ?)"
_INSERT_ONE_BY_ID = (
    "INSERT INTO events (task_no, seq, ts, type, data) "
    "VALUES ((SELECT seqno FROM tasks WHERE id = ?), ?, ?, ?, ?)"
)


def _event(
    task_id: str,
    seq: int,
    ts: float,
    type: str,
    data: dict[str, Any],
    data_json: str,
    _new: Any = object.__new__,
) -> Event:
    """``Event(task_id, seq, ts, type, data, data_json)`` in less than half the time.

    The frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``; every
    event appended or replayed is built here (``Event`` has no ``__post_init__`` or slots, and
    tests/test_emit_path.py checks the two agree).
    """
    event = _new(Event)
    event.__dict__.update(task_id=task_id, seq=seq, ts=ts, type=type, data=data, data_json=data_json)
    return event


class _StaleLastSeq(Exception):
    """The writer's remembered counter of a task disagrees with the table (a bug elsewhere)."""


# Beyond this many tasks, the writer forgets what it remembers and reads it again.
_KEPT = 20_000


def _memory(conn: apsw.Connection) -> tuple[dict[str, int], dict[str, int]]:
    """The writer's ``(task_nos, last_seqs)``; fresh empty ones on another connection."""
    last_seqs: dict[str, int] | None = getattr(conn, "last_seqs", None)
    if last_seqs is None:
        return {}, {}
    task_nos: dict[str, int] = conn.task_nos  # type: ignore[attr-defined]
    if len(task_nos) > _KEPT or len(last_seqs) > _KEPT:
        task_nos.clear()
        last_seqs.clear()
    return task_nos, last_seqs


def append_event_batch(
    conn: apsw.Connection, appends: list[tuple[str, Sequence[NewEvent], float]]
) -> list[list[Event] | NotFound]:
    """Many ``append_events(conn, task_id, new, now=now)`` at once, in order, merged.

    One ``INSERT`` for all the events. Each task's ``task_no`` and last seq come from the
    writer's memory or else one read. A remembered seq that is behind the table makes the
    ``INSERT`` fail on the unique index; one that is ahead is caught by checking, in one
    statement, that the event before each task's first new one exists. Either way the batch
    raises (the writer then rolls back, forgets and runs each append alone) instead of leaving
    a gap or a duplicate. An unknown task gets ``NotFound`` in its place in the result, and
    nothing is written for it.
    """
    task_nos, last_seqs = _memory(conn)
    cursor = conn.cursor()
    touched: set[str] = set()
    check: list[int] = []  # (task_no, seq) pairs, flat: events that must already be there
    params: list[Any] = []
    outcomes: list[list[Event] | NotFound] = []
    for task_id, new, now in appends:
        seq = last_seqs.get(task_id)
        task_no = task_nos.get(task_id)
        if seq is None or task_no is None:
            row = cursor.execute(_LOOKUP, (task_id,)).fetchone()
            if row is None:
                outcomes.append(NotFound(f"no task {task_id}"))
                continue
            task_no, seq = row
            task_nos[task_id] = task_no
            touched.add(task_id)
        elif task_id not in touched:
            touched.add(task_id)
            if seq:
                check += (task_no, seq)
        if len(new) == 1:  # what nearly every emit is
            item = new[0]
            seq += 1
            data = item.data
            text = dumps(data)
            outcomes.append([_event(task_id, seq, now, item.type, data, text)])
            params += (task_no, seq, now, item.type, text)
        else:
            events = []
            for item in new:
                seq += 1
                data = item.data
                text = dumps(data)
                events.append(_event(task_id, seq, now, item.type, data, text))
                params += (task_no, seq, now, item.type, text)
            outcomes.append(events)
        last_seqs[task_id] = seq
    if check and _count_present(cursor, check) != len(check) // 2:
        raise _StaleLastSeq("a task's remembered event counter is ahead of its events")
    if params:
        _many_rows(cursor, _INSERT_EVENTS, params)
    return outcomes


def insert_events(conn: apsw.Connection, cursor: apsw.Cursor, events: list[Event]) -> None:
    """Insert one task's numbered events (the caller got their seqs in this transaction)."""
    task_id = events[0].task_id
    task_nos, last_seqs = _memory(conn)
    task_no = task_nos.get(task_id)
    if task_no is None:
        cursor.executemany(_INSERT_ONE_BY_ID, [(task_id, e.seq, e.ts, e.type, e.data_json) for e in events])
    else:
        cursor.executemany(_INSERT_ONE, [(task_no, e.seq, e.ts, e.type, e.data_json) for e in events])
    last_seqs[task_id] = events[-1].seq


def last_seq(conn: apsw.Connection, cursor: apsw.Cursor, task_id: str) -> int:
    """The task's last seq, read from the table (one seek of ``events_by_task``; this path
    does not trust the writer's memory); ``NotFound`` if there is no such task."""
    row = cursor.execute(_LOOKUP, (task_id,)).fetchone()
    if row is None:
        raise NotFound(f"no task {task_id}")
    _memory(conn)[0][task_id] = row[0]
    return row[1]


def read_events(conn: apsw.Connection, task_id: str, after: int, limit: int) -> list[Event]:
    rows: list[Row] = conn.execute(_READ, (task_id, after, limit)).fetchall()
    loads = json.loads
    return [_event(task_id, seq, ts, etype, loads(data), data) for seq, ts, etype, data in rows]


_READ = (
    "SELECT seq, ts, type, data FROM events "
    "WHERE task_no = (SELECT seqno FROM tasks WHERE id = ?) AND seq > ? ORDER BY seq LIMIT ?"
)


def _count_present(cursor: apsw.Cursor, pairs: list[int]) -> int:
    found, i, n = 0, 0, len(pairs)
    while i < n:
        part = pairs[i : i + 2 * _CHUNK_ROWS]
        found += scalar(cursor.execute(*_padded(_COUNT_PRESENT, part, 0)))
        i += 2 * _CHUNK_ROWS
    return found


def _many_rows(cursor: apsw.Cursor, statement: tuple[str, int], params: list[Any]) -> None:
    step = statement[1] * _CHUNK_ROWS
    for i in range(0, len(params), step):
        cursor.execute(*_padded(statement, params[i : i + step], None))


# Statements over many rows at once, ``{values}`` being ``(?, ...), (?, ...)`` for each row.
# One statement per batch (up to _CHUNK_ROWS rows) rather than ``executemany`` or one per row:
# apsw lets go of the GIL for each step it runs, and every time the writer wants it back while
# the Trio thread runs Python, both threads pay a GIL handoff (up to the 5 ms switch interval in
# latency, and the CPU of the wake-ups). The rows are padded up to a power of two with rows
# the statement skips, so that at most nine texts per statement are ever prepared (apsw caches
# them). ``OR FAIL``: a statement over many rows that may abort halfway would otherwise keep a
# statement journal (a copy of every page it changes) to undo just itself; here a failure rolls
# the whole transaction (or the job's savepoint) back anyway.
_INSERT_EVENTS = (
    (
        "INSERT OR FAIL INTO events (task_no, seq, ts, type, data) "
        "SELECT * FROM (VALUES {values}) WHERE column1 IS NOT NULL"
    ),
    5,
)
# Padded with (0, 0): no task has seqno 0.
_COUNT_PRESENT = (
    (
        "SELECT COUNT(*) FROM (VALUES {values}) AS v "
        "JOIN events ON events.task_no = v.column1 AND events.seq = v.column2"
    ),
    2,
)
_CHUNK_ROWS = 256


@functools.lru_cache(maxsize=32)
def _chunk_sql(template: str, width: int, count: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return template.format(values=", ".join([row] * count))


def _padded(statement: tuple[str, int], params: list[Any], pad: Any) -> tuple[str, list[Any]]:
    template, width = statement
    rows = len(params) // width
    count = 1 << (rows - 1).bit_length()
    if count > rows:
        params = params + [pad] * (width * (count - rows))
    return _chunk_sql(template, width, count), params
