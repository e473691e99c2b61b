"""The ``webhook`` channel: the delivery's JSON, signed (``signing``), POSTed to the target.

Headers: ``Agentd-Signature`` (``t=...,v1=...``), ``Agentd-Delivery`` (the delivery id, the
same for every attempt: receivers drop duplicates by it) and ``Agentd-Event`` (the kind). The
URL is called by the address rules of ``channels.send_pinned``. 2xx delivers; 408, 425, 429
and 5xx (and a network error or timeout) retry with backoff; other answers fail.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable

import httpx2

from ..config import Settings
from .channels import Attempt, Verdict, http_client, send_pinned
from .outbox import Delivery, Target, TargetKind
from .signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign

WHAT = "webhook URL"


def allow_private(settings: Settings) -> bool:
    """Whether user-given notification URLs may reach private addresses (the repository rule)."""
    return settings.allow_private_remotes or settings.allow_local_remotes


class WebhookChannel:
    kind = TargetKind.WEBHOOK.value

    def __init__(
        self,
        settings: Settings,
        *,
        now: Callable[[], float] = time.time,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``ssl_context``: the CAs trusted for https receivers (``channels.http_client``)."""
        self._settings = settings
        self._now = now
        self._http: httpx2.AsyncClient = http_client(settings.notify_timeout_s, ssl_context)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def deliver(self, delivery: Delivery, target: Target, secret: str | None) -> Attempt:
        """POST ``delivery.payload`` (the rendered body) signed with ``secret``."""
        if secret is None:
            return Attempt(Verdict.FAILED, error="the webhook has no signing secret")
        body = delivery.payload.encode()
        now = self._now()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "agentd-webhooks",
            SIGNATURE_HEADER: sign(secret, body, int(now)),
            DELIVERY_HEADER: delivery.id,
            EVENT_HEADER: delivery.kind,
        }
        return await send_pinned(
            self._http,
            target.url,
            content=body,
            headers=headers,
            allow_private=allow_private(self._settings),
            what=WHAT,
            now=now,
            deadline_s=self._settings.notify_timeout_s,
        )
