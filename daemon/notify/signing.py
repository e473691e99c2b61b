"""Webhook signatures, Stripe's scheme: ``Agentd-Signature: t=<unix ts>,v1=<hex HMAC>``.

The HMAC-SHA256 is over ``f"{t}.{body}"`` with the webhook's secret (shown once when the
webhook is made). A receiver recomputes it over the raw body it got, compares in constant time,
refuses a ``t`` further than its tolerance from its clock (5 minutes: a captured request cannot
be replayed later), and drops a delivery whose ``Agentd-Delivery`` id it has seen (a retry or a
redelivery of one it already has). ``verify_signature`` does the first three.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SIGNATURE_HEADER = "Agentd-Signature"
DELIVERY_HEADER = "Agentd-Delivery"
EVENT_HEADER = "Agentd-Event"
TOLERANCE_S = 300.0
SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A new webhook signing secret (256 random bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Agentd-Signature`` header value of ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify_signature(
    secret: str, header: str | None, body: bytes, now: float, tolerance_s: float = TOLERANCE_S
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` at a time within ``tolerance_s`` of
    ``now``. Several ``v1`` values (a secret being rolled) may be given: one must match."""
    if not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or abs(now - timestamp) > tolerance_s:
        return False
    expected = _mac(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)
