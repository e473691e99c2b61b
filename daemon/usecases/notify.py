"""Notification targets and their deliveries: webhooks (a user's, or operator-wide) and a user's
ntfy topic; the delivery log, test deliveries and redeliveries.

A user sees and changes only their own targets and the deliveries to them: anyone else's is
``NotFound``, as if it did not exist. The control socket's operator sees every target and
delivery, and makes operator-wide webhooks (every user's tasks). A webhook's signing secret is
made here and returned once, at creation; the store keeps it encrypted (``SecretBox``).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import BadArguments, Conflict, Forbidden, NotFound
from ..git.addresses import check_url_address
from ..notify.channels import allow_private
from ..notify.outbox import (
    KINDS,
    TARGET_PREFIX,
    TEST_KIND,
    Delivery,
    DeliveryStatus,
    Target,
    TargetKind,
    delivery_id,
    new_nonce,
    probe_payload,
)
from ..notify.signing import new_secret
from ..store.outbox_queries import ALL, Scope
from .policy import Viewer

if TYPE_CHECKING:
    from ..services import Services

URL_CAP = 2048
TOKEN_CAP = 512


@dataclass(frozen=True)
class NewWebhook:
    """A webhook just made, with its signing secret: shown this once, never again."""

    target: Target
    secret: str


def _scope(viewer: Viewer) -> Scope:
    if viewer.user_id is not None:
        return viewer.user_id
    if viewer.is_operator:
        return ALL
    raise Forbidden("notification targets belong to a user")


def _events(events: Sequence[str] | None) -> tuple[str, ...]:
    if events is None:
        return KINDS
    chosen = tuple(dict.fromkeys(events))
    unknown = [kind for kind in chosen if kind not in KINDS]
    if unknown or not chosen:
        raise BadArguments(
            f"events must be one or more of {', '.join(KINDS)}"
            + (f"; unknown: {', '.join(map(str, unknown))}" if unknown else "")
        )
    return chosen


async def _checked_url(svc: Services, url: str, what: str) -> str:
    """``url`` if the daemon may call it (the repository URL address rules); else the error."""
    url = url.strip()
    if not url or len(url) > URL_CAP:
        raise BadArguments(f"the {what} must be 1 to {URL_CAP} characters")
    await check_url_address(url, allow_private=allow_private(svc.settings), what=what)
    return url


def _new_target(
    kind: TargetKind,
    user_id: int | None,
    url: str,
    secret_enc: bytes | None,
    events: tuple[str, ...],
    now: float,
) -> Target:
    return Target(
        TARGET_PREFIX[kind] + secrets.token_hex(8), user_id, kind.value, url, secret_enc, events, now
    )


async def add_webhook(
    svc: Services,
    viewer: Viewer,
    url: str,
    events: Sequence[str] | None = None,
    *,
    operator_wide: bool = False,
) -> NewWebhook:
    """A webhook for the viewer's tasks (``operator_wide``: the control operator's, for every
    user's tasks). ``BadArguments`` for unknown events, ``PermanentError`` (``invalid_url``,
    ``address_refused``) for a URL the daemon may not call, ``Conflict`` past the per-user cap."""
    if operator_wide != (viewer.user_id is None):
        raise Forbidden("operator-wide webhooks are made by an operator over the control socket")
    if viewer.user_id is None and not viewer.is_operator:
        raise Forbidden("notification targets belong to a user")
    chosen = _events(events)
    checked = await _checked_url(svc, url, "webhook URL")
    secret = new_secret()
    target = _new_target(
        TargetKind.WEBHOOK, viewer.user_id, checked, svc.secrets.encrypt(secret), chosen, svc.store.now()
    )
    if not await svc.store.add_target(target, limit=svc.settings.webhooks_per_user):
        raise Conflict(f"at most {svc.settings.webhooks_per_user} webhooks per user; remove one first")
    return NewWebhook(target, secret)


async def list_targets(svc: Services, viewer: Viewer, kind: TargetKind | None = None) -> list[Target]:
    """The viewer's targets (the control operator: everyone's and operator-wide), of ``kind``."""
    return await svc.store.list_targets(_scope(viewer), kind=kind.value if kind else None)


async def _target(svc: Services, viewer: Viewer, target_id: str, kind: TargetKind | None = None) -> Target:
    found = await svc.store.targets_by_ids([target_id])
    target = found.get(target_id)
    scope = _scope(viewer)
    if target is None or (scope != ALL and target.user_id != scope) or (kind and target.kind != kind.value):
        raise NotFound(f"no {kind.value if kind else 'notification target'} {target_id}")
    return target


async def remove_target(
    svc: Services, viewer: Viewer, target_id: str, kind: TargetKind | None = None
) -> None:
    """Remove one of the viewer's targets (its pending deliveries fail: "removed")."""
    await _target(svc, viewer, target_id, kind)
    if not await svc.store.delete_target(target_id, _scope(viewer)):
        raise NotFound(f"no notification target {target_id}")


