"""The operator surface: the page at ``/admin`` and its JSON API under ``/admin/api/...``.

Unlike the phone API (design §5), which answers 404 for a task that is not the caller's so as
not to confirm it exists, this surface answers **403** to a signed-in non-operator: operators
see every task anyway, and a clear "not an operator" is what a person at the page needs.
Anonymous or bad tokens get the usual 401.

The page is static HTML + plain JS + CSS from ``static/`` (no build step, no CDN) under a strict
Content-Security-Policy: scripts and styles only from this origin, nothing inline. The token is
pasted by the operator, kept in ``sessionStorage`` and sent as ``Authorization: Bearer``; it
never appears in a URL. Live updates come over ``/admin/ws`` (see ``admin_live.py`` for why a
WebSocket of its own rather than SSE or the phone's ``/ws``).
"""

from __future__ import annotations

from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import trio
from pydantic import BaseModel, Field
from quart import Blueprint, Response, g
from quart_schema import hide, validate_querystring

from ..states import TaskStatus
from ..store import Task
from .admin_live import register_admin_ws
from .auth import require_user
from .routes import event_page
from .errors import ApiError

if TYPE_CHECKING:
    from .app import WebState

STATIC_DIR = Path(__file__).parent / "static"
# Only these files are served: a fixed list, so no path from a request reaches the filesystem.
STATIC_FILES = {
    "admin.js": "text/javascript; charset=utf-8",
    "admin.css": "text/css; charset=utf-8",
}

# 'self' in connect-src also allows ws:// and wss:// to this host (CSP level 3), which the live
# feed needs; everything else (inline script or style, eval, frames, forms, plugins) is refused.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",  # task data and a page that holds a token: never cached
}

NOT_OPERATOR = ApiError(
    403, "forbidden",
    "this token's user is not an operator; the admin page needs an operator's API token",
)
# What an operator may retry: finished tasks, and waiting ones to run them now. A queued or
# running task has nothing to retry (and requeueing a running one would race its attempt).
RETRYABLE = frozenset({
    TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED,
    TaskStatus.WAITING_RETRY, TaskStatus.WAITING_INPUT,
})


class AdminListQuery(BaseModel):
    status: TaskStatus | None = None
    user: str | None = Field(None, min_length=1, max_length=64)
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(None, pattern=r"^[0-9]{1,18}$")


class AdminEventsQuery(BaseModel):
    after: int = Field(0, ge=0)
    limit: int = Field(200, ge=1, le=1000)


def require_operator(state: "WebState") -> Callable:
    """Decorator: 401 without a live token, 403 unless its user is an operator."""
    authed = require_user(lambda: state.auth)

    def decorator(func: Callable) -> Callable:
        @wraps(func)
        async def check(*args: Any, **kwargs: Any) -> Any:
            if not g.user.is_operator:
                raise NOT_OPERATOR
            return await func(*args, **kwargs)

        return authed(check)

    return decorator


def admin_blueprint(state: "WebState", stop_requested: Any) -> Blueprint:
    """The page, its static files, the operator API and ``/admin/ws``.

    ``stop_requested`` is the daemon's stop event: live connections close (1001) when it is set,
    so they never hold up a drain.
    """
    bp = Blueprint("admin", __name__)
    operator = require_operator(state)

    @bp.after_request
    async def security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @bp.get("/admin")
    @hide
    async def page():
        body = await trio.to_thread.run_sync((STATIC_DIR / "admin.html").read_bytes)
        return Response(body, content_type="text/html; charset=utf-8")

    @bp.get("/admin/static/<name>")
    @hide
    async def static(name: str):
        content_type = STATIC_FILES.get(name)
        if content_type is None:
            raise ApiError(404, "not_found", f"no file {name}")
        body = await trio.to_thread.run_sync((STATIC_DIR / name).read_bytes)
        return Response(body, content_type=content_type)

    async def logins(tasks: list[Task]) -> dict[int, str]:
        """user id -> login for these tasks: one lookup per distinct user of the page."""
        found: dict[int, str] = {}
        for user_id in {task.user_id for task in tasks}:
            user = await state.store.user_by_id(user_id)
            found[user_id] = user.login if user is not None else f"#{user_id}"
        return found

    def row(task: Task, names: dict[int, str]) -> dict[str, Any]:
        return {**task.public(), "user_login": names.get(task.user_id, f"#{task.user_id}")}

    async def existing(task_id: str) -> Task:
        task = await state.store.get_task(task_id) if len(task_id) <= 64 else None
        if task is None:
            raise ApiError(404, "not_found", f"no task {task_id}")
        return task

    @bp.get("/admin/api/whoami")
    @operator
    async def whoami():
        """Who the token belongs to (the page's sign-in check)."""
        return {"login": g.user.login, "user_id": g.user.id, "is_operator": True}

    @bp.get("/admin/api/tasks")
    @operator
    @validate_querystring(AdminListQuery)
    async def list_all(query_args: AdminListQuery):
        """Every user's tasks, newest first; pass ``next_cursor`` as ``cursor`` for more."""
        user_id = None
        if query_args.user:
            user = await state.store.user_by_login(query_args.user)
            if user is None:
                raise ApiError(404, "not_found", f"no user {query_args.user}")
            user_id = user.id
        rows = await state.store.list_tasks(
            user_id=user_id, statuses=[query_args.status] if query_args.status else None,
            before=int(query_args.cursor) if query_args.cursor else None,
            limit=query_args.limit + 1,
        )
        more = len(rows) > query_args.limit
        rows = rows[:query_args.limit]
        names = await logins([task for _, task in rows])
        return {
            "tasks": [row(task, names) for _, task in rows],
            "next_cursor": str(rows[-1][0]) if more and rows else None,
        }

    @bp.get("/admin/api/tasks/<task_id>")
    @operator
    async def get_one(task_id: str):
        task = await existing(task_id)
        return row(task, await logins([task]))

    @bp.get("/admin/api/tasks/<task_id>/events")
    @operator
    @validate_querystring(AdminEventsQuery)
    async def events(task_id: str, query_args: AdminEventsQuery):
        """Stored events with seq > ``after``, in order; ``next_after`` is the next ``after``."""
        await existing(task_id)
        return await event_page(state.store, task_id, query_args.after, query_args.limit)

    @bp.post("/admin/api/tasks/<task_id>/cancel")
    @operator
    async def cancel(task_id: str):
        """Cancel any unfinished task (409 when it has finished)."""
        await existing(task_id)
        task = await state.supervisor.cancel(task_id)
        return row(task, await logins([task])), 202

    @bp.post("/admin/api/tasks/<task_id>/retry")
    @operator
    async def retry(task_id: str):
        """Queue a finished or waiting task again with fresh attempts (as ``agentctl retry``)."""
        task = await existing(task_id)
        if task.status not in RETRYABLE:
            raise ApiError(409, "conflict", f"a {task.status.value} task cannot be retried")
        # The supervisor's transition carries ``expect``: a status change since the read above
        # is refused there (409) rather than retried blindly.
        task = await state.supervisor.requeue(task_id, reason=f"retried by operator {g.user.login}",
                                              fresh_attempts=True)
        return row(task, await logins([task])), 202

    register_admin_ws(bp, state, stop_requested)
    return bp
