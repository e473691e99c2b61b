"""Web Push (RFC 8030) to the phone client's service worker: the outbox's ``webpush`` channel.

A delivery becomes one POST to the subscription's push endpoint:

- the body: a small JSON notification (``notification_for``: title, body, the task's own
  client URL ``/#/task/ID``, a tag) encrypted for the subscription's keys with ``aes128gcm``
  (RFC 8291 over RFC 8188, by ``http_ece``: an ephemeral P-256 key per message, the
  subscription's ``auth`` secret, one 4096-byte record);
- the headers: ``Authorization: vapid t=…, k=…`` (RFC 8292, ``vapid.VapidKeys``), ``TTL`` (the
  ``push_ttl_s`` setting), ``Urgency`` (high for a question or a failure, else normal) and ``Topic``
  (the task's id: a push service keeps only the newest undelivered message of a topic, so a
  phone that was offline sees the task's latest state, not a backlog).

The request goes out through ``channels.post_to_target`` (the endpoint checked by the rules of
repository URLs, and called on the address checked), and the answer decides the verdict
(``push_verdict``): 2xx delivered; 404 or 410 gone (the subscription expired or was
withdrawn: the outbox disables the target); 408, 425, 429 and 5xx retried later, honouring
``Retry-After``, as is a connection that fails; 400, 401, 403, 413 and any other answer failed.

Trust boundary (design §11): the notification's text comes partly from the model (a question,
an error): it is sent as plain text, without control characters, capped in length, and the
service worker shows it as text. The only URL in it is the task's same-origin client URL, made
here from the task id. The endpoint is a user's URL: it must be https and must not reach a
private address unless the operator allows private remotes, checked when subscribing
(``usecases.push``) and again at each send.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import time
from collections.abc import Mapping
from typing import Any

import httpx2
from cryptography.hazmat.primitives.asymmetric import ec
from http_ece import encrypt as ece_encrypt

from ..config import Settings
from ..secrets import SecretBox
from ..store import Store
from .channels import Attempt, Verdict, http_client, post_to_target
from .outbox import Delivery, Target, repo_name
from .vapid import vapid_keys, vapid_subject

__all__ = [
    "WebPushChannel",
    "encrypt_message",
    "notification_for",
    "parse_subscription_keys",
    "push_verdict",
    "topic_for",
]

KIND = "webpush"
WHAT = "push endpoint"
TITLE_CHARS = 80
BODY_CHARS = 240
MAX_BODY_BYTES = 4096  # what every push service takes (RFC 8291 §4: at least 4096 octets)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

TITLES = {
    "task.succeeded": "Task finished",
    "task.failed": "Task failed",
    "task.cancelled": "Task cancelled",
    "task.waiting_input": "Task asks you",
    "task.pr_opened": "Pull request opened",
    "test": "Test notification",
}


def plain(text: object, limit: int) -> str:
    """``text`` as one line of plain text: control characters become spaces, runs of white space
    one space, and it is cut to ``limit`` characters (an ellipsis marks the cut)."""
    line = " ".join(_CONTROL.sub(" ", str(text or "")).split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def notification_for(payload: Mapping[str, Any]) -> dict[str, str]:
    """The notification a phone shows for an outbox payload (``{id, kind, task: {...},
    question?}``): ``title``, ``body`` (plain text, capped), ``url`` (``/#/task/ID``: the
    client's own page of the task; "/" when the id is not one) and ``tag`` (one notification
    per task on the phone: a newer one replaces it)."""
    kind = str(payload.get("kind", ""))
    task = payload.get("task") or {}
    task_id = str(task.get("id", ""))
    title = f"{TITLES.get(kind, 'Task update')}: {repo_name(task.get('repo_url'))}"
    if kind == "task.waiting_input":
        body = payload.get("question") or "The agent is waiting for your answer."
    elif kind == "task.failed":
        body = task.get("error") or "The task failed."
    elif kind == "task.pr_opened":
        body = "A pull request was opened: open the task to review it."  # no URL but the task's own
    elif kind == "task.succeeded":
        body = f"Branch {task['branch']} pushed." if task.get("branch") else "The task is done."
    elif kind == "test":
        title, body = TITLES[kind], "Notifications from agentd reach this device."
    else:
        body = "The task was cancelled." if kind == "task.cancelled" else str(task.get("status", ""))
    valid = bool(_TASK_ID.match(task_id))
    return {
        "title": plain(title, TITLE_CHARS),
        "body": plain(body, BODY_CHARS),
        "url": "/#/task/" + task_id if valid else "/",
        "tag": "task-" + task_id if valid else "agentd",
    }


def topic_for(payload: Mapping[str, Any]) -> str | None:
    """The ``Topic`` of a payload: its task's id when it fits RFC 8030's (32 base64url
    characters), else none."""
    task_id = str((payload.get("task") or {}).get("id", ""))
    return task_id if _TOPIC.match(task_id) else None


def urgency_for(kind: str) -> str:
    """RFC 8030 §5.3: a question or a failure waits for the person, so it may wake the phone."""
    return "high" if kind in ("task.waiting_input", "task.failed") else "normal"


def parse_subscription_keys(secret: str) -> tuple[bytes, bytes]:
    """The subscription's ``p256dh`` (65-byte P-256 point) and ``auth`` (16 bytes) from the
    target's secret, the JSON ``{"p256dh": b64url, "auth": b64url}``; ValueError when either
    is missing or malformed."""
    data = json.loads(secret)
    p256dh, auth = _b64url_decode(data["p256dh"]), _b64url_decode(data["auth"])
    if len(p256dh) != 65 or p256dh[0] != 4 or len(auth) != 16:
        raise ValueError("p256dh must be an uncompressed P-256 point (65 bytes), auth 16 bytes")
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)  # on the curve
    return p256dh, auth


def _b64url_decode(text: object) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]+={0,2}", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))


def encrypt_message(plain_body: bytes, p256dh: bytes, auth: bytes) -> bytes:
    """RFC 8291: ``plain_body`` encrypted for the subscription (``aes128gcm``, a fresh
    ephemeral key and salt per call). CPU only, well under a millisecond."""
    return bytes(
        ece_encrypt(
            plain_body,
            private_key=ec.generate_private_key(ec.SECP256R1()),
            dh=p256dh,
            auth_secret=auth,
            version="aes128gcm",
        )
    )


# What a push service's refusal means (RFC 8030 §5, RFC 8292 §4.2); other answers are read as
# every channel reads them (``channels.verdict_for``).
REFUSALS = {
    400: "the push service refused the request as malformed (HTTP 400)",
    401: "the push service refused the VAPID signature (HTTP 401)",
    403: "the push service refused the VAPID key (HTTP 403): the subscription was made with another key",
    413: "the notification is too large for the push service (HTTP 413)",
}


def push_verdict(attempt: Attempt) -> Attempt:
    """``attempt`` (as ``send_pinned`` read the answer) as Web Push reads it: 404 and 410 say
    the subscription expired or was withdrawn (``GONE``: the target is disabled); 400, 401, 403
    and 413 fail with what they mean; the rest stands (2xx delivered; 408, 425, 429 and 5xx
    retried after ``Retry-After``)."""
    code = attempt.status_code
    if code in (404, 410):
        return Attempt(Verdict.GONE, status_code=code, error=f"the push subscription is gone (HTTP {code})")
    if code in REFUSALS:
        return Attempt(Verdict.FAILED, status_code=code, error=REFUSALS[code])
    return attempt


class WebPushChannel:
    """The ``webpush`` channel: one encrypted, VAPID-signed POST per delivery.

    Holds one HTTP client (no redirects followed, no proxy from the environment); ``aclose``
    closes it. The VAPID pair is read from the store at the first delivery (``vapid_keys``).
    """

    kind = KIND

    def __init__(
        self,
        settings: Settings,
        store: Store,
        secrets: SecretBox,
        *,
        http: httpx2.AsyncClient | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``http``: a client to use (not closed here); else one is made with ``ssl_context``,
        the CAs trusted for push services (``channels.http_client``)."""
        self._settings = settings
        self._store = store
        self._secrets = secrets
        self._http = http
        self._owns_http = http is None
        self._ssl_context = ssl_context

    def _client(self) -> httpx2.AsyncClient:
        if self._http is None:
            self._http = http_client(self._settings.notify_timeout_s, self._ssl_context)
        return self._http

    async def aclose(self) -> None:
        """Close the HTTP client if this channel made it."""
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    async def deliver(self, delivery: Delivery, target: Target, secret: str | None) -> Attempt:
        """Send ``delivery`` to the subscription ``target`` (its keys JSON in ``secret``).

        Never raises for what the push service or the network does: the verdict says it.

        Cancellation: the request is abandoned (the push service may or may not have the
        message; the outbox's retry may then deliver it twice, which the ``Topic`` and the
        notification's ``tag`` make harmless on the phone).
        """
        payload = json.loads(delivery.payload)
        try:
            if secret is None:
                raise ValueError("the subscription has no keys")
            p256dh, auth = parse_subscription_keys(secret)
        except (ValueError, KeyError, TypeError):
            return Attempt(Verdict.GONE, error="push subscription keys unreadable: removed")
        notification = notification_for(payload)
        body = encrypt_message(json.dumps(notification, ensure_ascii=False).encode(), p256dh, auth)
        if len(body) > MAX_BODY_BYTES:  # cannot happen with the caps above; never sent cut
            return Attempt(Verdict.FAILED, error=f"notification too large ({len(body)} bytes)")
        keys = await vapid_keys(self._store, self._secrets)
        now = time.time()  # the push service checks the token's exp against real time
        try:
            authorization = keys.authorization(target.url, vapid_subject(self._settings), now)
        except ValueError as exc:
            return Attempt(Verdict.FAILED, error=str(exc))
        headers = {
            "Authorization": authorization,
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "TTL": str(self._settings.push_ttl_s),
            "Urgency": urgency_for(str(payload.get("kind", ""))),
        }
        topic = topic_for(payload)
        if topic:
            headers["Topic"] = topic
        attempt = await post_to_target(
            self._client(), self._settings, target.url, content=body, headers=headers, what=WHAT, now=now
        )
        return push_verdict(attempt)