async def send_test(
    svc: Services, viewer: Viewer, target_id: str, kind: TargetKind | None = None
) -> Delivery:
    """Queue a ``test`` delivery to one of the viewer's targets; the delivery as written."""
    target = await _target(svc, viewer, target_id, kind)
    if target.disabled_at is not None:
        raise Conflict(f"{target_id} is disabled (its receiver said it is gone); add it again")
    now = svc.store.now()
    delivery = Delivery(
        id=delivery_id(new_nonce(), target.id),
        target_id=target.id,
        user_id=target.user_id,
        task_id=None,
        kind=TEST_KIND,
        payload=probe_payload(target, now),
        status=DeliveryStatus.PENDING.value,
        attempts=0,
        next_at=now,
        claimed_by=None,
        claim_until=None,
        last_error=None,
        last_status=None,
        created_at=now,
        delivered_at=None,
        pending_since=now,
    )
    await svc.store.insert_delivery(delivery)
    return delivery


async def set_ntfy(
    svc: Services, viewer: Viewer, url: str, token: str | None = None, events: Sequence[str] | None = None
) -> Target:
    """The viewer's ntfy topic (in place of the one they had): ``url`` the topic's URL,
    ``token`` its access token if it needs one (kept encrypted)."""
    if viewer.user_id is None:
        raise Forbidden("an ntfy topic belongs to a user")
    if token is not None and (not token.strip() or len(token) > TOKEN_CAP or not token.isprintable()):
        raise BadArguments(f"the ntfy access token must be 1 to {TOKEN_CAP} printable characters")
    chosen = _events(events)
    checked = await _checked_url(svc, url, "ntfy topic URL")
    token_enc = svc.secrets.encrypt(token.strip()) if token else None
    target = _new_target(TargetKind.NTFY, viewer.user_id, checked, token_enc, chosen, svc.store.now())
    await svc.store.add_target(target, replace=True)
    return target


async def remove_ntfy(svc: Services, viewer: Viewer) -> None:
    """Remove the viewer's ntfy topic (``NotFound`` when there is none)."""
    found = await list_targets(svc, viewer, TargetKind.NTFY)
    if not found:
        raise NotFound("no ntfy topic is set")
    for target in found:
        await svc.store.delete_target(target.id, _scope(viewer))


async def list_deliveries(
    svc: Services, viewer: Viewer, *, status: str | None = None, target_id: str | None = None, limit: int = 50
) -> list[Delivery]:
    """Deliveries to the viewer's targets (the control operator: all), newest first."""
    if status is not None and status not in {s.value for s in DeliveryStatus}:
        raise BadArguments(f"status must be one of {', '.join(s.value for s in DeliveryStatus)}")
    if not 1 <= limit <= 500:
        raise BadArguments("limit must be 1 to 500")
    if target_id is not None:
        await _target(svc, viewer, target_id)
    return await svc.store.list_deliveries(_scope(viewer), status=status, target_id=target_id, limit=limit)


async def redeliver(svc: Services, viewer: Viewer, delivery_id_: str) -> Delivery:
    """Send a delivered or failed delivery again, with the same id (receivers de-duplicate)."""
    delivery = await svc.store.get_delivery(delivery_id_)
    if delivery is None:
        raise NotFound(f"no delivery {delivery_id_}")
    await _target(svc, viewer, delivery.target_id)  # the viewer's, or NotFound
    again = await svc.store.redeliver(delivery_id_)
    if again is None:
        raise Conflict(f"delivery {delivery_id_} is still pending, or its target is disabled")
    return again
