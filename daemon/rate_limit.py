"""Per-user rate limits: a token bucket per key, in memory on trio's clock, or in a shared store.

On a store several daemons share, the buckets of task creation live in the store
(``SharedRateLimiter``: one atomic UPSERT per check), so that a user's rate is the same however
many daemons their requests reach. The WebSocket subscribe limiter stays in memory per daemon: a
subscription lives on the daemon its socket is on, and what it costs (a replay read, the
fan-out) is that daemon's; a user's sockets there are capped per daemon too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from .config import Settings
from .errors import RateLimited
from .store import Store


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class Limiter(Protocol):
    async def check(self, key: int | None, what: str) -> None:
        """Spend one token of ``key``'s bucket, or raise ``RateLimited`` naming ``what``."""
        ...


@dataclass
class RateLimiter:
    """A token bucket per key: ``burst`` at once, refilled at ``per_min`` a minute.

    ``clock`` is trio's by default, so tests run it on the mock clock. Memory: one small bucket
    per key seen; full buckets are forgotten when the table grows past ``max_keys``.
    """

    per_min: float
    burst: int
    clock: Callable[[], float] = trio.current_time
    max_keys: int = 10_000
    _buckets: dict[Hashable, _Bucket] = field(default_factory=dict)

    def take(self, key: Hashable) -> float:
        """Spend one token for ``key``: 0.0 if allowed, else the seconds to wait (retry-after)."""
        now = self.clock()
        rate = self.per_min / 60.0
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._forget_full(now, rate)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate

    async def check(self, key: int | None, what: str) -> None:
        """``take``, or raise ``RateLimited`` naming ``what`` and the whole seconds to wait."""
        _refuse_if_waiting(self.take(key), what)

    def _forget_full(self, now: float, rate: float) -> None:
        for key, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.stamp) * rate >= self.burst:
                del self._buckets[key]


@dataclass
class SharedRateLimiter:
    """A token bucket per key in the store (``store.take_rate_token``), named ``name:key``: the
    same bucket on every daemon sharing the store. Its clock is the store's (the nodes' clocks,
    kept in sync as the leases need)."""

    store: Store
    name: str
    per_min: float
    burst: int

    async def check(self, key: int | None, what: str) -> None:
        """Spend one token of ``key``'s bucket, or raise ``RateLimited``. Cancellation: as a
        store write (it completes; the caller learns whether the token was spent)."""
        wait = await self.store.take_rate_token(f"{self.name}:{key}", per_min=self.per_min, burst=self.burst)
        _refuse_if_waiting(wait, what)


def _refuse_if_waiting(wait: float, what: str) -> None:
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        raise RateLimited(f"too many {what}; retry in {seconds} s", retry_after=seconds)


def task_create_limiter(settings: Settings, store: Store) -> Limiter:
    """The limiter of task creations and follow-ups (one bucket per user): in the store when
    other daemons share it, else in memory."""
    per_min, burst = settings.rate_task_creates_per_min, settings.rate_task_creates_burst
    if store.shared:
        return SharedRateLimiter(store, "task_creates", per_min, burst)
    return RateLimiter(per_min, burst)
