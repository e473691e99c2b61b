"""The daemon's VAPID key pair (RFC 8292): who signs the Web Push messages it sends.

A push service ties a subscription to the public key the browser was given when it subscribed
(``applicationServerKey``); a message signed with another key is refused. So every daemon that
serves the same users must sign with the same pair, and the pair must outlive restarts: it is
made once, encrypted with the daemon's ``SecretBox`` and kept in the store as a cluster value
(``Store.cluster_value``: the first daemon to ask stores its proposal, every later one reads
that), on SQLite and on a shared PostgreSQL alike. Rotating the secret keys re-encrypts it like
any stored secret; replacing the pair itself would orphan every subscription, so nothing does.

``authorization`` makes the ``Authorization: vapid t=<JWT>, k=<public key>`` header with
``py_vapid`` (ES256 over ``aud`` = the push endpoint's origin, ``exp``, ``sub`` = the
operator's contact, the ``vapid_subject`` setting).
"""

from __future__ import annotations

import base64
import urllib.parse
import weakref
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02, VapidException

from ..config import Settings
from ..secrets import SecretBox
from ..store import Store

__all__ = ["VAPID_KEY", "VapidKeys", "b64url", "default_subject", "vapid_keys", "vapid_subject"]

#: The cluster value holding the encrypted private key (PEM, PKCS#8).
VAPID_KEY = "vapid_private_key"
#: How long a signed token is good for. RFC 8292 §2: at most 24 hours.
TOKEN_LIFETIME_S = 12 * 3600
DEFAULT_SUBJECT = "mailto:agentd@localhost"


def b64url(data: bytes) -> str:
    """URL-safe base64 without padding (what browsers and push services exchange)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, eq=False)
class VapidKeys:
    """The daemon's VAPID pair. ``public_raw``: the uncompressed P-256 point (65 bytes)."""

    private_key: ec.EllipticCurvePrivateKey
    public_raw: bytes

    def __repr__(self) -> str:
        return f"VapidKeys(public={self.application_server_key})"

    @classmethod
    def from_pem(cls, pem: bytes) -> VapidKeys:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("the stored VAPID key is not a P-256 private key")
        public = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return cls(key, public)

    @classmethod
    def generate(cls) -> VapidKeys:
        key = ec.generate_private_key(ec.SECP256R1())
        return cls.from_pem(_pem(key))

    @property
    def application_server_key(self) -> str:
        """The public key as ``pushManager.subscribe`` takes it (base64url)."""
        return b64url(self.public_raw)

    def authorization(self, endpoint: str, subject: str, now: float) -> str:
        """The ``Authorization`` header value for a POST to ``endpoint``: ``vapid t=…, k=…``,
        the token's ``aud`` the endpoint's origin, good for ``TOKEN_LIFETIME_S`` from ``now``.
        ValueError for an origin that cannot be signed for."""
        parts = urllib.parse.urlsplit(endpoint)
        claims = {
            "aud": f"{parts.scheme}://{parts.netloc}",
            "exp": int(now) + TOKEN_LIFETIME_S,
            "sub": subject,
        }
        # no-strict: the subject is checked by our own settings (py_vapid's pattern refuses a
        # URL with a port); the audience pattern still applies.
        try:
            signed = Vapid02(self.private_key, conf={"no-strict": True}).sign(claims)
        except VapidException:  # an origin py_vapid cannot take (an IPv6 literal)
            raise ValueError(f"no VAPID token can be made for the origin {claims['aud']}") from None
        return str(signed["Authorization"])


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def default_subject(public_url: str | None) -> str:
    """The ``sub`` claim when ``vapid_subject`` is unset: the public URL's origin if it is an
    https one (push services contact the operator through it), else a mailto: placeholder."""
    if public_url:
        parts = urllib.parse.urlsplit(public_url)
        if parts.scheme == "https" and parts.netloc:
            return f"https://{parts.netloc}"
    return DEFAULT_SUBJECT


def vapid_subject(settings: Settings) -> str:
    """The contact push services see in every token (``vapid_subject``, or its default)."""
    return settings.vapid_subject or default_subject(settings.public_url)


_CACHE: weakref.WeakKeyDictionary[Store, VapidKeys] = weakref.WeakKeyDictionary()


async def vapid_keys(store: Store, box: SecretBox) -> VapidKeys:
    """The pair every daemon sharing ``store`` signs with, made and stored on first use.

    Kept in memory per store after the first call. Raises ``PermanentError``
    (``secret_undecryptable``) when the stored key cannot be decrypted with ``box``'s keys.

    Cancellation: the store write is not abandoned (see ``Store.cluster_value``); a cancelled
    first call leaves the stored pair, if it was stored, for the next one.
    """
    cached = _CACHE.get(store)
    if cached is not None:
        return cached
    proposed = box.encrypt(_pem(ec.generate_private_key(ec.SECP256R1())).decode("ascii"))
    stored = await store.cluster_value(VAPID_KEY, proposed, node=store.node_id or "local")
    keys = VapidKeys.from_pem(box.decrypt(stored).encode("ascii"))
    return _CACHE.setdefault(store, keys)
