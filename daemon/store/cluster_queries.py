"""The SQL of nodes, claims and leases, written once for both backends.

apsw and psycopg connections both have ``execute(sql, params)`` returning a cursor with
``fetchone``/``fetchall``; what differs (placeholders, row locking, the backend's own
``transition``) is in the ``Dialect`` each backend's queries module defines as ``CLUSTER``,
whose methods are these queries. Every function runs inside the one transaction the store opened for it.

Times are the nodes' clocks (``now`` from the store), so leases assume the nodes' clocks agree
to well within the lease timeout (NTP does; the default lease is 15 s).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..states import TaskStatus
from .lifecycle import Transition
from .models import Event, Node, NodeState, Task

_NODE_COLUMNS = "id, name, host, pid, started_at, heartbeat_at, state, concurrency, running, http"


#: ``(id, user_id, seqno, rn)`` of each user's first ``?`` queued tasks, ``rn`` their rank
#: within the user.
_QUEUE_HEADS = (
    "SELECT id, user_id, seqno, rn FROM (SELECT id, user_id, seqno, "
    "ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY seqno) AS rn FROM tasks "
    "WHERE status = 'queued') WHERE rn <= ?"
)


class ClaimRound(NamedTuple):
    """What one claim statement did: the tasks it started, their events, and whether it met
    other nodes' claims (rows they held, or a capped user they claimed for meanwhile) and may
    find more at once with a fresh look."""

    tasks: list[Task]
    events: list[Event]
    contended: bool = False


@dataclass(frozen=True)
class Dialect:
    """What the two backends' SQL needs to differ in."""

    placeholder: str  # "?" (apsw) or "%s" (psycopg)
    lock_rows: str  # appended to a SELECT that picks rows to change: "" or " FOR UPDATE SKIP LOCKED"
    transition: Callable[[Any, Transition, float], tuple[Task, list[Event]]]  # (conn, change, now)
    least: str = "min"  # the smaller of two values: SQLite's min(a, b), PostgreSQL's LEAST
    greatest: str = "max"

    def sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    # The queries, as methods of the dialect they are written in; each backend's queries
    # module holds its dialect as ``CLUSTER``.

    # -- nodes ----------------------------------------------------------------------------------

    def register_node(self, conn: Any, node: Node) -> None:
        """Insert or refresh this node's row as "up" (a restart of a node keeps its id)."""
        conn.execute(
            self.sql(
                f"INSERT INTO nodes ({_NODE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET name = excluded.name, host = excluded.host, "
                "pid = excluded.pid, started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, "
                "state = excluded.state, concurrency = excluded.concurrency, running = excluded.running, "
                "http = excluded.http"
            ),
            (
                node.id,
                node.name,
                node.host,
                node.pid,
                node.started_at,
                node.heartbeat_at,
                str(node.state),
                node.concurrency,
                node.running,
                node.http,
            ),
        )

    def heartbeat(
        self, conn: Any, node_id: str, now: float, *, state: NodeState, concurrency: int, running: int
    ) -> bool:
        """Renew the node's lease; False (and nothing written) when the lease was lost meanwhile.

        A lost node's tasks have been, or are being, taken over: it must stop them, then register
        again before it claims anything.
        """
        row = conn.execute(self.sql("SELECT state FROM nodes WHERE id = ?"), (node_id,)).fetchone()
        if row is None or row[0] == NodeState.LOST:
            return False
        conn.execute(
            self.sql(
                "UPDATE nodes SET heartbeat_at = ?, state = ?, concurrency = ?, running = ? WHERE id = ?"
            ),
            (now, str(state), concurrency, running, node_id),
        )
        return True

    def leave(self, conn: Any, node_id: str, now: float) -> None:
        """Mark the node stopped in order (its tasks were put back first)."""
        conn.execute(
            self.sql(
                "UPDATE nodes SET state = 'stopped', running = 0, heartbeat_at = ? "
                "WHERE id = ? AND state <> 'lost'"
            ),
            (now, node_id),
        )

    def list_nodes(self, conn: Any) -> list[Node]:
        rows = conn.execute(f"SELECT {_NODE_COLUMNS} FROM nodes ORDER BY name, id").fetchall()
        return [_node(row) for row in rows]

    def mark_lost_nodes(self, conn: Any, now: float, lease_s: float) -> list[str]:
        """Nodes whose lease ran out (no heartbeat for ``lease_s``) become "lost"; their ids."""
        rows = conn.execute(
            self.sql(
                "SELECT id FROM nodes WHERE state IN ('up', 'draining') AND heartbeat_at < ?" + self.lock_rows
            ),
            (now - lease_s,),
        ).fetchall()
        lost = [row[0] for row in rows]
        for node_id in lost:
            conn.execute(self.sql("UPDATE nodes SET state = 'lost' WHERE id = ?"), (node_id,))
        return lost

    def orphaned_tasks(self, conn: Any, now: float, lease_s: float) -> list[tuple[str, str | None, int]]:
        """Running tasks no live node holds: ``(task_id, node_id, attempt)``, oldest first.

        A node holds its running tasks while its lease is fresh; a task of a lost, stopped or
        unknown node, or of a node silent for ``lease_s``, is an orphan any node may take over.
        """
        rows = conn.execute(
            self.sql(
                "SELECT t.id, t.node_id, t.attempt FROM tasks t LEFT JOIN nodes n ON n.id = t.node_id "
                "WHERE t.status = 'running' AND (n.id IS NULL OR n.state IN ('lost', 'stopped') "
                "OR n.heartbeat_at < ?) ORDER BY t.seqno"
            ),
            (now - lease_s,),
        ).fetchall()
        return [(row[0], row[1], row[2]) for row in rows]

    # -- claims ---------------------------------------------------------------------------------

    def claim_tasks(self, conn: Any, node_id: str, limit: int, user_limit: int, now: float) -> ClaimRound:
        """Start up to ``limit`` queued tasks on ``node_id``: round-robin across users, FIFO within.

        Round-robin: each user's oldest queued task first, the user who last had a task started
        longest ago (``users.last_started_at``) first among those; then each user's second, ...

        ``user_limit`` (0: none) caps one user's running tasks across every node. Each claimed task
        is moved to running (attempt + 1, ``node_id`` set) with its events, in this transaction.

        This is the claim of a store with one writer (SQLite), one task at a time through
        ``transition``; PostgreSQL, where several daemons claim at once, does the same in one
        statement (``postgres_claims``).
        """
        if limit <= 0:
            return ClaimRound([], [])
        ranked = conn.execute(
            self.sql(
                "WITH running AS (SELECT user_id, COUNT(*) AS n FROM tasks WHERE status = 'running' "
                f"GROUP BY user_id), queue AS ({_QUEUE_HEADS}) "
                "SELECT q.id FROM queue q LEFT JOIN running r ON r.user_id = q.user_id "
                "JOIN users u ON u.id = q.user_id "
                "WHERE ? = 0 OR q.rn + COALESCE(r.n, 0) <= ? "
                "ORDER BY q.rn, COALESCE(u.last_started_at, 0), q.seqno LIMIT ?"
            ),
            (limit, user_limit, user_limit, limit),
        ).fetchall()
        tasks: list[Task] = []
        events: list[Event] = []
        for (task_id,) in ranked:
            task, new = self.transition(
                conn,
                Transition(
                    task_id, TaskStatus.RUNNING, expect=TaskStatus.QUEUED, attempt_delta=1, node_id=node_id
                ),
                now,
            )
            # The user whose task started longest ago goes first next time (round-robin across
            # claims); within one claim, in the order claimed.
            conn.execute(
                self.sql("UPDATE users SET last_started_at = ? WHERE id = ?"),
                (now + len(tasks) * 1e-6, task.user_id),
            )
            tasks.append(task)
            events.extend(new)
        return ClaimRound(tasks, events)

    def due_retries(self, conn: Any, now: float, limit: int) -> list[str]:
        """Tasks waiting for a retry whose time has come (a node that died may have held the timer)."""
        rows = conn.execute(
            self.sql(
                "SELECT id FROM tasks WHERE status = 'waiting_retry' AND due_at <= ? ORDER BY due_at LIMIT ?"
            ),
            (now, limit),
        ).fetchall()
        return [row[0] for row in rows]

    # -- what the daemons sharing the store agree on: values, rate buckets ----------------------

    def cluster_value(self, conn: Any, name: str, proposed: bytes, node: str, now: float) -> bytes:
        """The value stored under ``name``, storing ``proposed`` first when there is none."""
        conn.execute(
            self.sql(
                "INSERT INTO cluster_values (name, value, node, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING"
            ),
            (name, proposed, node, now),
        )
        row = conn.execute(self.sql("SELECT value FROM cluster_values WHERE name = ?"), (name,)).fetchone()
        return bytes(row[0])

    def swap_cluster_value(
        self, conn: Any, name: str, expected: bytes, new: bytes, node: str, now: float
    ) -> bool:
        """Replace the value under ``name`` if it still is ``expected``; whether it was."""
        row = conn.execute(
            self.sql(
                "UPDATE cluster_values SET value = ?, node = ?, updated_at = ? WHERE name = ? AND value = ? "
                "RETURNING name"
            ),
            (new, node, now, name, expected),
        ).fetchone()
        return row is not None

    def take_rate_token(self, conn: Any, key: str, per_min: float, burst: int, now: float) -> float:
        """Spend one token of the bucket ``key`` (``burst`` at most, refilled at ``per_min`` a
        minute): 0.0 if there was one, else the seconds until there is. One atomic UPSERT: two
        daemons spending from one bucket at once never both take its last token.

        Refill counts from the bucket's newest stamp; a clock behind it refills nothing.
        """
        rate = per_min / 60.0
        refilled = (
            f"{self.least}(?, rate_buckets.tokens + "
            f"{self.greatest}(0, excluded.stamp - rate_buckets.stamp) * ?)"
        )
        tokens, granted = conn.execute(
            self.sql(
                "INSERT INTO rate_buckets (key, tokens, stamp, granted) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET "
                f"tokens = CASE WHEN {refilled} >= 1 THEN {refilled} - 1 ELSE {refilled} END, "
                f"granted = {refilled} >= 1, "
                f"stamp = {self.greatest}(rate_buckets.stamp, excluded.stamp) "
                "RETURNING tokens, granted"
            ),
            (key, max(burst - 1.0, 0.0), now, burst >= 1, *(burst, rate) * 4),
        ).fetchone()
        return 0.0 if granted else (1.0 - tokens) / rate

    # -- values taken once (sign-ins in progress, one-time codes) -------------------------------

    def put_one_time(
        self, conn: Any, kind: str, key: str, value: str, expires_at: float, limit: int, now: float
    ) -> bool:
        """Keep ``value`` under ``(kind, key)`` until ``expires_at``, unless ``limit`` unexpired
        values of ``kind`` are kept already; whether it was kept. Expired values go first.

        Two daemons adding at once on PostgreSQL may each see room for the last one: ``limit``
        is a bound on growth, not an exact count."""
        self.purge_one_time(conn, now)
        row = conn.execute(
            self.sql(
                "INSERT INTO one_time_values (kind, key, value, expires_at) SELECT ?, ?, ?, ? "
                "WHERE (SELECT COUNT(*) FROM one_time_values WHERE kind = ?) < ? RETURNING key"
            ),
            (kind, key, value, expires_at, kind, limit),
        ).fetchone()
        return row is not None

    def take_one_time(self, conn: Any, kind: str, key: str, now: float) -> str | None:
        """The value under ``(kind, key)``, deleted by the same statement (so one caller, of all
        the daemons sharing the store, gets it); None when there is none or it has expired."""
        row = conn.execute(
            self.sql("DELETE FROM one_time_values WHERE kind = ? AND key = ? RETURNING value, expires_at"),
            (kind, key),
        ).fetchone()
        return str(row[0]) if row is not None and row[1] > now else None

    def purge_one_time(self, conn: Any, now: float) -> int:
        """Delete every expired value; how many."""
        return len(
            conn.execute(
                self.sql("DELETE FROM one_time_values WHERE expires_at <= ? RETURNING 1"), (now,)
            ).fetchall()
        )


def _node(row: Any) -> Node:
    node_id, name, host, pid, started_at, heartbeat_at, state, concurrency, running, http = row
    return Node(
        node_id, name, host, pid, started_at, heartbeat_at, NodeState(state), concurrency, running, http
    )
