"""The phone API's notification routes: the caller's webhooks, ntfy topic and delivery log
(``usecases.notify``). Each parses, calls one use case and renders it; every field is
described for /openapi.json. A webhook or delivery that is not the caller's is a 404.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint
from quart.typing import ResponseReturnValue
from quart_schema import validate_querystring, validate_request, validate_response

from ..errors import TransientError
from ..notify.outbox import KINDS, Delivery, Target, TargetKind
from ..usecases import notify
from .auth import require_user, services, viewer
from .errors import ApiError

T = TypeVar("T")
EVENTS_DOC = f"The notification kinds to send ({', '.join(KINDS)}); default: all."


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(
        min_length=1, max_length=notify.URL_CAP, description="Where to POST (https; no private address)."
    )
    events: list[str] | None = Field(None, max_length=len(KINDS), description=EVENTS_DOC)


class TargetOut(BaseModel):
    """A webhook or ntfy topic of the caller (never its secret)."""

    id: str = Field(description="The target's id (wh_... a webhook, nt_... an ntfy topic).")
    kind: str = Field(description="webhook or ntfy.")
    url: str = Field(description="Where deliveries go.")
    events: list[str] = Field(description="The notification kinds it is sent.")
    created_at: float = Field(description="When it was made (Unix time).")
    disabled_at: float | None = Field(description="When the receiver said it is gone, or null.")


class NewWebhookOut(TargetOut):
    secret: str = Field(
        description="The signing secret (whsec_...): shown this once. Each delivery carries "
        "Agentd-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, '<t>.<body>')>."
    )


class WebhooksOut(BaseModel):
    webhooks: list[TargetOut] = Field(description="The caller's webhooks, oldest first.")


class NtfyOut(BaseModel):
    topic: TargetOut | None = Field(description="The caller's ntfy topic, or null when none is set.")


class NtfyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(
        min_length=1, max_length=notify.URL_CAP, description="The topic's URL, e.g. https://ntfy.sh/my-topic."
    )
    token: str | None = Field(
        None,
        max_length=notify.TOKEN_CAP,
        description="An access token, if the topic needs one (kept encrypted).",
    )
    events: list[str] | None = Field(None, max_length=len(KINDS), description=EVENTS_DOC)


class DeliveryOut(BaseModel):
    """One notification to one target; its id is the same in every attempt and redelivery."""

    id: str = Field(
        description="The delivery id (dlv_...), sent as Agentd-Delivery: receivers drop duplicates by it."
    )
    target_id: str = Field(description="The webhook or topic it goes to.")
    task_id: str | None = Field(description="The task it is about (null for a test).")
    kind: str = Field(
        description="task.succeeded, task.failed, task.cancelled, task.waiting_input, task.pr_opened or test."
    )
    status: str = Field(description="pending, delivered or failed.")
    attempts: int = Field(description="Attempts made (in this round: a redelivery starts again at 0).")
    next_at: float | None = Field(description="When a pending one is tried next (Unix time).")
    last_error: str | None = Field(description="What went wrong last, if anything.")
    last_status: int | None = Field(description="The receiver's last HTTP status, if any.")
    created_at: float = Field(description="When it was written (with its event).")
    delivered_at: float | None = Field(description="When it was delivered.")


class DeliveriesOut(BaseModel):
    deliveries: list[DeliveryOut] = Field(description="Newest first.")


class DeliveriesQuery(BaseModel):
    status: str | None = Field(None, description="Only these: pending, delivered or failed.")
    target: str | None = Field(None, description="Only those to this webhook or topic.")
    limit: int = Field(50, ge=1, le=500, description="At most this many.")


def _target(target: Target) -> dict[str, object]:
    out = target.public()
    out.pop("user_id")
    return out


def _delivery(delivery: Delivery) -> dict[str, object]:
    return delivery.public()


async def _checking_url(call: Awaitable[T]) -> T:
    """A URL whose host does not resolve now is a 503, with a hint to try again."""
    try:
        return await call
    except TransientError as exc:
        raise ApiError(503, exc.code, exc.message, headers={"Retry-After": "30"}) from None


bp = Blueprint("notify", __name__)


@bp.post("/api/webhooks")
@require_user
@validate_request(WebhookIn)
@validate_response(NewWebhookOut, 201)
async def add_webhook(data: WebhookIn) -> ResponseReturnValue:
    """Add a webhook for the caller's tasks.

    201 with the webhook and its signing secret, shown this once. 422 for a URL that is not
    https or is on a private address (unless the operator allows those), or an unknown kind;
    409 past the per-user cap; 503 when the URL's host does not resolve now.
    """
    made = await _checking_url(notify.add_webhook(services(), viewer(), data.url, data.events))
    return {**_target(made.target), "secret": made.secret}, 201


@bp.get("/api/webhooks")
@require_user
@validate_response(WebhooksOut)
async def list_webhooks() -> ResponseReturnValue:
    """The caller's webhooks.

    Only the caller's own, oldest first, disabled ones too; never their signing secrets.
    """
    found = await notify.list_targets(services(), viewer(), TargetKind.WEBHOOK)
    return {"webhooks": [_target(t) for t in found]}


@bp.delete("/api/webhooks/<target_id>")
@require_user
async def remove_webhook(target_id: str) -> ResponseReturnValue:
    """Remove one of the caller's webhooks.

    204; 404 if it is not theirs. Its pending deliveries fail ("the target was removed").
    """
    await notify.remove_target(services(), viewer(), target_id, TargetKind.WEBHOOK)
    return "", 204


@bp.post("/api/webhooks/<target_id>/test")
@require_user
@validate_response(DeliveryOut, 202)
async def test_webhook(target_id: str) -> ResponseReturnValue:
    """Send a test delivery to one of the caller's webhooks.

    202 with the delivery (kind ``test``), sent signed like any other; 404 if not theirs.
    """
    return _delivery(await notify.send_test(services(), viewer(), target_id, TargetKind.WEBHOOK)), 202


@bp.put("/api/notify/ntfy")
@require_user
@validate_request(NtfyIn)
@validate_response(TargetOut)
async def set_ntfy(data: NtfyIn) -> ResponseReturnValue:
    """Notify the caller through an ntfy topic (in place of the one set before).

    422 for a URL that is not https or is on a private address (unless allowed); 503 when
    its host does not resolve now.
    """
    return _target(
        await _checking_url(notify.set_ntfy(services(), viewer(), data.url, data.token, data.events))
    )


@bp.get("/api/notify/ntfy")
@require_user
@validate_response(NtfyOut)
async def get_ntfy() -> ResponseReturnValue:
    """The caller's ntfy topic.

    200 with ``{"topic": null}`` when none is set (not an error: a settings view asks before
    there is one). Its access token is never shown.
    """
    found = await notify.list_targets(services(), viewer(), TargetKind.NTFY)
    return {"topic": _target(found[0]) if found else None}


@bp.delete("/api/notify/ntfy")
@require_user
async def remove_ntfy() -> ResponseReturnValue:
    """Stop notifying the caller through ntfy.

    204; 404 when none is set. Its pending deliveries fail.
    """
    await notify.remove_ntfy(services(), viewer())
    return "", 204


@bp.post("/api/notify/ntfy/test")
@require_user
@validate_response(DeliveryOut, 202)
async def test_ntfy() -> ResponseReturnValue:
    """Send a test notification to the caller's ntfy topic.

    202 with the delivery; 404 when no topic is set.
    """
    found = await notify.list_targets(services(), viewer(), TargetKind.NTFY)
    if not found:
        raise ApiError(404, "not_found", "no ntfy topic is set")
    return _delivery(await notify.send_test(services(), viewer(), found[0].id, TargetKind.NTFY)), 202


@bp.get("/api/deliveries")
@require_user
@validate_querystring(DeliveriesQuery)
@validate_response(DeliveriesOut)
async def list_deliveries(query_args: DeliveriesQuery) -> ResponseReturnValue:
    """The delivery log of the caller's webhooks and topics.

    Newest first; only deliveries to the caller's own targets. 422 for an unknown status;
    404 for a target that is not theirs.
    """
    found = await notify.list_deliveries(
        services(), viewer(), status=query_args.status, target_id=query_args.target, limit=query_args.limit
    )
    return {"deliveries": [_delivery(d) for d in found]}


@bp.post("/api/deliveries/<delivery_id>/redeliver")
@require_user
@validate_response(DeliveryOut, 202)
async def redeliver(delivery_id: str) -> ResponseReturnValue:
    """Deliver a delivered or failed delivery again.

    With the same id (receivers drop duplicates by it): 202; 404 if not the caller's; 409 while
    it is pending or its target is disabled.
    """
    return _delivery(await notify.redeliver(services(), viewer(), delivery_id)), 202
