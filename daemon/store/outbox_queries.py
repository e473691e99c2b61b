"""The SQL of notification targets and the outbox, one text for both backends (design §12).

``Dialect`` holds what differs (the placeholder; PostgreSQL's ``FOR UPDATE SKIP LOCKED`` when
claiming, so that of several daemons sharing the store one claims each due delivery). Each
backend's queries module holds its dialect as ``OUTBOX``. The rows written with the events
that cause them are written elsewhere: SQLite with ``insert_planned`` in the event's
transaction, PostgreSQL inside the event's own statement (``postgres_changes``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..notify.outbox import Delivery, DeliveryStatus, Notification, Target

TARGET_COLUMNS = "id, user_id, kind, url, secret_enc, events, created_at, disabled_at"
DELIVERY_COLUMNS = (
    "id, target_id, user_id, task_id, kind, payload, status, attempts, next_at, claimed_by, "
    "claim_until, last_error, last_status, created_at, delivered_at, pending_since"
)
# Every scope a listing may have: one user's (an int), the operator-wide targets (OPERATOR), all.
ALL = "all"
OPERATOR = "operator"
Scope = int | str


def target_from_row(row: Sequence[Any]) -> Target:
    tid, user_id, kind, url, secret, events, created_at, disabled_at = row
    return Target(
        tid, user_id, kind, url, bytes(secret) if secret is not None else None,
        tuple(json.loads(events)), created_at, disabled_at,
    )  # fmt: skip


def delivery_from_row(row: Sequence[Any]) -> Delivery:
    return Delivery(*row)


# The planned rows of one notification: one per target of the task's owner (or operator-wide),
# not disabled, whose events list the kind. The kind is matched as the quoted JSON string.
PLANNED_INSERT = (
    "INSERT INTO outbox (id, target_id, user_id, task_id, kind, payload, status, attempts, next_at, "
    "created_at, pending_since) "
    "SELECT 'dlv_' || ? || substr(t.id, 4), t.id, ?, ?, ?, ?, 'pending', 0, ?, ?, ? "
    "FROM notify_targets t WHERE (t.user_id = ? OR t.user_id IS NULL) AND t.disabled_at IS NULL "
    "AND t.events LIKE ?"
)


def kind_pattern(kind: str) -> str:
    """The LIKE pattern that finds ``kind`` in a target's events (kinds hold no % and are
    checked against ``KINDS`` when a target is made, so ``_`` can match only itself there)."""
    return f'%"{kind}"%'


def _scope(scope: Scope, column: str = "user_id") -> tuple[str, list[Any]]:
    if scope == ALL:
        return "1 = 1", []
    if scope == OPERATOR:
        return f"{column} IS NULL", []
    return f"{column} = ?", [scope]


@dataclass(frozen=True)
class Dialect:
    """What the two backends' SQL needs to differ in."""

    placeholder: str  # "?" (apsw) or "%s" (psycopg)
    lock_rows: str  # "" or " FOR UPDATE SKIP LOCKED"

    def sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def _rows(self, conn: Any, text: str, params: Sequence[Any]) -> list[Any]:
        cursor = conn.execute(self.sql(text), tuple(params))
        if self.placeholder != "?" and cursor.description is None:  # psycopg: no rows to fetch
            return []
        return list(cursor.fetchall())

    # -- targets --------------------------------------------------------------------------------

    def insert_target(self, conn: Any, target: Target) -> None:
        self._rows(
            conn,
            # Nothing when a racing call inserted the same push endpoint first (schema v15).
            f"INSERT INTO notify_targets ({TARGET_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (
                target.id, target.user_id, target.kind, target.url, target.secret_enc,
                json.dumps(list(target.events)), target.created_at, target.disabled_at,
            ),
        )  # fmt: skip

    def replace_target(self, conn: Any, target: Target) -> list[str]:
        """Insert ``target`` in place of its user's other targets of its kind (one ntfy topic a
        user); the ids of those removed (their pending deliveries fail as removed)."""
        assert target.user_id is not None
        gone = [
            row[0]
            for row in self._rows(
                conn,
                "DELETE FROM notify_targets WHERE user_id = ? AND kind = ? RETURNING id",
                (target.user_id, target.kind),
            )
        ]
        for tid in gone:
            self._fail_pending(conn, tid, "the target was removed")
        self.insert_target(conn, target)
        return gone

    def list_targets(self, conn: Any, scope: Scope, kind: str | None = None) -> list[Target]:
        where, params = _scope(scope)
        if kind is not None:
            where += " AND kind = ?"
            params.append(kind)
        rows = self._rows(
            conn, f"SELECT {TARGET_COLUMNS} FROM notify_targets WHERE {where} ORDER BY created_at, id", params
        )
        return [target_from_row(row) for row in rows]

    def targets_by_ids(self, conn: Any, ids: Sequence[str]) -> dict[str, Target]:
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        rows = self._rows(conn, f"SELECT {TARGET_COLUMNS} FROM notify_targets WHERE id IN ({marks})", ids)
        return {row[0]: target_from_row(row) for row in rows}

    def delete_same_url(self, conn: Any, target: Target) -> None:
        """Remove ``target``'s user's other target of its kind at its URL (a push subscription
        renewed with new keys or kinds); its pending deliveries fail as removed."""
        rows = self._rows(
            conn,
            "DELETE FROM notify_targets WHERE user_id = ? AND kind = ? AND url = ? RETURNING id",
            (target.user_id, target.kind, target.url),
        )
        for row in rows:
            self._fail_pending(conn, row[0], "the target was removed")

    def count_targets(self, conn: Any, user_id: int, kind: str) -> int:
        rows = self._rows(
            conn, "SELECT COUNT(*) FROM notify_targets WHERE user_id = ? AND kind = ?", (user_id, kind)
        )
        return int(rows[0][0])

    def delete_target(self, conn: Any, target_id: str, scope: Scope) -> bool:
        """Delete the target (in ``scope``); its pending deliveries fail ("removed")."""
        where, params = _scope(scope)
        rows = self._rows(
            conn, f"DELETE FROM notify_targets WHERE id = ? AND {where} RETURNING id", [target_id, *params]
        )
        if rows:
            self._fail_pending(conn, target_id, "the target was removed")
        return bool(rows)

    def disable_target(self, conn: Any, target_id: str, now: float, reason: str) -> None:
        """The receiver says the target is gone for good (push 404/410): no more deliveries."""
        self._rows(
            conn,
            "UPDATE notify_targets SET disabled_at = ? WHERE id = ? AND disabled_at IS NULL RETURNING id",
            (now, target_id),
        )
        self._fail_pending(conn, target_id, reason)

    def _fail_pending(self, conn: Any, target_id: str, reason: str) -> None:
        self._rows(
            conn,
            "UPDATE outbox SET status = 'failed', last_error = ?, claimed_by = NULL, claim_until = NULL "
            "WHERE target_id = ? AND status = 'pending' RETURNING id",
            (reason, target_id),
        )

    # -- deliveries -----------------------------------------------------------------------------

    def insert_planned(self, conn: Any, notes: Sequence[Notification], now: float) -> None:
        """The deliveries of ``notes`` (planned in this transaction); none without targets."""
        for note in notes:
            conn.execute(
                self.sql(PLANNED_INSERT),
                (
                    note.nonce, note.user_id, note.task_id, note.kind, note.payload, now, now, now,
                    note.user_id, kind_pattern(note.kind),
                ),
            )  # fmt: skip

    def insert_delivery(self, conn: Any, delivery: Delivery) -> None:
        self._rows(
            conn,
            f"INSERT INTO outbox ({DELIVERY_COLUMNS}) VALUES ({', '.join('?' * 16)})",
            [getattr(delivery, name.strip()) for name in DELIVERY_COLUMNS.split(",")],
        )

    def claim_due(self, conn: Any, claimer: str, now: float, claim_s: float, limit: int) -> list[Delivery]:
        """Claim up to ``limit`` due pending deliveries for ``claimer`` until ``now + claim_s``
        (an expired claim is free again: its sender died). Oldest due first."""
        rows = self._rows(
            conn,
            f"UPDATE outbox SET claimed_by = ?, claim_until = ? WHERE id IN ("
            f"SELECT id FROM outbox WHERE status = 'pending' AND next_at <= ? "
            f"AND (claim_until IS NULL OR claim_until <= ?) ORDER BY next_at LIMIT ?{self.lock_rows}"
            f") RETURNING {DELIVERY_COLUMNS}",
            (claimer, now + claim_s, now, now, limit),
        )
        return sorted((delivery_from_row(row) for row in rows), key=lambda d: d.next_at)

    def release_claims(self, conn: Any, claimer: str) -> int:
        """Free the claims ``claimer`` holds (its sender starts again: they are its own past)."""
        rows = self._rows(
            conn,
            "UPDATE outbox SET claimed_by = NULL, claim_until = NULL "
            "WHERE claimed_by = ? AND status = 'pending' RETURNING id",
            (claimer,),
        )
        return len(rows)

    def next_due(self, conn: Any) -> float | None:
        """When the next pending delivery is due: its ``next_at``, or its claim's end when it is
        claimed (in flight here, or with a sender that may have died)."""
        rows = self._rows(
            conn,
            "SELECT MIN(CASE WHEN claim_until IS NOT NULL AND claim_until > next_at THEN claim_until "
            "ELSE next_at END) FROM outbox WHERE status = 'pending'",
            (),
        )
        return rows[0][0]

    def count_pending(self, conn: Any) -> int:
        rows = self._rows(conn, "SELECT COUNT(*) FROM outbox WHERE status = 'pending'", ())
        return int(rows[0][0])

    def record_attempt(
        self,
        conn: Any,
        delivery_id: str,
        *,
        status: DeliveryStatus,
        next_at: float,
        error: str | None,
        status_code: int | None,
        now: float,
    ) -> None:
        """One attempt's result: ``attempts`` + 1, the claim released, and the new status."""
        delivered = now if status is DeliveryStatus.DELIVERED else None
        self._rows(
            conn,
            "UPDATE outbox SET status = ?, attempts = attempts + 1, next_at = ?, last_error = ?, "
            "last_status = ?, delivered_at = ?, claimed_by = NULL, claim_until = NULL "
            "WHERE id = ? AND status = 'pending' RETURNING id",
            (status.value, next_at, error, status_code, delivered, delivery_id),
        )

    def list_deliveries(
        self,
        conn: Any,
        scope: Scope,
        *,
        status: str | None = None,
        target_id: str | None = None,
        limit: int = 50,
    ) -> list[Delivery]:
        """Newest first. A user's scope: the deliveries of their own targets (never another
        user's, nor an operator-wide webhook's)."""
        where, params = _scope(scope)
        if scope != ALL:
            # Operator-wide webhooks carry the task owner's user_id: the target decides.
            where = f"target_id IN (SELECT id FROM notify_targets WHERE {where})"
        if status is not None:
            where += " AND status = ?"
            params.append(status)
        if target_id is not None:
            where += " AND target_id = ?"
            params.append(target_id)
        rows = self._rows(
            conn,
            f"SELECT {DELIVERY_COLUMNS} FROM outbox WHERE {where} ORDER BY created_at DESC, id LIMIT ?",
            [*params, limit],
        )
        return [delivery_from_row(row) for row in rows]

    def get_delivery(self, conn: Any, delivery_id: str) -> Delivery | None:
        rows = self._rows(conn, f"SELECT {DELIVERY_COLUMNS} FROM outbox WHERE id = ?", (delivery_id,))
        return delivery_from_row(rows[0]) if rows else None

    def redeliver(self, conn: Any, delivery_id: str, now: float) -> Delivery | None:
        """A new round of attempts of a delivered or failed delivery, with the same id (None
        when there is no such delivery, or it is pending already, or its target is gone)."""
        rows = self._rows(
            conn,
            "UPDATE outbox SET status = 'pending', attempts = 0, next_at = ?, pending_since = ?, "
            "claimed_by = NULL, claim_until = NULL, last_error = NULL "
            "WHERE id = ? AND status <> 'pending' AND target_id IN "
            f"(SELECT id FROM notify_targets WHERE disabled_at IS NULL) RETURNING {DELIVERY_COLUMNS}",
            (now, now, delivery_id),
        )
        return delivery_from_row(rows[0]) if rows else None
