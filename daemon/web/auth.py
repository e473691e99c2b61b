"""Who is calling: bearer API tokens, resolved into ``g.user`` and a use-case ``Viewer``.

Tokens are random (``daemon.tokens``), stored only as a SHA-256 hash, with an expiry, and
revocable; every check goes to the store, so a revocation or an expiry takes effect on the next
request (and on open WebSockets at their next re-check, see ``ws.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import TYPE_CHECKING, ParamSpec, TypeVar, cast

from quart import current_app, g, request

from ..services import Services
from ..store import Store, User
from ..tokens import hash_token
from ..usecases import Viewer
from .errors import ApiError

if TYPE_CHECKING:
    from .app import WebState

P = ParamSpec("P")
R = TypeVar("R")


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


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
