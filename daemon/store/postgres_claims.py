"""Claims on PostgreSQL: a round of tasks started set-based, however many daemons claim at once.

A claim round ranks the queue as ``cluster_queries.Dialect.claim_tasks`` does (round-robin
across users, FIFO within), locks the first ``limit`` rows nobody else holds (``FOR UPDATE
SKIP LOCKED``), moves them to running, inserts their ``task.status`` events and sends their
notices, all set-based. No lock is shared by all claims.

Without a per-user cap that is one statement, and claims never wait for each other: each takes
rows the others do not hold. The round-robin stamp on a user's row (``last_started_at``) is
written only if no other claim holds that row; that claim stamps it just as well.

With a cap (``user_limit``) a claim must know each user's running tasks as they are, not as its
snapshot saw them: two claims for one user could otherwise both see room for one more. So a
capped round is two statements in one transaction. The first ranks and locks the rows as above,
then locks their users' rows (``FOR NO KEY UPDATE``, in user id order, so that two claims never
wait on each other in a cycle). The second, with a snapshot taken after those locks, counts each
user's running tasks, starts what the cap allows and leaves the rest queued. Every other way
into running locks the user's row too (``postgres_changes.transition``), so a count taken under
that lock sees every start that could matter.

(The capped round does not lock and update a user's row in one statement: an UPDATE of a row
that the same statement locked after waiting for it can deadlock with another waiter.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from psycopg.pq import TransactionStatus as ConnectionState

from ..states import TaskStatus
from .cluster_queries import ClaimRound, Dialect
from .lifecycle import Transition, plan_transition
from .models import Event, Task

# Row decoding is backend-neutral (same columns, same JSON text); shared, not copied.
from .sqlite_queries import task_from_row

TASK_COLUMNS = (
    "id, user_id, repo_url, prompt, base_branch, status, attempt, created_at, updated_at, due_at, "
    "reason, error, budget, usage, branch, pr_url, diff, started_at, finished_at, last_seq, "
    "idempotency_key, node_id, workspace_branch, model, draft, pr_title, compacted_at"
)
_T = ", ".join(f"t.{name.strip()}" for name in TASK_COLUMNS.split(","))
_P = ", ".join(f"p.{name.strip()}" for name in TASK_COLUMNS.split(","))

#: How many queued tasks of each user a claim looks at beyond those it wants: rows other daemons
#: are claiming at the same moment are skipped, and the claim still fills its slots.
SLACK = 32
#: Notices sent in one NOTIFY payload (PostgreSQL's limit is 8000 bytes; one is under 80).
NOTICES_PER_PAYLOAD = 50

# ``picked``: the rows a round may start, locked, in claim order (``ord``). Its parts:
# waiting, the users with queued tasks (a loose scan of the index ``tasks_queued_by_user``);
# heads, each one's first ``window`` queued tasks, ``rn`` their rank within the user; running,
# with a cap, those users' running tasks as the snapshot has them; ranked, the round-robin
# order (each user's first, the user started longest ago first; then each user's second...),
# under the cap as far as the snapshot tells; picked, the first ``limit`` rows nobody else holds
# (a row another claim took after the snapshot fails the recheck of its status and is skipped).
_PICK = f"""
WITH RECURSIVE waiting(user_id) AS (
    (SELECT user_id FROM tasks WHERE status = 'queued' ORDER BY user_id LIMIT 1)
    UNION ALL
    SELECT (SELECT t.user_id FROM tasks t WHERE t.status = 'queued' AND t.user_id > w.user_id
            ORDER BY t.user_id LIMIT 1)
    FROM waiting w WHERE w.user_id IS NOT NULL
),
heads AS (
    SELECT h.id, w.user_id, h.seqno, h.rn FROM waiting w CROSS JOIN LATERAL (
        SELECT t.id, t.seqno, ROW_NUMBER() OVER (ORDER BY t.seqno) AS rn FROM tasks t
        WHERE t.user_id = w.user_id AND t.status = 'queued' ORDER BY t.seqno LIMIT %(window)s
    ) h
    WHERE w.user_id IS NOT NULL
),
running AS (
    SELECT user_id, count(*) AS n FROM tasks
    WHERE %(cap)s > 0 AND status = 'running' AND user_id IN (SELECT user_id FROM waiting)
    GROUP BY user_id
),
ranked AS (
    SELECT h.id, ROW_NUMBER() OVER (ORDER BY h.rn, COALESCE(u.last_started_at, 0), h.seqno) AS ord
    FROM heads h JOIN users u ON u.id = h.user_id LEFT JOIN running r ON r.user_id = h.user_id
    WHERE %(cap)s = 0 OR h.rn + COALESCE(r.n, 0) <= %(cap)s
),
picked AS (
    SELECT {_T}, r.ord FROM tasks t JOIN ranked r ON r.id = t.id
    WHERE t.status = 'queued' ORDER BY r.ord LIMIT %(limit)s FOR UPDATE OF t SKIP LOCKED
)"""

# Rows were left to others: the round filled fewer slots than it could have.
_SKIPPED = (
    "(SELECT count(*) FROM picked) < %(limit)s "
    "AND (SELECT count(*) FROM ranked) > (SELECT count(*) FROM picked)"
)


def _start(chosen: str, stamped: str, contended: str) -> str:
    """The end of a round: start ``chosen`` (``id, user_id, i``: ``i`` the claim order) from
    ``picked``, stamp the users in ``stamped``, insert the events, send the tasks' notices (a
    few to a payload: ``postgres_listen``); the result is one row per task started, in claim
    order, with its event's JSON as stored, or one empty row; ``contended`` on every row."""
    return f""",
{chosen},
stamped AS ({stamped}),
bumped AS (
    UPDATE users u SET last_started_at = %(now)s + (c.last_i - 1) * 1e-6
    FROM (SELECT user_id, max(i) AS last_i FROM chosen GROUP BY user_id) c
    WHERE u.id = c.user_id AND u.id IN (SELECT id FROM stamped)
),
claimed AS (
    UPDATE tasks t SET status = 'running', attempt = t.attempt + 1, reason = NULL, error = NULL,
        due_at = NULL, started_at = %(now)s, finished_at = NULL, updated_at = %(now)s,
        node_id = %(node)s, last_seq = t.last_seq + 1
    FROM chosen c JOIN picked p ON p.id = c.id
    WHERE t.id = c.id
    RETURNING c.i, t.last_seq AS new_seq, t.attempt AS new_attempt, {_P}
),
logged AS (
    INSERT INTO events (task_id, seq, ts, type, data)
    SELECT id, new_seq, %(now)s, 'task.status', '{{"status":"running","attempt":' || new_attempt
        || ',"user_id":' || user_id || ',"node":' || %(node_json)s || '}}'
    FROM claimed
    RETURNING task_id, data
),
notified AS (
    SELECT pg_notify('agentd_events', string_agg(concat_ws(' ',
        COALESCE(NULLIF(current_setting('agentd.node', true), ''), '-'), id, new_seq, new_seq, 's'), ';'
        ORDER BY i))
    FROM claimed GROUP BY (i - 1) / {NOTICES_PER_PAYLOAD}
)
SELECT x.contended, c.*, l.data
FROM (SELECT {contended} AS contended, (SELECT count(*) FROM notified) AS payloads) x
LEFT JOIN (claimed c JOIN logged l ON l.task_id = c.id) ON true
ORDER BY c.i
"""


