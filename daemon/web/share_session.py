"""A share link's ``/ws`` connection, without the socket: the share half of ``session.Session``.

A session opened with a share link's token (``{"type":"auth","share":...}``, or the upgrade's
``Authorization: Share``) reads as the link's viewer (``usecases.shares.resolve``): it may
follow the link's one task (``policy.may_see``; any other is ``not_found``, as a task that does
not exist), is refused ``subscribe_tasks`` (``not_allowed``: a link shows one task, not a
list), and counts, and is rate limited, as a connection of the link's maker. It closes with
4401 when the link expires (a timer on the store's clock) and when it is revoked, at once on
every daemon sharing the store (``revoked``, told through ``Services.revoked`` whichever
front-end or daemon revoked it: ``revocations.close_cut``); the next re-check
(``ws_sweeps.recheck_tokens``: ``reshared``) closes it if that announcement was lost.

The contract: one ``ShareAccess`` per session (``Session.shares``), driven by it on the Trio
thread, reaching the session only through ``ShareHost`` (``enter`` to open it, ``close``,
``error``, ``spawn``); ``close_revoked`` tells a daemon's sessions of a revocation. Nothing here
does I/O: ``resolve`` and the clock are handed in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ..store.share_queries import ShareLink
from ..usecases.policy import Viewer
from ..usecases.shares import Shared
from .ws_protocol import CloseCode

if TYPE_CHECKING:
    from .session import Session

SHARE_GONE = "share link unknown, expired or revoked"
ResolveShare = Callable[[str | None], Awaitable[Shared | None]]


class Clock(Protocol):
    def now(self) -> float:
        """The store's wall clock (Unix time), read when needed: a test may move it."""
        ...


class ShareHost(Protocol):
    """What a ``ShareAccess`` needs of its session (``session.Session`` is one)."""

    spawn: Callable[..., None]  # a background coroutine, ended with the connection

    def enter(self, account: int, viewer: Viewer) -> bool:
        """Open the session as ``viewer``, counted against ``account``; False if refused
        (closed meanwhile, or closed now with 4429 at ``account``'s connection cap)."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Close the session (nothing happens if it is closed already)."""
        ...

    def error(self, code: str, message: str, task_id: str | None = None, **extra: Any) -> None:
        """Queue an ``error`` message."""
        ...


class ShareAccess:
    """The share link a session was opened with (``link``, ``token``; None for any other
    session), and the rules that come with it. ``resolve`` maps a share token to what it
    opens (None: unknown, expired or revoked; None itself: no share links at all), ``clock``
    the store's clock."""

    __slots__ = ("clock", "host", "link", "resolve", "token")

    def __init__(self, host: ShareHost, resolve: ResolveShare | None, clock: Clock) -> None:
        self.host, self.resolve, self.clock = host, resolve, clock
        self.link: ShareLink | None = None
        self.token: str | None = None

    async def login(self, token: str | None) -> None:
        """Open the session with the link ``token`` opens, and start its expiry timer; else
        close it with 4401 (or 4429: ``ShareHost.enter``)."""
        shared = await self.resolve(token) if self.resolve is not None else None
        if shared is None:
            self.host.close(CloseCode.AUTH_FAILED, SHARE_GONE)
        elif self.host.enter(shared.link.user_id, shared.viewer):
            self.link, self.token = shared.link, token
            self.host.spawn(self._expire, shared.link)

    async def _expire(self, link: ShareLink) -> None:
        """Close the session (4401) when ``link`` expires, by the store's clock.

        Cancellation (the connection ended first): nothing to do.
        """
        await trio.sleep(max(0.0, link.expires_at - self.clock.now()))
        if self.link is link:
            self.host.close(CloseCode.AUTH_FAILED, "share link expired")

    async def recheck(self) -> bool:
        """Read the link again and apply ``reshared``; False (nothing read) for a session not
        opened with a share link."""
        if self.link is None:
            return False
        self.reshared(await self.resolve(self.token) if self.resolve is not None else None)
        return True

    def reshared(self, shared: Shared | None) -> None:
        """The link as just read again (here or by the glue's sweep): None (revoked, expired)
        closes the session with 4401."""
        if self.link is not None and shared is None:
            self.host.close(CloseCode.AUTH_FAILED, SHARE_GONE)

    def revoked(self, share_id: str) -> None:
        """The link ``share_id`` was just revoked (on any daemon sharing the store): closes
        the session with 4401 if it was opened with that link."""
        if self.link is not None and self.link.id == share_id:
            self.host.close(CloseCode.AUTH_FAILED, "share link revoked")

    def refuses_watch(self) -> bool:
        """True, with a ``not_allowed`` error queued, for a share link's session: it follows its
        one task, and gets no task list (``subscribe_tasks``)."""
        if self.link is None:
            return False
        self.host.error("not_allowed", "a share link's connection follows its one task only")
        return True


def close_revoked(sessions: Iterable[Session], share_id: str) -> None:
    """Close (4401) each of ``sessions`` opened with the link ``share_id``: the web side's
    share part of ``revocations.close_cut``, the listener on ``Services.revoked``."""
    for session in list(sessions):
        session.shares.revoked(share_id)
