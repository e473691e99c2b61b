"""Who is calling: bearer API tokens, resolved into ``g.user`` and a use-case ``Viewer``; or a
share link's token (``Authorization: Share <token>``), resolved into ``g.shared``.

Tokens are random (``daemon.tokens``), stored only as a SHA-256 hash, with an expiry, and
revocable; every check goes to the store, so a revocation or an expiry takes effect on the next
request (and on open WebSockets at their next re-check, see ``ws.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import TYPE_CHECKING, ParamSpec, TypeVar, cast

from quart import current_app, g, request

from ..errors import NotFound
from ..services import Services
from ..store import Store, User
from ..tokens import hash_token
from ..usecases import Viewer, shares
from ..usecases.shares import Shared
from .errors import ApiError

if TYPE_CHECKING:
    from .app import WebState

P = ParamSpec("P")
R = TypeVar("R")


def bearer_token(header: str | None, scheme: str = "bearer") -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (or of another ``scheme``),
    or None."""
    if not header:
        return None
    given, _, token = header.partition(" ")
    if given.lower() != scheme or not token.strip():
        return None
    return token.strip()


def share_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Share <token>`` header (a share link's), or None."""
    return bearer_token(header, "share")


class Authenticator:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def user_for(self, token: str | None) -> User | None:
        """The user owning this live token (not expired, not revoked, user enabled), or None."""
        if not token or len(token) > 512:
            return None
        return await self._store.user_by_token_hash(hash_token(token))


UNAUTHORIZED = ApiError(
    401,
    "unauthorized",
    "missing, invalid, expired or revoked API token",
    headers={"WWW-Authenticate": 'Bearer realm="agentd"'},
)


def web_state() -> WebState:
    """The serving app's shared state (``create_app`` keeps it in ``app.extensions``)."""
    return cast("WebState", current_app.extensions["agentd"])


def services() -> Services:
    """The daemon's services, for the request being handled."""
    return web_state().services


def viewer() -> Viewer:
    """The caller, as the use cases see it (after ``require_user``)."""
    return Viewer.of(g.user)


def require_user(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Decorator: resolve the bearer token into ``g.user`` or answer 401."""

    @wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        token = bearer_token(request.headers.get("Authorization"))
        user = await web_state().auth.user_for(token)
        if user is None:
            raise UNAUTHORIZED
        g.user = user
        return await func(*args, **kwargs)

    return wrapper


SHARE_GONE = ApiError(
    401,
    "share_link_gone",
    "this share link is unknown, expired or revoked: ask its owner for a new one",
    headers={"WWW-Authenticate": 'Share realm="agentd"'},
)


async def shared_for(svc: Services, token: str | None) -> Shared | None:
    """What the share token opens (``usecases.shares.resolve``), or None."""
    try:
        return await shares.resolve(svc, token)
    except NotFound:
        return None


def require_share(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Decorator: resolve the ``Authorization: Share`` token into ``g.shared`` or answer 401
    (``share_link_gone``: one answer for unknown, expired and revoked)."""

    @wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        shared = await shared_for(services(), share_token(request.headers.get("Authorization")))
        if shared is None:
            raise SHARE_GONE
        g.shared = shared
        return await func(*args, **kwargs)

    return wrapper
