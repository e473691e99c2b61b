"""The store's interface to the daemons sharing one database (a part of ``StoreBase``).

Nodes, their leases, claims of queued tasks, the values and rate buckets every daemon sharing
the store agrees on, one-time values, and what other daemons commit (``watch_remote``). Every
method runs one short transaction through the backend's runners, with the SQL of its
``queries.CLUSTER`` dialect (``cluster_queries``). On a store nobody else writes (SQLite) the
same methods hold for the one daemon.

Cancellation: as the runners' (a read stops being waited for; a write is never abandoned);
``watch_remote`` stops listening.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, ClassVar

import trio

from .cluster_queries import ClaimRound
from .models import Event, Node, NodeState, RemoteNotice, Revoked, Task

CLAIM_ROUNDS = 3  # claim statements per claim at most, when rounds meet other nodes' claims


class ClusterStore:
    """Nodes, claims, leases and shared values; mixed into ``StoreBase``, which provides the runners."""

    queries: ClassVar[ModuleType]
    now: Callable[[], float]
    _read: Any
    _write: Any
    _write_events: Any
    shared: ClassVar[bool]

    # -- nodes, claims and leases (several daemons on one database) -----------------------------

    async def register_node(self, node: Node) -> None:
        await self._write(lambda conn: self.queries.CLUSTER.register_node(conn, node))

    async def heartbeat(self, node_id: str, *, state: NodeState, concurrency: int, running: int) -> bool:
        """Renew the node's lease; False when it was lost (its tasks are being taken over)."""
        now = self.now()
        return await self._write(
            lambda conn: self.queries.CLUSTER.heartbeat(
                conn, node_id, now, state=state, concurrency=concurrency, running=running
            )
        )

    async def leave(self, node_id: str) -> None:
        now = self.now()
        await self._write(lambda conn: self.queries.CLUSTER.leave(conn, node_id, now))

    async def list_nodes(self) -> list[Node]:
        return await self._read(self.queries.CLUSTER.list_nodes)

    async def mark_lost_nodes(self, lease_s: float) -> list[str]:
        now = self.now()
        return await self._write(lambda conn: self.queries.CLUSTER.mark_lost_nodes(conn, now, lease_s))

    async def orphaned_tasks(self, lease_s: float) -> list[tuple[str, str | None, int]]:
        """Running tasks no live node holds: ``(task_id, node_id, attempt)``."""
        now = self.now()
        return await self._read(lambda conn: self.queries.CLUSTER.orphaned_tasks(conn, now, lease_s))

    async def claim_tasks(
        self,
        node_id: str,
        limit: int,
        user_limit: int = 0,
        *,
        still_wanted: Callable[[], bool] = lambda: True,
    ) -> list[Task]:
        """Start up to ``limit`` queued tasks on ``node_id`` (see ``cluster_queries.claim_tasks``).

        ``still_wanted`` is asked once more in the transaction, just before claiming: a node
        that began draining while the claim waited for its turn claims nothing. A round that met
        other nodes' claims and left slots empty looks again at once (up to ``CLAIM_ROUNDS``
        transactions in all), so that a node does not wait for the next wake-up while work is
        queued.
        """
        claimed: list[Task] = []
        for _ in range(CLAIM_ROUNDS):
            now, wanted = self.now(), limit - len(claimed)

            def write(conn: Any, now: float = now, wanted: int = wanted) -> tuple[ClaimRound, list[Event]]:
                if not still_wanted():
                    return ClaimRound([], []), []
                round_ = self.queries.CLUSTER.claim_tasks(conn, node_id, wanted, user_limit, now)
                return round_, round_.events

            round_ = await self._write_events(None, write, transaction=False)
            claimed += round_.tasks
            if not round_.contended or len(claimed) >= limit:
                break
        return claimed

    async def due_retries(self, limit: int = 100) -> list[str]:
        now = self.now()
        return await self._read(lambda conn: self.queries.CLUSTER.due_retries(conn, now, limit))

    # -- what the daemons sharing the store agree on --------------------------------------------

    async def cluster_value(self, name: str, proposed: bytes, *, node: str) -> bytes:
        """The value every daemon sharing the store sees under ``name``: the one stored, or
        ``proposed`` (stored now, by ``node``) when there was none; the first to ask sets it."""
        now = self.now()
        return await self._write(
            lambda conn: self.queries.CLUSTER.cluster_value(conn, name, proposed, node, now)
        )

    async def swap_cluster_value(self, name: str, expected: bytes, new: bytes, *, node: str) -> bool:
        """Replace the value under ``name`` with ``new`` if it still is ``expected``; whether it was."""
        now = self.now()
        return await self._write(
            lambda conn: self.queries.CLUSTER.swap_cluster_value(conn, name, expected, new, node, now)
        )

    async def take_rate_token(self, key: str, *, per_min: float, burst: int) -> float:
        """Spend one token of the rate bucket ``key`` that every daemon sharing the store draws
        from (``burst`` at most, refilled at ``per_min`` a minute, on the store's clock): 0.0 if
        there was one, else the seconds until there is. One atomic write."""
        now = self.now()
        return await self._write(
            lambda conn: self.queries.CLUSTER.take_rate_token(conn, key, per_min, burst, now)
        )

    async def put_one_time(self, kind: str, key: str, value: str, *, ttl_s: float, limit: int) -> bool:
        """Keep ``value`` for ``ttl_s`` seconds of the store's clock, to be taken once, by any
        daemon sharing the store, with ``take_one_time(kind, key)``. ``key`` should be a hash
        of the secret the value is found by, so that the store holds nothing to redeem it with.
        False, and nothing kept, when ``limit`` unexpired values of ``kind`` are kept already.
        Expired values of every kind are deleted first."""
        now = self.now()
        return await self._write(
            lambda conn: self.queries.CLUSTER.put_one_time(conn, kind, key, value, now + ttl_s, limit, now)
        )

    async def take_one_time(self, kind: str, key: str) -> str | None:
        """The value kept under ``(kind, key)``, once: it is deleted in the statement that reads
        it, so of several callers on any daemons one gets it. None when there is none (never
        kept, already taken) or it has expired (deleted all the same)."""
        now = self.now()
        return await self._write(lambda conn: self.queries.CLUSTER.take_one_time(conn, kind, key, now))

    async def purge_one_time(self) -> int:
        """Delete the expired values ``put_one_time`` kept; how many (periodic maintenance)."""
        now = self.now()
        return await self._write(lambda conn: self.queries.CLUSTER.purge_one_time(conn, now))

    async def tell_revoked(self, revoked: Revoked) -> None:
        """Tell the other daemons sharing the store that ``revoked`` was just cut (committed
        already): they hear it through ``watch_remote``, this daemon does not. Nothing on a
        store nobody else shares. Cancellation: as a write's (not abandoned)."""
        if self.shared:
            await self._write(lambda conn: self.queries.tell_others(conn, revoked.notice))

    async def watch_remote(
        self,
        on_notices: Callable[[list[RemoteNotice | Revoked] | None], None],
        *,
        task_status: Any,
        wanted: Callable[[RemoteNotice | Revoked], bool] = lambda notice: True,
    ) -> None:
        """Call ``on_notices`` (on the Trio thread) with what other daemons commit, and the
        revocations they tell (``tell_revoked``); until cancelled.

        ``on_notices(None)``: notices may have been missed (listening began again after a lost
        connection): what the listener follows may have moved meanwhile. ``wanted(notice)`` is
        asked first, on the listening thread (so it may only read what it looks at): notices it
        turns down never reach the Trio thread.

        A store nobody else writes has nothing to tell: it only signals readiness.
        Cancellation: stops listening.
        """
        task_status.started()
        await trio.sleep_forever()
