"""The store's interface to notification targets and the outbox (a part of ``StoreBase``).

Every method runs one short transaction through the backend's runners, with the SQL of its
``queries.OUTBOX`` dialect (``outbox_queries``). Deliveries caused by events are written with
those events (see ``notify.outbox``); the ones written here (a test, a redelivery) wake the
sender through ``on_outbox`` once committed.

Cancellation: as the runners' (a read stops being waited for; a write is never abandoned).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, ClassVar

from ..notify.outbox import Delivery, DeliveryStatus, Target
from .outbox_queries import Scope


class OutboxStore:
    """Targets and deliveries; mixed into ``StoreBase``, which provides the runners."""

    queries: ClassVar[ModuleType]
    now: Callable[[], float]
    _read: Any
    _write: Any
    #: Called (on the Trio thread) after this store committed a delivery that is due now.
    on_outbox: Callable[[], None] | None = None

    # -- targets --------------------------------------------------------------------------------

    async def add_target(
        self, target: Target, *, limit: int | None = None, replace: bool = False, replace_url: bool = False
    ) -> bool:
        """Insert ``target``; False (nothing written) when its user has ``limit`` of its kind.
        ``replace``: in place of the user's other targets of its kind (one ntfy topic);
        ``replace_url``: in place of the one at its URL (a push subscription renewed), in the
        same transaction, so a renewal never leaves two."""
        outbox = self.queries.OUTBOX

        def write(conn: Any) -> bool:
            if replace:
                outbox.replace_target(conn, target)
                return True
            if replace_url:
                outbox.delete_same_url(conn, target)
            if (
                limit is not None
                and target.user_id is not None
                and outbox.count_targets(conn, target.user_id, target.kind) >= limit
            ):
                return False
            outbox.insert_target(conn, target)
            return True

        return bool(await self._write(write))

    async def list_targets(self, scope: Scope, *, kind: str | None = None) -> list[Target]:
        """The targets of a user (``scope`` their id), operator-wide ones (``OPERATOR``) or all."""
        return list(await self._read(lambda conn: self.queries.OUTBOX.list_targets(conn, scope, kind)))

    async def targets_by_ids(self, ids: Sequence[str]) -> dict[str, Target]:
        return dict(await self._read(lambda conn: self.queries.OUTBOX.targets_by_ids(conn, list(ids))))

    async def delete_target(self, target_id: str, scope: Scope) -> bool:
        """Delete a target in ``scope``; False when there is none. Its pending deliveries fail."""
        return bool(await self._write(lambda conn: self.queries.OUTBOX.delete_target(conn, target_id, scope)))

    async def disable_target(self, target_id: str, reason: str) -> None:
        now = self.now()
        await self._write(lambda conn: self.queries.OUTBOX.disable_target(conn, target_id, now, reason))

    # -- deliveries -----------------------------------------------------------------------------

    async def insert_delivery(self, delivery: Delivery) -> None:
        """Insert one delivery (a test) and wake the sender."""
        await self._write(lambda conn: self.queries.OUTBOX.insert_delivery(conn, delivery))
        self._wake_outbox()

    async def claim_deliveries(self, claimer: str, *, claim_s: float, limit: int) -> list[Delivery]:
        """Claim due deliveries for ``claimer`` (see ``outbox_queries.Dialect.claim_due``)."""
        now = self.now()
        return list(
            await self._write(
                lambda conn: self.queries.OUTBOX.claim_due(conn, claimer, now, claim_s, limit),
                transaction=False,
            )
        )

    async def release_claims(self, claimer: str) -> int:
        return int(await self._write(lambda conn: self.queries.OUTBOX.release_claims(conn, claimer)))

    async def next_delivery_due(self) -> float | None:
        """When the first pending delivery is due (wall clock), None when none is pending."""
        due = await self._read(self.queries.OUTBOX.next_due)
        return None if due is None else float(due)

    async def count_pending_deliveries(self) -> int:
        return int(await self._read(self.queries.OUTBOX.count_pending))

    async def record_attempt(
        self,
        delivery_id: str,
        status: DeliveryStatus,
        *,
        next_at: float | None = None,
        error: str | None = None,
        status_code: int | None = None,
    ) -> None:
        """One attempt's result (``next_at``: when a pending one is tried again)."""
        now = self.now()
        await self._write(
            lambda conn: self.queries.OUTBOX.record_attempt(
                conn,
                delivery_id,
                status=status,
                next_at=now if next_at is None else next_at,
                error=error,
                status_code=status_code,
                now=now,
            )
        )

    async def list_deliveries(
        self, scope: Scope, *, status: str | None = None, target_id: str | None = None, limit: int = 50
    ) -> list[Delivery]:
        return list(
            await self._read(
                lambda conn: self.queries.OUTBOX.list_deliveries(
                    conn, scope, status=status, target_id=target_id, limit=limit
                )
            )
        )

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        result: Delivery | None = await self._read(
            lambda conn: self.queries.OUTBOX.get_delivery(conn, delivery_id)
        )
        return result

    async def redeliver(self, delivery_id: str) -> Delivery | None:
        """Deliver a delivered or failed delivery again, same id; None when it cannot be."""
        now = self.now()
        delivery: Delivery | None = await self._write(
            lambda conn: self.queries.OUTBOX.redeliver(conn, delivery_id, now)
        )
        if delivery is not None:
            self._wake_outbox()
        return delivery

    def _wake_outbox(self) -> None:
        if self.on_outbox is not None:
            self.on_outbox()