# Without a cap: one statement. A user row another claim holds is not stamped (nor waited for).
_CLAIM = _PICK + _start(
    "chosen AS (SELECT id, user_id, ROW_NUMBER() OVER (ORDER BY ord) AS i FROM picked)",
    "SELECT id FROM users WHERE id IN (SELECT user_id FROM chosen) FOR NO KEY UPDATE SKIP LOCKED",
    _SKIPPED,
)

# With a cap, first: pick and lock the rows, then their users' rows in id order.
_PICK_CAPPED = f"""{_PICK},
locked AS (
    SELECT id FROM users WHERE id IN (SELECT user_id FROM picked) ORDER BY id FOR NO KEY UPDATE
)
SELECT x.skipped, x.users, p.id, p.ord
FROM (SELECT {_SKIPPED} AS skipped, (SELECT count(*) FROM locked) AS users) x
LEFT JOIN picked p ON true
ORDER BY p.ord
"""

# ... then, with a snapshot taken under those locks: start each user's first picked tasks that
# the cap allows, counting the running tasks as they are now.
_START_CAPPED = f"""
WITH picked AS (
    SELECT {_T}, r.ord FROM unnest(%(ids)s::text[], %(ords)s::bigint[]) AS r(id, ord)
    JOIN tasks t ON t.id = r.id
),
running AS (
    SELECT user_id, count(*) AS n FROM tasks
    WHERE status = 'running' AND user_id IN (SELECT user_id FROM picked) GROUP BY user_id
)""" + _start(
    "chosen AS (SELECT p.id, p.user_id, ROW_NUMBER() OVER (ORDER BY p.ord) AS i FROM ("
    "SELECT id, user_id, ord, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY ord) AS k FROM picked"
    ") p LEFT JOIN running r ON r.user_id = p.user_id WHERE p.k + COALESCE(r.n, 0) <= %(cap)s)",
    "SELECT user_id AS id FROM chosen",
    "%(skipped)s OR (SELECT count(*) FROM chosen) < (SELECT count(*) FROM picked)",
)


