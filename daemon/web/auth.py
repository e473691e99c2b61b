"""Who is calling: bearer API tokens, and per-user rate limits (token buckets).

Tokens are random (``daemon.tokens``), stored only as a SHA-256 hash, with an expiry, and
revocable; every check goes to the store, so a revocation or an expiry takes effect on the next
request (and on open WebSockets at their next re-check, see ``ws.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, Callable

import trio
from quart import g, request

from ..store import User
from ..tokens import hash_token
from .errors import ApiError


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Authenticator:
    def __init__(self, store: Any) -> None:
        self._store = store

    async def user_for(self, token: str | None) -> User | None:
        """The user owning this live token (not expired, not revoked, user enabled), or None."""
        if not token or len(token) > 512:
            return None
        return await self._store.user_by_token_hash(hash_token(token))


UNAUTHORIZED = ApiError(
    401, "unauthorized", "missing, invalid, expired or revoked API token",
    headers={"WWW-Authenticate": 'Bearer realm="agentd"'},
)


def require_user(get_auth: Callable[[], Authenticator]) -> Callable:
    """Decorator: resolve the bearer token into ``g.user`` or answer 401."""

    def decorator(func: Callable) -> Callable:
        @wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            user = await get_auth().user_for(bearer_token(request.headers.get("Authorization")))
            if user is None:
                raise UNAUTHORIZED
            g.user = user
            return await func(*args, **kwargs)

        return wrapper

    return decorator


@dataclass
class _Bucket:
    tokens: float
    stamp: float


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
    _buckets: dict[Any, _Bucket] = field(default_factory=dict)

    def take(self, key: Any) -> float:
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

    def check(self, key: Any, what: str) -> None:
        """``take`` or raise the API's 429 with ``Retry-After`` (whole seconds, rounded up)."""
        wait = self.take(key)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise ApiError(429, "rate_limited", f"too many {what}; retry in {seconds} s",
                           headers={"Retry-After": str(seconds)})

    def _forget_full(self, now: float, rate: float) -> None:
        for key, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.stamp) * rate >= self.burst:
                del self._buckets[key]
