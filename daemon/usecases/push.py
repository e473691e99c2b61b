"""Web Push subscriptions of a signed-in person: this server's VAPID key, subscribe, list and
unsubscribe (``daemon/web/push_routes.py`` is the HTTP face of these).

A subscription is a notification target of kind ``webpush`` (``notify.outbox.Target``): its
``url`` the browser's push endpoint, its secret the subscription's keys (``{"p256dh",
"auth"}``, encrypted with the daemon's ``SecretBox``), its ``events`` the notification kinds
it wants. Only its owner sees or removes it; the control socket's operator has none.

Subscribing is idempotent per person and endpoint: the same endpoint with the same keys and
events again is the same subscription (``created`` False); with other keys or events it
replaces the old one (a new id). The endpoint is a user's URL that the daemon will POST to:
https, and no private address unless the operator allows private remotes (the rule of
repository URLs, ``git.addresses.check_url_address``).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import BadArguments, Conflict, NotFound
from ..git.addresses import check_url_address
from ..notify.channels import allow_private
from ..notify.outbox import KINDS, TARGET_PREFIX, Target, TargetKind
from ..notify.vapid import vapid_keys
from ..notify.webpush import WHAT, parse_subscription_keys
from .policy import Viewer

if TYPE_CHECKING:
    from ..services import Services

MAX_SUBSCRIPTIONS = 20  # push subscriptions of one person (devices and browsers)
MAX_ENDPOINT = 2048
KIND = TargetKind.WEBPUSH.value


@dataclass(frozen=True)
class Subscribed:
    """The subscription, and whether this call made it (False: the same one was there)."""

    target: Target
    created: bool


def _owner(viewer: Viewer) -> int:
    if viewer.user_id is None:
        raise NotFound("the control socket's operator has no account to notify")
    return viewer.user_id


async def push_key(svc: Services) -> str:
    """This server's VAPID public key (base64url), the ``applicationServerKey`` to subscribe
    with. The same on every daemon sharing the store."""
    return (await vapid_keys(svc.store, svc.secrets)).application_server_key


async def subscribe(
    svc: Services,
    viewer: Viewer,
    endpoint: str,
    p256dh: str,
    auth: str,
    events: Sequence[str] | None = None,
) -> Subscribed:
    """Keep a browser's push subscription for the viewer (see the module's docstring).

    ``events``: the kinds to be notified of (default: all of ``KINDS``). ``BadArguments`` for
    malformed keys, an unknown kind or an endpoint that is not https; ``PermanentError``
    (``address_refused``) for an endpoint on a refused address; ``TransientError`` when its host
    does not resolve; ``Conflict`` when the viewer has ``MAX_SUBSCRIPTIONS`` already.
    """
    user_id = _owner(viewer)
    wanted = tuple(dict.fromkeys(events)) if events else KINDS
    unknown = [kind for kind in wanted if kind not in KINDS]
    if unknown:
        raise BadArguments(f"unknown notification kind {unknown[0]!r}; the kinds are: {', '.join(KINDS)}")
    keys = json.dumps({"p256dh": p256dh, "auth": auth})
    try:
        parse_subscription_keys(keys)
    except (ValueError, KeyError):
        raise BadArguments(
            "keys.p256dh must be the subscription's P-256 public key and keys.auth its 16-byte secret "
            "(both base64url, as PushSubscription.toJSON() gives them)"
        ) from None
    if len(endpoint) > MAX_ENDPOINT:
        raise BadArguments(f"the push endpoint is longer than {MAX_ENDPOINT} characters")
    await check_url_address(endpoint, allow_private=allow_private(svc.settings), what=WHAT)
    mine = await svc.store.list_targets(user_id, kind=KIND)
    same = next((target for target in mine if target.url == endpoint), None)
    if same is not None:
        if same.disabled_at is None and same.events == wanted and _keys_of(svc, same) == keys:
            return Subscribed(same, created=False)
    elif len(mine) >= MAX_SUBSCRIPTIONS:
        raise _too_many()
    target = Target(
        id=TARGET_PREFIX[TargetKind.WEBPUSH] + secrets.token_hex(8),
        user_id=user_id,
        kind=KIND,
        url=endpoint,
        secret_enc=svc.secrets.encrypt(keys),
        events=wanted,
        created_at=svc.store.now(),
    )
    # New keys or kinds for a known endpoint replace its row in the insert's own transaction.
    if not await svc.store.add_target(target, limit=MAX_SUBSCRIPTIONS, replace_url=True):
        raise _too_many()
    return Subscribed(target, created=True)


def _too_many() -> Conflict:
    return Conflict(
        f"you have {MAX_SUBSCRIPTIONS} push subscriptions already: "
        "remove one (a device you no longer use) first"
    )


def _keys_of(svc: Services, target: Target) -> str | None:
    return svc.secrets.decrypt(target.secret_enc) if target.secret_enc is not None else None


async def list_subscriptions(svc: Services, viewer: Viewer) -> list[Target]:
    """The viewer's push subscriptions, oldest first (disabled ones too: their ``disabled_at``
    says when the push service said they were gone)."""
    return await svc.store.list_targets(_owner(viewer), kind=KIND)


async def unsubscribe(
    svc: Services, viewer: Viewer, *, endpoint: str | None = None, subscription_id: str | None = None
) -> Target:
    """Remove the viewer's subscription named by its ``endpoint`` or its id; its pending
    deliveries fail. ``NotFound`` when the viewer has no such subscription (another person's
    is never found)."""
    user_id = _owner(viewer)
    mine = await svc.store.list_targets(user_id, kind=KIND)
    found = next(
        (t for t in mine if (endpoint is not None and t.url == endpoint) or t.id == subscription_id), None
    )
    if found is None or not await svc.store.delete_target(found.id, user_id):
        raise NotFound("no such push subscription")
    return found
