"""This daemon as a node: its row in the store, its heartbeat, and (on a shared store) leases.

Every daemon registers a node row and renews it every ``heartbeat_s`` (``agentctl status``
lists the nodes and their heartbeat age). On a store several daemons share, the heartbeat is
also the lease on every task the node runs: a node silent for ``lease_s`` is "lost" and any
other node takes its running tasks over (``Supervisor._take_over``). The node fences itself
first: when its own heartbeat has not landed for ``fence_after_s`` (two thirds of the lease) or
the store says it was lost, it stops its attempts without recording anything (their tasks
belong to whoever takes them over), then registers again.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from ..store import Node, NodeState, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeIdentity:
    """Who this daemon is among the nodes: a stable ``id`` (kept in the data dir) and a name."""

    id: str = "local"
    name: str = field(default_factory=socket.gethostname)
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    http: str | None = None


@dataclass(frozen=True)
class LeaseSettings:
    lease_s: float = 15.0
    heartbeat_s: float = 3.0

    @property
    def fence_after_s(self) -> float:
        return self.lease_s * 2 / 3


class Membership:
    """Registers the node, then keeps it alive; see the module docstring."""

    def __init__(
        self,
        store: Store,
        identity: NodeIdentity,
        settings: LeaseSettings,
        *,
        report: Callable[[], tuple[NodeState, int, int]],
        fence: Callable[[], Awaitable[None]],
        sweep: Callable[[], Awaitable[None]],
    ) -> None:
        self.store = store
        self.identity = identity
        self.settings = settings
        self._report = report  # -> (state, concurrency, running)
        self._fence = fence
        self._sweep = sweep
        self._last_renewed = -float("inf")

    async def register(self) -> None:
        state, concurrency, running = self._report()
        now = self.store.now()
        i = self.identity
        await self.store.register_node(
            Node(
                id=i.id,
                name=i.name,
                host=i.host,
                pid=i.pid,
                started_at=now,
                heartbeat_at=now,
                state=state,
                concurrency=concurrency,
                running=running,
                http=i.http,
            )
        )
        self._last_renewed = trio.current_time()

    async def run(self) -> None:
        """Heartbeat (and, shared, sweep) every ``heartbeat_s`` until cancelled.

        Cancellation: stops between two heartbeats or abandons the wait for one; the lease
        then runs out on its own unless ``leave`` is called.
        """
        while True:
            await trio.sleep(self.settings.heartbeat_s)
            await self.beat()

    async def beat(self) -> None:
        state, concurrency, running = self._report()
        try:
            held = await self.store.heartbeat(
                self.identity.id, state=state, concurrency=concurrency, running=running
            )
        except Exception as exc:  # noqa: BLE001 - the store is unreachable: the lease may be running out
            log.warning("heartbeat failed: %s", exc)
            held = None
        if held:
            self._last_renewed = trio.current_time()
        elif self.store.shared and (
            held is False or trio.current_time() - self._last_renewed > self.settings.fence_after_s
        ):
            log.warning(
                "node %s lost its lease: stopping its attempts (others take them over)", self.identity.id
            )
            await self._fence()
            if held is False:
                await self.register()
        if self.store.shared:
            try:
                await self._sweep()
            except Exception:
                log.exception("taking over orphaned tasks failed; trying again at the next beat")

    async def leave(self) -> None:
        """Say this node stopped in order (after its attempts were put back)."""
        await self.store.leave(self.identity.id)
