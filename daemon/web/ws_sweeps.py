"""The two sweeps that serve every ``/ws`` connection (``ws.py``), until cancelled.

Every ``ws_ping_interval_s`` each connection is pinged, and one that sent nothing (not even a
pong) for the interval plus ``ws_ping_timeout_s`` is dropped. Every ``ws_reauth_interval_s`` each
distinct token of an open session is read once and its sessions told what was found
(``Session.reauthorized``; a share link's, ``ShareAccess.reshared``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio

from .auth import shared_for
from .session import Session, State

if TYPE_CHECKING:
    from .app import WebState

SWEEP_BATCH = 200  # connections pinged at once


async def sweep(state: WebState) -> None:
    """Pings, dead-peer drops and token re-checks for every connection, until cancelled
    (Cancellation: the sweeps stop; connections stay as they are)."""
    settings = state.settings
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ping_all, state, settings.ws_ping_interval_s, settings.ws_ping_timeout_s)
        nursery.start_soon(recheck_tokens, state, settings.ws_reauth_interval_s)


async def ping_all(state: WebState, interval: float, timeout: float) -> None:
    """Ping each connection once per ``interval``, or drop it if it sent nothing for ``interval``
    plus ``timeout`` (a dead peer goes within one more interval). The connections are taken in
    batches spread over the interval, so neither the pings nor the pongs come all at once."""
    while True:
        start = trio.current_time()
        conns = list(state.sessions.values())
        batches = max(1, math.ceil(len(conns) / SWEEP_BATCH))
        for k in range(batches):
            await trio.sleep_until(start + interval * (k + 1) / batches)
            silent_since = trio.current_time() - interval - timeout
            for conn in conns[k * SWEEP_BATCH : (k + 1) * SWEEP_BATCH]:
                if conn.last_heard < silent_since:
                    conn.abort()
                else:
                    conn.ping()


async def recheck_tokens(state: WebState, interval: float) -> None:
    """Each distinct token of an open session once per ``interval`` (one store read per token,
    not one per connection), its sessions told the user found (``Session.reauthorized``); a
    share link's token likewise (``ShareAccess.reshared``). Revocations close at once on every
    daemon (``revocations``); this is the backstop for one whose announcement was lost, and
    for expiries (a share link's has its own timer)."""
    while True:
        await trio.sleep(interval)
        by_token: dict[str, list[Session]] = {}
        by_share: dict[str, list[Session]] = {}
        for session in state.sessions:
            if session.state is State.OPEN and session.token is not None:
                by_token.setdefault(session.token, []).append(session)
            elif session.state is State.OPEN and session.shares.token is not None:
                by_share.setdefault(session.shares.token, []).append(session)
        for token, sessions in by_token.items():
            user = await state.auth.user_for(token)
            for session in sessions:
                session.reauthorized(user)
        for token, sessions in by_share.items():
            shared = await shared_for(state.services, token)
            for session in sessions:
                session.shares.reshared(shared)
