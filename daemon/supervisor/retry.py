"""Retry policy: exponential backoff with full jitter (AWS architecture blog, "full jitter")."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    base_s: float = 2.0
    cap_s: float = 600.0
    max_attempts: int = 5
    rng: random.Random = field(default_factory=random.Random)

    def ceiling(self, attempt: int) -> float:
        """The largest delay after failed attempt number ``attempt`` (1-based)."""
        return min(self.cap_s, self.base_s * 2 ** max(0, attempt - 1))

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """A random delay in [0, ceiling]; never shorter than what the remote side asked for."""
        delay = self.rng.uniform(0, self.ceiling(attempt))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap_s))
        return delay

    def exhausted(self, attempt: int) -> bool:
        return attempt >= self.max_attempts
