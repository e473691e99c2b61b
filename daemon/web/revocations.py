"""Closing the ``/ws`` sessions a revocation cuts off, at once: the web side's listener on
``Services.revoked``.

What is revoked (``store.Revoked``) reaches every daemon sharing the store at once: on the one
that revoked it through ``Services.announce_revoked``, on the others through the store's change
feed (``remote_events``). Each closes its own sessions with 4401:

- a share link: the sessions opened with it (``share_session.close_revoked``);
- an API token (a sign-out): the sessions opened with that token, the user's other ones stay;
- a user (``agentctl user-revoke``): every session of the user, and those of the share links
  the user made (a disabled maker's links stop working).

The periodic re-check (``ws_sweeps.recheck_tokens``) stays the backstop for a revocation whose
announcement was lost (the revoking daemon died or was cancelled between its write and it).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..store import Revoked
from ..tokens import hash_token
from .session import Session, State
from .share_session import close_revoked


def close_cut(sessions: Iterable[Session], revoked: Revoked) -> None:
    """Close (4401) each of ``sessions`` that ``revoked`` cuts off (see the module docstring).
    On the Trio thread; never blocks: only open sessions of ``revoked.user_id`` are looked at
    further (a token's hash is taken for those alone)."""
    if revoked.kind == "share":
        close_revoked(sessions, revoked.key)
        return
    for session in list(sessions):
        if session.state is not State.OPEN:
            continue
        link = session.shares.link
        if session.user is not None and session.user.id == revoked.user_id:
            if revoked.kind == "user" or (
                session.token is not None and hash_token(session.token) == revoked.key
            ):
                session.reauthorized(None)
        elif link is not None and revoked.kind == "user" and link.user_id == revoked.user_id:
            session.shares.reshared(None)
