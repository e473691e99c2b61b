"""A Web Push service on 127.0.0.1 that speaks RFC 8030 and checks what a real one checks.

``subscribe()`` makes a subscription the way a browser does: a P-256 key pair and a 16-byte
auth secret of the "user agent" (kept here), an endpoint URL ``<url>/push/<id>``, and the JSON
a browser's ``PushSubscription.toJSON()`` gives (``as_browser_json``).

A POST to an endpoint is accepted (201, ``Location``) only when:

- ``Authorization: vapid t=<JWT>, k=<key>`` (RFC 8292): the JWT is ES256, its signature
  verifies against ``k``, ``aud`` is this service's origin, ``exp`` is in the future and at most
  24 hours away, and ``sub`` is a ``mailto:`` or ``https:`` contact (else 401, or 403 when ``k``
  differs from the key the subscription was made with, when it was given one);
- ``TTL`` is present (RFC 8030 §5.2; else 400), ``Content-Encoding`` is ``aes128gcm``, and
  ``Topic``, when present, is at most 32 base64url characters (else 400);
- the body decrypts (RFC 8291, written out here with ``cryptography`` alone, so that the
  daemon's library is checked against an independent reading of the RFCs) with the
  subscription's private key and auth secret (else 400).

Each accepted message is recorded with its headers and its decrypted JSON. ``answer(id,
status)`` makes an endpoint answer with a status instead (404, 410, 429 with ``Retry-After``,
500...), for every later request or the next ``times`` ones; an unknown endpoint is a 404.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .threaded_http import QuietHandler, ThreadedHTTPFake

_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


@dataclass
class PushSubscription:
    """One browser's subscription: what it gives the server, and the private half it keeps."""

    id: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth_secret: bytes
    server_key: str | None = None  # the applicationServerKey it was made with, if any

    @property
    def p256dh(self) -> str:
        return b64url(_point(self.private_key.public_key()))

    @property
    def auth(self) -> str:
        return b64url(self.auth_secret)

    def as_browser_json(self) -> dict[str, Any]:
        """What ``PushSubscription.toJSON()`` gives a page."""
        return {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": self.auth}}


@dataclass
class PushMessage:
    """An accepted message: its endpoint's id, its headers (lower-case names) and the
    decrypted body (parsed JSON)."""

    subscription_id: str
    headers: dict[str, str]
    notification: dict[str, Any]
    encrypted_bytes: int


@dataclass
class _Answer:
    status: int
    retry_after: str | None
    times: int | None


@dataclass
class PushRequest:
    """Every request an endpoint got, accepted or not, with the status it was answered."""

    subscription_id: str
    status: int
    reason: str = ""


class FakePushService(ThreadedHTTPFake):
    def __init__(self) -> None:
        self.subscriptions: dict[str, PushSubscription] = {}
        self.messages: list[PushMessage] = []
        self.requests: list[PushRequest] = []
        self._answers: dict[str, _Answer] = {}
        self._lock = threading.Lock()  # handlers run in threads of their own
        self._count = 0

    def subscribe(self, server_key: str | None = None) -> PushSubscription:
        """A new subscription, as a browser makes one (``server_key``: the VAPID public key
        given to ``pushManager.subscribe``; messages signed with another are refused, 403)."""
        self._count += 1
        sub_id = f"s{self._count}-{os.urandom(4).hex()}"
        sub = PushSubscription(
            sub_id,
            f"{self.url}/push/{sub_id}",
            ec.generate_private_key(ec.SECP256R1()),
            os.urandom(16),
            server_key,
        )
        self.subscriptions[sub_id] = sub
        return sub

    def answer(
        self, sub_id: str, status: int, *, retry_after: str | None = None, times: int | None = None
    ) -> None:
        """Answer requests to ``sub_id`` with ``status`` (all later ones, or the next ``times``)."""
        self._answers[sub_id] = _Answer(status, retry_after, times)

    def messages_for(self, sub_id: str) -> list[PushMessage]:
        return [m for m in self.messages if m.subscription_id == sub_id]

    def _record(self, request: PushRequest, message: PushMessage | None = None) -> None:
        with self._lock:
            if message is not None:
                self.messages.append(message)
            self.requests.append(request)

    # -- what a push service checks ---------------------------------------------------------------

    def check_vapid(self, header: str, sub: PushSubscription) -> tuple[int, str]:
        """(0, "") when the Authorization header is a valid VAPID one for this origin, else the
        status and why."""
        scheme, _, rest = header.partition(" ")
        if scheme.lower() != "vapid":
            return 401, "not a vapid Authorization"
        params = dict(part.strip().split("=", 1) for part in rest.split(",") if "=" in part)
        token, key = params.get("t", ""), params.get("k", "")
        try:
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
            head_b64, claims_b64, sig_b64 = token.split(".")
            head = json.loads(unb64url(head_b64))
            claims = json.loads(unb64url(claims_b64))
            sig = unb64url(sig_b64)
        except (ValueError, TypeError):
            return 401, "malformed vapid token or key"
        if head.get("alg") != "ES256" or len(sig) != 64:
            return 401, "token is not ES256"
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        try:
            public.verify(der, f"{head_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return 401, "bad signature"
        now = time.time()
        if claims.get("aud") != self.url:
            return 401, f"aud {claims.get('aud')!r} is not {self.url!r}"
        if not isinstance(claims.get("exp"), int) or not now < claims["exp"] <= now + 24 * 3600:
            return 401, "exp missing, past or more than 24 h away"
        if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
            return 401, "sub is not a mailto: or https: contact"
        if sub.server_key is not None and key != sub.server_key:
            return 403, "signed with another key than the subscription's"
        return 0, ""


def decrypt_aes128gcm(body: bytes, sub: PushSubscription) -> bytes:
    """RFC 8291 §3.4 and RFC 8188 §2, one record: the plaintext, or ValueError."""
    if len(body) < 21:
        raise ValueError("body shorter than the aes128gcm header")
    salt, (rs,), idlen = body[:16], struct.unpack("!L", body[16:20]), body[20]
    sender_point, ciphertext = body[21 : 21 + idlen], body[21 + idlen :]
    if idlen != 65 or len(ciphertext) > rs or rs < 18:
        raise ValueError("keyid is not a P-256 point, or more than one record")
    sender = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sender_point)
    shared = sub.private_key.exchange(ec.ECDH(), sender)
    ua_point = _point(sub.private_key.public_key())

    def hkdf(salt_: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
        prk = hmac.new(salt_, ikm, hashlib.sha256).digest()
        return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()[:length]

    ikm = hkdf(sub.auth_secret, shared, b"WebPush: info\x00" + ua_point + sender_point, 32)
    cek = hkdf(salt, ikm, b"Content-Encoding: aes128gcm\x00", 16)
    nonce = hkdf(salt, ikm, b"Content-Encoding: nonce\x00", 12)
    try:
        padded = AESGCM(cek).decrypt(nonce, ciphertext, None)
    except InvalidTag:
        raise ValueError("does not decrypt with the subscription's keys") from None
    stripped = padded.rstrip(b"\x00")
    if not stripped.endswith(b"\x02"):
        raise ValueError("last record's padding delimiter is not 0x02")
    return stripped[:-1]


class _Handler(QuietHandler):
    owner: FakePushService

    def _reply(
        self,
        sub_id: str,
        status: int,
        reason: str = "",
        headers: dict[str, str] | None = None,
        message: PushMessage | None = None,
    ) -> None:
        # Recorded before the answer: a client that has the answer finds the record.
        self.owner._record(PushRequest(sub_id, status, reason), message)
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _handle(self) -> None:
        fake = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        match = re.fullmatch(r"/push/([\w-]+)", self.path)
        sub = fake.subscriptions.get(match.group(1)) if match and self.command == "POST" else None
        if sub is None:
            self._reply(match.group(1) if match else self.path, 404, "no such subscription")
            return
        scripted = fake._answers.get(sub.id)
        if scripted is not None and scripted.times != 0:
            if scripted.times is not None:
                scripted.times -= 1
            extra = {"Retry-After": scripted.retry_after} if scripted.retry_after else {}
            self._reply(sub.id, scripted.status, "scripted", extra)
            return
        status, reason = fake.check_vapid(self.headers.get("Authorization", ""), sub)
        if status:
            self._reply(sub.id, status, reason)
            return
        topic = self.headers.get("Topic")
        if self.headers.get("TTL") is None or not self.headers["TTL"].isdigit():
            self._reply(sub.id, 400, "TTL header missing")
            return
        if self.headers.get("Content-Encoding") != "aes128gcm" or (
            topic is not None and not _TOPIC.match(topic)
        ):
            self._reply(sub.id, 400, "not aes128gcm, or a bad Topic")
            return
        try:
            notification = json.loads(decrypt_aes128gcm(body, sub))
        except ValueError as exc:
            self._reply(sub.id, 400, str(exc))
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        message = PushMessage(sub.id, headers, notification, len(body))
        location = {"Location": f"{fake.url}/message/{len(fake.messages) + 1}"}
        self._reply(sub.id, 201, headers=location, message=message)


FakePushService.handler_class = _Handler

__all__ = ["FakePushService", "PushMessage", "PushRequest", "PushSubscription", "decrypt_aes128gcm"]
