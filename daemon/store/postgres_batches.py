"""Status changes of several tasks written together on PostgreSQL: one read, one write.

While one batch is on its way to the database, the status changes asked for meanwhile wait and
then go together (``TransitionBatches``), as do those asked for in one pass of the scheduler
(attempts that a claim started together and that end together): the tasks' rows are read in
one statement, each change is planned by ``lifecycle.plan_transition`` on its row as read (as
``postgres_changes`` does for one), and one statement writes every row still as read, with
their events and notices. A change whose row moved in between, a start (``running``), and a
batch of one go through ``postgres_changes.transition``, one at a time. A failing change fails
alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio
from psycopg import Connection

from ..errors import InvalidTransition, NotFound
from ..notify.outbox import Notification, plan_notifications
from ..states import TaskStatus
from .lifecycle import Transition, plan_transition
from .models import Event, NewEvent, Task
from .postgres_changes import OUTBOX_CTE, dumps, notice_flags, outbox_params, status_columns, transition
from .postgres_claims import NOTICES_PER_PAYLOAD, TASK_COLUMNS

# Row decoding is backend-neutral (same columns, same JSON text); shared, not copied.
from .sqlite_queries import task_from_row

Outcome = tuple[Task, list[Event]] | BaseException

_WRITE = f"""
WITH input AS (
    SELECT * FROM unnest(
        %(ids)s::text[], %(read_seqs)s::bigint[], %(read_statuses)s::text[], %(ns)s::int[],
        %(status)s::text[], %(attempt)s::int[], %(reason)s::text[], %(error)s::text[],
        %(due_at)s::float8[], %(started_at)s::float8[], %(finished_at)s::float8[],
        %(node_id)s::text[], %(nows)s::float8[], %(flags)s::text[]
    ) AS x(id, read_seq, read_status, n, status, attempt, reason, error, due_at, started_at,
           finished_at, node_id, now, flags)
),
row AS (
    UPDATE tasks t SET status = x.status, attempt = x.attempt, reason = x.reason, error = x.error,
        due_at = x.due_at, started_at = x.started_at, finished_at = x.finished_at,
        updated_at = x.now, node_id = x.node_id, last_seq = t.last_seq + x.n
    FROM input x
    WHERE t.id = x.id AND t.last_seq = x.read_seq AND t.status = x.read_status
    RETURNING t.id, x.read_seq AS before, x.n, x.now, x.flags
),
logged AS (
    INSERT INTO events (task_id, seq, ts, type, data)
    SELECT e.id, r.before + e.i, r.now, e.type, e.data
    FROM unnest(%(event_ids)s::text[], %(event_is)s::int[], %(types)s::text[], %(data)s::text[])
        AS e(id, i, type, data)
    JOIN row r ON r.id = e.id
){{outbox}},
notified AS (
    SELECT pg_notify('agentd_events', string_agg(concat_ws(' ',
        COALESCE(NULLIF(current_setting('agentd.node', true), ''), '-'), id, before + 1, before + n, flags),
        ';'))
    FROM (SELECT *, ROW_NUMBER() OVER () AS k FROM row) r GROUP BY (k - 1) / {NOTICES_PER_PAYLOAD}
)
SELECT r.id, (SELECT count(*) FROM notified) FROM row r
"""
# Without and with the outbox rows of the changes' notifications (postgres_changes.OUTBOX_CTE).
_WRITES = (
    _WRITE.format(outbox=""),
    _WRITE.format(outbox=OUTBOX_CTE.format(written="n.task_id IN (SELECT id FROM row)")),
)


@dataclass
class _Planned:
    change: Transition
    now: float
    read: Task
    changed: Task
    new: list[NewEvent]
    notes: list[Notification]


def write_batch(conn: Connection, items: Sequence[tuple[Transition, float]]) -> list[Outcome]:
    """Apply each ``(change, now)``; each one's task and events, or the error it failed with.

    Runs without a transaction around it (each statement its own).
    """
    outcomes: list[Outcome | None] = [None] * len(items)
    together = [i for i, (change, _) in enumerate(items) if change.target is not TaskStatus.RUNNING]
    if len(together) < 2:
        together = []
    rows = {}
    if together:
        ids = [items[i][0].task_id for i in together]
        found = conn.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ANY(%s)", (ids,)).fetchall()
        rows = {row[0]: task_from_row(row) for row in found}
    planned: dict[int, _Planned] = {}
    for i in together:
        change, now = items[i]
        read = rows.get(change.task_id)
        try:
            if read is None:
                raise NotFound(f"no task {change.task_id}")
            changed, new = plan_transition(read, change, now=now)
        except (NotFound, InvalidTransition) as exc:  # refused on the row as read: nothing written
            outcomes[i] = exc
            continue
        may_notify = changed.status.is_terminal or changed.status is TaskStatus.WAITING_INPUT
        notes = plan_notifications(changed, new, now) if may_notify else []
        planned[i] = _Planned(change, now, read, changed, new, notes)
    written = _write(conn, list(planned.values())) if planned else set()
    for i, plan in planned.items():
        if plan.read.id in written:
            outcomes[i] = plan.changed, _events(plan)
    for i, (change, now) in enumerate(items):
        if outcomes[i] is None:  # alone, or its row moved: decided again on the row locked
            try:
                outcomes[i] = transition(conn, change, now)
            except Exception as exc:  # noqa: BLE001 - its caller's, raised there; the others go on
                outcomes[i] = exc
    assert all(outcome is not None for outcome in outcomes)
    return [outcome for outcome in outcomes if outcome is not None]


def _write(conn: Connection, plans: list[_Planned]) -> set[str]:
    """One statement for every plan whose row is still as read; the ids it wrote."""
    columns = [status_columns(plan.changed) for plan in plans]
    params: dict[str, Any] = {key: [c[key] for c in columns] for key in columns[0]}
    params.update(
        ids=[plan.read.id for plan in plans],
        read_seqs=[plan.read.last_seq for plan in plans],
        read_statuses=[plan.read.status.value for plan in plans],
        ns=[len(plan.new) for plan in plans],
        nows=[plan.now for plan in plans],
        flags=[notice_flags(plan.new) for plan in plans],
        event_ids=[plan.read.id for plan in plans for _ in plan.new],
        event_is=[i for plan in plans for i in range(1, len(plan.new) + 1)],
        types=[item.type for plan in plans for item in plan.new],
        data=[dumps(item.data) for plan in plans for item in plan.new],
    )
    notes = [note for plan in plans for note in plan.notes]
    if notes:
        params.update(outbox_params(notes, 0.0))
        params["n_nows"] = [plan.now for plan in plans for _ in plan.notes]
    return {row[0] for row in conn.execute(_WRITES[bool(notes)], params).fetchall()}


def _events(plan: _Planned) -> list[Event]:
    before = plan.read.last_seq
    return [
        Event(plan.read.id, before + i, plan.now, item.type, item.data, dumps(item.data))
        for i, item in enumerate(plan.new, 1)
    ]


@dataclass(eq=False)
class _Pending:
    change: Transition
    now: float
    outcome: Outcome | None = None


@dataclass(eq=False)
class TransitionBatches:
    """Gathers the status changes asked for while a batch is written; see the module docstring.

    ``run(items)`` writes one batch (``write_batch`` on a connection) off the Trio thread. One
    batch at a time: the next one gathers meanwhile (two at a time made smaller batches, and
    fewer changes a second, in ``bench/queue_pg_nodes.py``).
    """

    run: Callable[[list[tuple[Transition, float]]], Awaitable[list[Outcome]]]
    _queued: list[_Pending] = field(default_factory=list)
    _writing: trio.Event | None = None

    async def change(self, change: Transition, now: float) -> tuple[Task, list[Event]]:
        """Apply ``change`` in the next batch; its task and events once committed.

        Cancellation: shielded once asked for: the caller always learns whether it committed
        (as every store write; the caller publishes the events).
        """
        pending = _Pending(change, now)
        self._queued.append(pending)
        with trio.CancelScope(shield=True):
            # The changes asked for in this pass of the scheduler go together: attempts a claim
            # started together end together, and the first need not go alone.
            await trio.lowlevel.cancel_shielded_checkpoint()
            while pending.outcome is None:
                if self._writing is not None:  # a batch is on its way: ours is the next
                    await self._writing.wait()
                    continue
                batch, self._queued = self._queued, []
                self._writing = writing = trio.Event()
                try:
                    outcomes = await self.run([(item.change, item.now) for item in batch])
                except Exception as exc:  # noqa: BLE001 - the batch failed whole: raised to each caller
                    outcomes = [exc] * len(batch)
                finally:
                    self._writing = None
                    writing.set()
                for item, outcome in zip(batch, outcomes, strict=True):
                    item.outcome = outcome
        result = pending.outcome
        assert result is not None, "the loop ends once the outcome is in"
        if isinstance(result, BaseException):
            raise result
        return result
