"""``/ws``: the thin Trio glue between Quart's WebSocket and ``session.Session``.

Per connection: the handler reads and feeds ``Session.handle``; one writer task sends the
session's queue in order (one hop per connection, none per subscriber); a ticker re-checks the
token so a revocation or expiry closes the socket (4401) within ``ws_reauth_interval_s``;
without an Authorization header, the first message must be ``auth`` within
``ws_auth_timeout_s``. Protocol pings and dead-peer detection are Hypercorn's: it pings every
``ws_ping_interval_s`` and drops a connection that sends nothing (not even a pong) for
``read_timeout`` (see ``app.hypercorn_config``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from quart import Quart, websocket

from .auth import bearer_token
from .session import CLOSE_AUTH_FAILED, CLOSE_GOING_AWAY, CLOSE_INTERNAL, Session, State

if TYPE_CHECKING:
    from .app import WebState


def register_ws(app: Quart, state: "WebState") -> None:
    settings = state.settings

    @app.websocket("/ws")
    async def ws() -> None:
        """One client connection.

        Cancellation (the client went away, or the server stops): the subscriptions are
        dropped from the fan-out in ``finally``; nothing else is held.
        """
        await websocket.accept()
        token = bearer_token(websocket.headers.get("Authorization"))
        session: Session | None = None
        try:
            async with trio.open_nursery() as nursery:
                session = Session(
                    fanout=state.fanout, store=state.store, spawn=nursery.start_soon,
                    authenticate=state.auth.user_for, limiter=state.subscribe_limiter,
                    queue_limit=settings.ws_queue_limit,
                    max_subscriptions=settings.ws_max_subscriptions,
                )
                state.sessions[session] = None
                if state.going_away:
                    session.close(CLOSE_GOING_AWAY, "server draining")
                # Header auth completes before the first message is read.
                if token is not None:
                    await session.open(token)
                else:
                    nursery.start_soon(_auth_deadline, session, settings.ws_auth_timeout_s)
                nursery.start_soon(_writer, session)
                nursery.start_soon(_reader, session)
                nursery.start_soon(_ticker, session, settings.ws_reauth_interval_s)
                await session.closed.wait()
                nursery.cancel_scope.cancel()
        except Exception:
            if session is not None:
                session.close(CLOSE_INTERNAL, "internal error")
            raise
        finally:
            if session is not None:
                state.sessions.pop(session, None)
                session.close(session.close_code or CLOSE_GOING_AWAY, session.close_reason)
        # A peer that stopped reading must not hold us here: the close frame gets a deadline.
        with trio.move_on_after(settings.ws_ping_timeout_s):
            await websocket.close(session.close_code or CLOSE_GOING_AWAY, session.close_reason)


async def _reader(session: Session) -> None:
    while session.state is not State.CLOSED:
        await session.handle(await websocket.receive())


async def _writer(session: Session) -> None:
    """Send the queue in order; each item's text was encoded once, when it was queued."""
    send = websocket.send
    queue = session.queue
    while True:
        if not queue:
            await session.wait_ready()
            if session.state is State.CLOSED:
                return
            continue
        item = queue.popleft()
        session.popped()
        await send(session.text_of(item))
        session.sent(item)


async def _ticker(session: Session, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        await session.recheck()


async def _auth_deadline(session: Session, timeout: float) -> None:
    await trio.sleep(timeout)
    if session.state is State.AWAITING_AUTH:
        session.close(CLOSE_AUTH_FAILED, "no auth message in time")
