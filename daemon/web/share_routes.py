"""Share links over HTTP (``usecases.shares``): parse, call one use case, render.

The task's owner (or an operator), with a bearer token: ``POST /api/tasks/{id}/shares`` makes a
link (201: its token, shown once, and the client URL ``<public_url or origin>/#/s/<token>``: in
the fragment, so the token never reaches a server log or a Referer), ``GET`` lists them,
``DELETE .../shares/{share_id}`` revokes one (204, again too) and closes its open ``/ws``
connections (4401). Anyone else is told the task does not exist (404).

Whoever holds the token reads the one task with ``Authorization: Share <token>`` (never in a
query string): ``GET /api/shared/task``, ``/api/shared/events``, ``/api/shared/diff``, and
``/ws`` with ``{"type":"auth","share":...}``. What they see is what the owner sees of the
task: its prompt, status, events (agent text, tool calls and results) and diff; nothing of
any other task, and no list. Nothing else answers to a share token: every other route wants a
bearer token (401). An unknown, expired or revoked share token is 401 ``share_link_gone``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt
from quart import Blueprint, g, request
from quart.typing import ResponseReturnValue
from quart_schema import security_scheme, validate_querystring, validate_request, validate_response

from .. import usecases
from ..store.share_queries import ShareLink
from ..usecases import shares
from .auth import require_share, require_user, services, viewer
from .routes import EventPage, EventsQuery, TaskDiff, TaskOut, event_page, render_patch

# -- shapes ------------------------------------------------------------------------------------


class CreateShare(BaseModel):
    """A new share link; ``{}`` for the default lifetime."""

    model_config = ConfigDict(extra="forbid")
    ttl_s: StrictFloat | StrictInt | None = Field(
        None,
        gt=0,
        le=1e12,
        allow_inf_nan=False,
        description="Seconds the link lives (default share_ttl_s; at most share_max_ttl_s, else 422).",
    )


class ShareOut(BaseModel):
    """A share link as its task's owner sees it (never its token)."""

    id: str = Field(description="The link's id (sh_...).")
    task_id: str = Field(description="The task it shows.")
    user_id: int = Field(description="Who made it.")
    created_at: float = Field(description="When it was made (Unix time).")
    expires_at: float = Field(description="When it stops working (Unix time).")
    revoked_at: float | None = Field(description="When it was revoked (Unix time); null: not revoked.")
    live: bool = Field(description="Whether it works now: neither revoked nor expired.")


class NewShareOut(ShareOut):
    """A link just made, with its token: shown this once, never again."""

    token: str = Field(description="The token; send it as Authorization: Share <token>.")
    url: str = Field(description="The web client's page of the task: <public_url or origin>/#/s/<token>.")


class ShareList(BaseModel):
    """The task's share links, live or not, oldest first."""

    shares: list[ShareOut] = Field(description="The links.")


def _link_json(link: ShareLink) -> dict[str, Any]:
    return link.public(services().store.now())


def share_url(token: str) -> str:
    """The web client's share page: the token in the fragment, which no browser sends."""
    return shares.client_url(services().settings.public_url or request.host_url, token)


# -- the owner's routes ---------------------------------------------------------------------------

bp = Blueprint("shares", __name__)


@bp.post("/api/tasks/<task_id>/shares")
@require_user
@validate_request(CreateShare)
@validate_response(NewShareOut, 201)
async def create_share(task_id: str, data: CreateShare) -> ResponseReturnValue:
    """Share a task: a read-only, expiring, revocable link.

    The token is in the answer this once. 404 when the task is not the caller's, 422 for a
    ttl_s above share_max_ttl_s, 409 when the task has share_links_per_task live links.
    """
    made = await shares.create_share(services(), viewer(), task_id, ttl_s=data.ttl_s)
    return {**_link_json(made.link), "token": made.token, "url": share_url(made.token)}, 201


@bp.get("/api/tasks/<task_id>/shares")
@require_user
@validate_response(ShareList)
async def list_shares(task_id: str) -> ResponseReturnValue:
    """The task's share links.

    Live or not, oldest first; never their tokens. 404 when the task is not the caller's.
    """
    links = await shares.list_shares(services(), viewer(), task_id)
    return {"shares": [_link_json(link) for link in links]}


@bp.delete("/api/tasks/<task_id>/shares/<share_id>")
@require_user
async def revoke_share(task_id: str, share_id: str) -> ResponseReturnValue:
    """Revoke a share link.

    204, again too; its open WebSockets are closed (4401) and its token is refused from now
    on. 404 when the task is not the caller's or has no such link.
    """
    await shares.revoke_share(services(), viewer(), task_id, share_id)  # closes its /ws too
    return "", 204


# -- what the token opens -------------------------------------------------------------------------


def _shared() -> shares.Shared:
    shared: shares.Shared = g.shared
    return shared


@bp.get("/api/shared/task")
@require_share
@security_scheme([{"share": []}])
@validate_response(TaskOut)
async def shared_task() -> ResponseReturnValue:
    """The shared task (Authorization: Share <token>).

    As its owner sees it (GET /api/tasks/{id}). 401 share_link_gone when the link is unknown,
    expired or revoked.
    """
    shared = _shared()
    return (await usecases.get_task(services(), shared.viewer, shared.link.task_id)).public()


@bp.get("/api/shared/events")
@require_share
@security_scheme([{"share": []}])
@validate_querystring(EventsQuery)
@validate_response(EventPage)
async def shared_events(query_args: EventsQuery) -> ResponseReturnValue:
    """The shared task's stored events (Authorization: Share <token>).

    Those with seq > after, in order; next_after is the next after. 401 share_link_gone when
    the link is unknown, expired or revoked.
    """
    shared = _shared()
    return await event_page(shared.link.task_id, query_args, shared.viewer)


@bp.get("/api/shared/diff")
@require_share
@security_scheme([{"share": []}])
@validate_response(TaskDiff)
async def shared_diff() -> ResponseReturnValue:
    """The shared task's pushed diff (Authorization: Share <token>).

    As GET /api/tasks/{id}/diff shows it to the owner; 404 while it has pushed nothing. 401
    share_link_gone when the link is unknown, expired or revoked.
    """
    shared = _shared()
    return render_patch(await usecases.task_patch(services(), shared.viewer, shared.link.task_id))