@dataclass(frozen=True)
class PostgresDialect(Dialect):
    """The shared SQL of ``cluster_queries``, with PostgreSQL's own claims."""

    def claim_tasks(self, conn: Any, node_id: str, limit: int, user_limit: int, now: float) -> ClaimRound:
        """Start up to ``limit`` queued tasks on ``node_id`` (see the module docstring); the
        order and the cap are those of ``Dialect.claim_tasks``.

        The tasks and events returned are planned by ``lifecycle.plan_transition`` from each row
        as it was locked, with each event's JSON as the statement stored it: the statement writes
        what every other start writes (tests/test_cluster_claims.py compares the two).
        """
        if limit <= 0:
            return ClaimRound([], [])
        params: dict[str, Any] = {
            "window": limit + SLACK,
            "cap": user_limit,
            "limit": limit,
            "now": now,
            "node": node_id,
            "node_json": json.dumps(node_id),
        }
        if user_limit > 0:
            with transaction(conn):  # the locks of the first statement, held for the second
                return self._claim_capped(conn, node_id, params, now)
        return _started(conn.execute(_CLAIM, params).fetchall(), node_id, now)

    @staticmethod
    def _claim_capped(conn: Any, node_id: str, params: dict[str, Any], now: float) -> ClaimRound:
        picked = conn.execute(_PICK_CAPPED, params).fetchall()
        rows = [row for row in picked if row[2] is not None]
        if not rows:
            return ClaimRound([], [], contended=bool(picked[0][0]))
        params.update(skipped=bool(picked[0][0]), ids=[row[2] for row in rows], ords=[row[3] for row in rows])
        return _started(conn.execute(_START_CAPPED, params).fetchall(), node_id, now)


def _started(rows: list[Any], node_id: str, now: float) -> ClaimRound:
    """The round from the rows of ``_start``'s statement."""
    change = Transition("", TaskStatus.RUNNING, expect=TaskStatus.QUEUED, attempt_delta=1, node_id=node_id)
    tasks: list[Task] = []
    events: list[Event] = []
    for row in rows:
        if row[1] is None:  # the empty row: nothing started
            continue
        old = task_from_row(row[4:-1])
        task, (started,) = plan_transition(old, change, now=now)
        assert (task.last_seq, task.attempt) == (row[2], row[3]), "the claim wrote what a start writes"
        tasks.append(task)
        events.append(Event(task.id, task.last_seq, now, started.type, started.data, row[-1]))
    return ClaimRound(tasks, events, contended=bool(rows[0][0]))


@contextmanager
def transaction(conn: Any) -> Iterator[None]:
    """A transaction of its own on a connection in autocommit mode; within the caller's, none."""
    idle = conn.info.transaction_status == ConnectionState.IDLE
    with conn.transaction() if idle else nullcontext():
        yield
