"""The operator surface: its JSON API under ``/admin/api/...``, and ``/admin``, which sends a
browser to the web client's operator view (``/#/ops``, ``static/app/``: one operator UI).

Unlike the phone API (design §5), which answers 404 for a task that is not the caller's so as
not to confirm it exists, this surface answers **403** to a signed-in non-operator: operators
see every task anyway, and a clear "not an operator" is what a person at the page needs.
Anonymous or bad tokens get the usual 401. A task in a path may be named by the start of its id,
as with agentctl (``usecases.IdPrefix``); the phone API takes whole ids only, which is what its
clients hold, and a URL that names one task today names it tomorrow.

Every answer here carries ``SECURITY_HEADERS``, whose Content-Security-Policy (scripts and
styles only from this origin, nothing inline) the web client's files are served under too
(``client.py``). Live updates come over ``/ws``, where an operator may follow any task and
``subscribe_tasks`` gets every user's status events (``session.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from pydantic import Field
from quart import Blueprint, g, redirect
from quart.typing import ResponseReturnValue
from quart_schema import hide, validate_querystring

from .. import usecases
from ..store import Task
from ..usecases import IdPrefix
from .auth import require_user, services, viewer
from .errors import ApiError
from .headers import SECURITY_HEADERS, send_with
from .routes import EventsQuery, ListQuery, event_page

P = ParamSpec("P")
R = TypeVar("R")

OPERATOR_VIEW = "/#/ops"  # the web client's route (static/app/app.js)
NOT_OPERATOR = ApiError(
    403,
    "forbidden",
    "this token's user is not an operator; the operator view needs an operator's API token",
)


class AdminListQuery(ListQuery):
    user: str | None = Field(None, min_length=1, max_length=64, description="Only this login's tasks.")


def operator_only(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Decorator: 401 without a live token, 403 unless its user is an operator."""

    @wraps(func)
    async def check(*args: P.args, **kwargs: P.kwargs) -> R:
        if not g.user.is_operator:
            raise NOT_OPERATOR
        return await func(*args, **kwargs)

    return require_user(check)


bp = Blueprint("admin", __name__)
send_with(bp, SECURITY_HEADERS)


@bp.get("/admin")
@hide
async def page() -> ResponseReturnValue:
    """Where operators' links and bookmarks of the old page go: the app's operator view."""
    return redirect(OPERATOR_VIEW, 302)


async def rows(tasks: list[Task]) -> list[dict[str, Any]]:
    """Tasks as the page shows them: with their owner's login."""
    return await usecases.with_owner_logins(services(), tasks)


@bp.get("/admin/api/whoami")
@operator_only
async def whoami() -> ResponseReturnValue:
    """Who the token belongs to.

    The page's sign-in check: 403 for a token whose user is not an operator.
    """
    return {"login": g.user.login, "user_id": g.user.id, "is_operator": True}


@bp.get("/admin/api/tasks")
@operator_only
@validate_querystring(AdminListQuery)
async def list_all(query_args: AdminListQuery) -> ResponseReturnValue:
    """Every user's tasks, newest first.

    Pass ``next_cursor`` as ``cursor`` for more.
    """
    page = await usecases.list_tasks(
        services(),
        viewer(),
        status=query_args.status,
        owner=query_args.user,
        limit=query_args.limit,
        cursor=query_args.cursor,
    )
    return {"tasks": await rows(page.tasks), "next_cursor": page.next_cursor}


@bp.get("/admin/api/tasks/<task_id>")
@operator_only
async def get_one(task_id: str) -> ResponseReturnValue:
    """Any task.

    With its owner's login.
    """
    return (await rows([await usecases.get_task(services(), viewer(), IdPrefix(task_id))]))[0]


@bp.post("/admin/api/tasks/<task_id>/cancel")
@operator_only
async def cancel(task_id: str) -> ResponseReturnValue:
    """Cancel any task.

    One that has not finished (409 when it has).
    """
    return (await rows([await usecases.cancel_task(services(), viewer(), IdPrefix(task_id))]))[0], 202


@bp.post("/admin/api/tasks/<task_id>/retry")
@operator_only
async def retry(task_id: str) -> ResponseReturnValue:
    """Queue a task again with fresh attempts (as ``agentctl retry``).

    One that failed, was cancelled or waits; 409 for a queued, running or succeeded one.
    """
    return (await rows([await usecases.retry_task(services(), viewer(), IdPrefix(task_id))]))[0], 202


@bp.get("/admin/api/tasks/<task_id>/events")
@operator_only
@validate_querystring(EventsQuery)
async def events(task_id: str, query_args: EventsQuery) -> ResponseReturnValue:
    """Any task's stored events.

    In order; page with ``after``, given the ``next_after`` of the page before.
    """
    return await event_page(IdPrefix(task_id), query_args)
