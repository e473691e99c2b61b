"""The ``webhook`` channel: the delivery's JSON, signed (``signing``), POSTed to the target.

Headers: ``Agentd-Signature`` (``t=...,v1=...``), ``Agentd-Delivery`` (the delivery id, the
same for every attempt: receivers drop duplicates by it) and ``Agentd-Event`` (the kind). The
URL is called by the address rules of ``channels.send_pinned``. 2xx delivers; 408, 425, 429
and 5xx (and a network error or timeout) retry with backoff; other answers fail.
"""

from __future__ import annotations

from .channels import Attempt, OwnClientChannel, Verdict
from .outbox import Delivery, Target, TargetKind
from .signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign

WHAT = "webhook URL"


class WebhookChannel(OwnClientChannel):
    kind = TargetKind.WEBHOOK.value
    what = WHAT

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
        return await self._post(target.url, body, headers, now)
