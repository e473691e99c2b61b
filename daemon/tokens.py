"""API tokens: random, shown once, stored only as a hash."""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "agentd_"


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # The token carries 256 random bits, so a fast hash is enough (no password stretching).
    return hashlib.sha256(token.encode()).hexdigest()
