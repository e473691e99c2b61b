"""The phone API's Web Push routes: the server's VAPID key, and the caller's push
subscriptions (``usecases.push``). Each parses, calls one use case and renders it, as
``routes.py`` does; every field is described for /openapi.json. A subscription that is not the
caller's is a 404, like a task.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint
from quart.typing import ResponseReturnValue
from quart_schema import validate_request, validate_response

from ..errors import TransientError
from ..notify.outbox import KINDS, Target
from ..usecases import push
from .auth import require_user, services, viewer
from .errors import ApiError

B64URL = r"^[A-Za-z0-9_-]+={0,2}$"


class PushKeyOut(BaseModel):
    """The key browsers subscribe with."""

    public_key: str = Field(
        description="This server's VAPID public key (an uncompressed P-256 point, base64url): the "
        "applicationServerKey of pushManager.subscribe()."
    )


class SubscriptionKeys(BaseModel):
    model_config = ConfigDict(extra="ignore")
    p256dh: str = Field(
        min_length=80, max_length=100, pattern=B64URL, description="The subscription's P-256 public key."
    )
    auth: str = Field(min_length=20, max_length=30, pattern=B64URL, description="Its 16-byte auth secret.")


class Subscribe(BaseModel):
    """A browser's push subscription, as ``PushSubscription.toJSON()`` gives it."""

    model_config = ConfigDict(extra="ignore")  # expirationTime and what browsers add
    endpoint: str = Field(
        min_length=1,
        max_length=push.MAX_ENDPOINT,
        description="The push service's URL for this subscription (https; no private address).",
    )
    keys: SubscriptionKeys = Field(description="Its keys, base64url.")
    events: list[str] | None = Field(
        None,
        max_length=len(KINDS),
        description=f"The notification kinds to send it ({', '.join(KINDS)}); default: all.",
    )


class Unsubscribe(BaseModel):
    model_config = ConfigDict(extra="ignore")
    endpoint: str = Field(
        min_length=1, max_length=push.MAX_ENDPOINT, description="The endpoint of the subscription to remove."
    )


class SubscriptionOut(BaseModel):
    """One push subscription of the caller (never its keys)."""

    id: str = Field(description="The subscription's id (wp_...).")
    endpoint: str = Field(description="Its push endpoint.")
    events: list[str] = Field(description="The notification kinds it is sent.")
    created_at: float = Field(description="When it was made (Unix time).")
    disabled_at: float | None = Field(
        description="When the push service said it is gone (404/410; nothing is sent to it since), or null."
    )


class SubscriptionsOut(BaseModel):
    """The caller's push subscriptions, oldest first."""

    subscriptions: list[SubscriptionOut] = Field(description="One per browser or device subscribed.")


def _out(target: Target) -> dict[str, object]:
    return {
        "id": target.id,
        "endpoint": target.url,
        "events": list(target.events),
        "created_at": target.created_at,
        "disabled_at": target.disabled_at,
    }


bp = Blueprint("push", __name__)


@bp.get("/api/push/key")
@require_user
@validate_response(PushKeyOut)
async def push_key() -> ResponseReturnValue:
    """This server's VAPID public key.

    What a browser subscribes with (``applicationServerKey``); the same on every daemon
    sharing the store, and for as long as the store lasts.
    """
    return {"public_key": await push.push_key(services())}


@bp.post("/api/push/subscriptions")
@require_user
@validate_request(Subscribe)
@validate_response(SubscriptionOut, 201)
@validate_response(SubscriptionOut, 200)
async def subscribe(data: Subscribe) -> ResponseReturnValue:
    """Notify this browser: keep its push subscription.

    201 with the new subscription; 200 with the existing one when this endpoint is subscribed
    already with the same keys and kinds (other keys or kinds replace it). 422 for an endpoint
    that is not https or is on a private address (unless the operator allows those), malformed
    keys or an unknown kind; 409 at 20 subscriptions; 503 when the endpoint's host does not
    resolve now.
    """
    try:
        done = await push.subscribe(
            services(), viewer(), data.endpoint, data.keys.p256dh, data.keys.auth, data.events
        )
    except TransientError as exc:
        raise ApiError(503, exc.code, exc.message, headers={"Retry-After": "30"}) from None
    return _out(done.target), 201 if done.created else 200


@bp.get("/api/push/subscriptions")
@require_user
@validate_response(SubscriptionsOut)
async def list_subscriptions() -> ResponseReturnValue:
    """The caller's push subscriptions.

    Only the caller's own, oldest first, disabled ones too (``disabled_at``).
    """
    return {"subscriptions": [_out(t) for t in await push.list_subscriptions(services(), viewer())]}


@bp.delete("/api/push/subscriptions")
@require_user
@validate_request(Unsubscribe)
async def unsubscribe_endpoint(data: Unsubscribe) -> ResponseReturnValue:
    """Stop notifying a browser, named by its endpoint.

    204; 404 when the caller has no subscription with this endpoint. Pending notifications
    to it are dropped.
    """
    await push.unsubscribe(services(), viewer(), endpoint=data.endpoint)
    return "", 204


@bp.delete("/api/push/subscriptions/<subscription_id>")
@require_user
async def unsubscribe_id(subscription_id: str) -> ResponseReturnValue:
    """Stop notifying a browser, named by the subscription's id.

    204; 404 when the caller has no subscription with this id.
    """
    await push.unsubscribe(services(), viewer(), subscription_id=subscription_id)
    return "", 204
