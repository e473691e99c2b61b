"""Share links: a read-only, expiring, revocable token that shows one task to whoever holds it.

- Making, listing and revoking a task's links: whoever may see the task (its owner or an
  operator, ``policy``); anyone else is told the task does not exist. A share link's own
  viewer manages no links (``NotFound``), so a link cannot beget links.
- A link lives ``ttl_s`` seconds (default ``share_ttl_s``, at most ``share_max_ttl_s``); one
  task has at most ``share_links_per_task`` live links. Revoking is idempotent.
- The token is random (256 bits), shown once, stored only as its hash (``daemon.tokens``).
  ``resolve`` turns it into the ``Viewer`` of its one task; unknown, expired, revoked (or its
  maker disabled) are one and the same ``NotFound``, so nothing tells them apart.
- The holder reads as the task's owner reads (``policy.may_see`` lets a share viewer see that
  one task): the task, its events, its diff. It writes nothing: front-ends give it read routes
  only.

The control socket's operator has no account: a link it makes is recorded as made by the
task's owner.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import BadArguments, Conflict, NotFound
from ..store import Revoked
from ..store.share_queries import SHARE_ID_PREFIX, ShareLink
from ..tokens import hash_token
from . import policy
from .policy import TaskRef, Viewer

if TYPE_CHECKING:
    from ..services import Services
    from ..store import Task

SHARE_TOKEN_PREFIX = "agentd_share_"
MAX_TOKEN_CHARS = 512  # longer is no token: not looked up
GONE = "this share link is unknown, expired or revoked"


@dataclass(frozen=True)
class NewShare:
    """A link just made, and its token: shown this once, never stored."""

    link: ShareLink
    token: str


@dataclass(frozen=True)
class Shared:
    """What a share token opens: the link, and the viewer that reads its one task."""

    link: ShareLink
    viewer: Viewer


def client_url(base: str, token: str) -> str:
    """The web client's page of a link: ``base`` (``public_url``, or the address the owner
    used) and the token in the fragment, which no browser sends to a server or a Referer."""
    return base.rstrip("/") + "/#/s/" + token


def _not_shared(viewer: Viewer) -> None:
    # A link's holder sees the task but manages no links: that would outlive its own link.
    if viewer.shared_task is not None:
        raise NotFound("a share link cannot manage share links")


async def _managed_task(svc: Services, viewer: Viewer, ref: TaskRef) -> Task:
    _not_shared(viewer)
    return await policy.visible_task(svc.store, viewer, ref)


def lifetime(svc: Services, ttl_s: float | None) -> float:
    """The seconds a new link lives: ``ttl_s``, or the default; ``BadArguments`` outside
    (0, ``share_max_ttl_s``]."""
    settings = svc.settings
    longest = settings.share_max_ttl_s
    if ttl_s is None:
        return min(settings.share_ttl_s, longest)
    if not 0 < ttl_s <= longest:
        raise BadArguments(f"ttl_s must be more than 0 and at most {longest:g} seconds (share_max_ttl_s)")
    return ttl_s


async def create_share(
    svc: Services, viewer: Viewer, ref: TaskRef, *, ttl_s: float | None = None
) -> NewShare:
    """A new link to the task ``ref`` names, living ``lifetime(ttl_s)`` seconds.

    ``NotFound`` (not the viewer's task), ``BadArguments`` (ttl), ``Conflict`` (the task has
    ``share_links_per_task`` live links: revoke one first).
    """
    task = await _managed_task(svc, viewer, ref)
    seconds = lifetime(svc, ttl_s)
    token = SHARE_TOKEN_PREFIX + secrets.token_urlsafe(32)
    store = svc.store
    link = await store.add_share_link(
        task.id,
        viewer.user_id if viewer.user_id is not None else task.user_id,
        hash_token(token),
        expires_at=store.now() + seconds,
        live_cap=svc.settings.share_links_per_task,
    )
    if link is None:
        cap = svc.settings.share_links_per_task
        raise Conflict(
            f"task {task.id} has {cap} live share links already: revoke one first", code="too_many"
        )
    return NewShare(link, token)


async def list_shares(svc: Services, viewer: Viewer, ref: TaskRef) -> list[ShareLink]:
    """The task's links, live or not, oldest first (``NotFound``: not the viewer's task)."""
    task = await _managed_task(svc, viewer, ref)
    return await svc.store.list_share_links(task.id)


def _may_be_share_id(share_id: str) -> bool:
    return share_id.startswith(SHARE_ID_PREFIX) and len(share_id) <= 64 and share_id.isascii()


async def revoke_share(svc: Services, viewer: Viewer, ref: TaskRef | None, share_id: str) -> ShareLink:
    """Revoke the task's link ``share_id`` now (again: nothing changes); ``ref`` None: the
    task the link is of. ``NotFound``: not the viewer's task, or no such link of it.

    Once stored, the revocation is announced (``Services.announce_revoked``, each time, so a
    repeat closes a straggler too): the web side closes the link's open WebSockets at once, on
    this daemon whichever front-end revoked it and on every other daemon sharing the store.
    Cancellation while the store writes: the revocation may be stored without the
    announcement; the token re-check (``ws_reauth_interval_s``) then closes those WebSockets."""
    if ref is None:  # named by the link alone: one answer for none and another's
        found = await svc.store.share_link(share_id) if _may_be_share_id(share_id) else None
        _not_shared(viewer)
        try:
            task = await policy.visible_task(svc.store, viewer, found.task_id if found else "")
        except NotFound:
            raise NotFound(f"no share link {share_id[:64]}") from None
    else:
        task = await _managed_task(svc, viewer, ref)
    link = await svc.store.revoke_share_link(task.id, share_id) if _may_be_share_id(share_id) else None
    if link is None:
        raise NotFound(f"task {task.id} has no share link {share_id[:64]}")
    await svc.announce_revoked(Revoked("share", link.id, link.user_id))
    return link


async def resolve(svc: Services, token: str | None) -> Shared:
    """The live link ``token`` opens and the viewer of its one task; else ``NotFound`` (one
    answer for unknown, expired, revoked, or its maker disabled)."""
    if not token or len(token) > MAX_TOKEN_CHARS or not token.startswith(SHARE_TOKEN_PREFIX):
        raise NotFound(GONE)
    link = await svc.store.share_link_by_token_hash(hash_token(token))
    if link is None:
        raise NotFound(GONE)
    return Shared(link, Viewer.shared(link.task_id))
