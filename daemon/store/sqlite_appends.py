"""Merged event appends for the SQLite writer, and the JSON encoder of every SQLite write.

The writer thread hands consecutive ``append_events`` jobs of one batch to
``append_event_batch`` (``sqlite_io``), which writes them with a few statements over many rows
instead of three statements per append.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Sequence

import apsw

from ..errors import NotFound
from .models import Event, NewEvent

# One encoder for every write: json.dumps with options builds a new one on each call, and
# JSONEncoder.encode its C encoder; this one is built once (every event's data goes through it).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_C_ENCODE = (json.encoder.c_make_encoder(None, _ENCODER.default, json.encoder.encode_basestring,
                                         None, ":", ",", False, False, True)
             if json.encoder.c_make_encoder is not None else None)


def dumps(value: Any) -> str:
    """``value`` as compact JSON text, as ``_ENCODER.encode`` writes it."""
    if _C_ENCODE is None:
        return _ENCODER.encode(value)
    try:
        return "".join(_C_ENCODE(value, 0))
    except RecursionError:  # without the cycle check: let the usual encoder say what is wrong
        return _ENCODER.encode(value)


class _StaleLastSeq(Exception):
    """The writer's remembered counter of a task disagrees with the table (a bug elsewhere)."""


# Beyond this many tasks, the writer forgets the counters it remembers and reads them again.
_LAST_SEQS_KEPT = 20_000


def append_event_batch(
    conn: apsw.Connection, appends: list[tuple[str, Sequence[NewEvent], float]]
) -> list[list[Event] | NotFound]:
    """Many ``append_events(conn, task_id, new, now=now)`` at once, in order, merged.

    One ``INSERT`` for all the events and one ``UPDATE`` per task. Each task's counter comes
    from the writer's memory (``conn.last_seqs``) or else one read; every ``UPDATE`` checks
    the counter it moves from, so a wrong memory raises (the writer then rolls back, forgets
    and runs each append alone) instead of leaving a gap. An unknown task gets ``NotFound``
    in its place in the result, and nothing is written for it.
    """
    remembered: dict[str, int] | None = getattr(conn, "last_seqs", None)
    if remembered is None:
        remembered = {}
    elif len(remembered) > _LAST_SEQS_KEPT:
        remembered.clear()
    select = "SELECT last_seq FROM tasks WHERE id = ?"
    moved_from: dict[str, int] = {}
    rows: list[tuple[str, int, float, str, str]] = []
    outcomes: list[list[Event] | NotFound] = []
    for task_id, new, now in appends:
        seq = remembered.get(task_id)
        if seq is None:
            row = conn.execute(select, (task_id,)).fetchone()
            if row is None:
                outcomes.append(NotFound(f"no task {task_id}"))
                continue
            seq = row[0]
        if task_id not in moved_from:
            moved_from[task_id] = seq
        events = []
        for item in new:
            seq += 1
            text = dumps(item.data)
            events.append(Event(task_id, seq, now, item.type, item.data, text))
            rows.append((task_id, seq, now, item.type, text))
        remembered[task_id] = seq
        outcomes.append(events)
    if rows:
        # No triggers on tasks: total_changes counts exactly the rows these UPDATEs moved.
        before = conn.total_changes()
        _many_rows(conn, _MOVE_COUNTERS, [(task_id, remembered[task_id], old)
                                          for task_id, old in moved_from.items()])
        if conn.total_changes() - before != len(moved_from):
            raise _StaleLastSeq("a task's event counter moved outside append_events")
        _many_rows(conn, _INSERT_EVENTS, rows)
    return outcomes


# Statements over many rows at once, ``{values}`` being ``(?, ...), (?, ...)`` for each row.
# One statement per chunk rather than ``executemany``: apsw lets go of the GIL for each step
# it runs, and every time the writer wants it back while the Trio thread runs Python, both
# threads pay a GIL handoff (up to the 5 ms switch interval in latency, and the CPU of the
# wake-ups). Chunks are powers of two, so at most nine texts per statement are ever prepared
# (apsw caches them). ``OR FAIL``: a statement over many rows that may abort halfway would
# otherwise keep a statement journal (a copy of every page it changes) to undo just itself;
# here a failure rolls the whole transaction (or the job's savepoint) back anyway.
_MOVE_COUNTERS = ("UPDATE OR FAIL tasks SET last_seq = v.column2 FROM (VALUES {values}) AS v "
                  "WHERE tasks.id = v.column1 AND tasks.last_seq = v.column3", 3)
_INSERT_EVENTS = ("INSERT OR FAIL INTO events (task_id, seq, ts, type, data) VALUES {values}", 5)
_CHUNK_ROWS = 256


@functools.lru_cache(maxsize=32)
def _chunk_sql(template: str, width: int, count: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return template.format(values=", ".join([row] * count))


def _many_rows(conn: apsw.Connection, statement: tuple[str, int], rows: list[tuple[Any, ...]]) -> None:
    template, width = statement
    i, n = 0, len(rows)
    while i < n:
        count = min(_CHUNK_ROWS, 1 << ((n - i).bit_length() - 1))
        conn.execute(_chunk_sql(template, width, count),
                     [value for row in rows[i:i + count] for value in row])
        i += count
