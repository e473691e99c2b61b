"""What other daemons commit, heard through PostgreSQL's LISTEN/NOTIFY.

Every event-writing transaction sends ``NOTIFY agentd_events`` (``postgres_changes``:
"<node> <task> <first seq> <last seq> <flags>"; a claim round sends its tasks' notices a few to
a payload, separated by ";"), delivered by PostgreSQL only on commit and in commit order. One
connection per daemon listens, on a worker thread (psycopg blocks), and hands the notices the
caller wants to the Trio thread, those of a few milliseconds together. Notices carry no event
data, only which seqs to read: a payload stays small (PostgreSQL caps it at 8000 bytes) and the
store stays the one truth. A revocation (``models.Revoked``: a share link, a token, a user cut
off) is a notice of its own on the same channel, "<node> revoked <kind> <user> <key>", sent by
``postgres_changes.tell_others``, so that every daemon closes what it opened at once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

import psycopg
import trio

from .models import RemoteNotice, Revoked

log = logging.getLogger(__name__)

CHANNEL = "agentd_events"
POLL_S = 0.1  # how soon the listening thread notices it should stop
# Notices arriving this soon after one are handed over with it. A thread woken for each one
# would contend for the GIL with the Trio thread a few thousand times a second under load.
COALESCE_S = 0.002
RECONNECT_S = 1.0

Notice = RemoteNotice | Revoked
OnNotices = Callable[[list[Notice] | None], None]


async def listen(
    dsn: str,
    own_node: str | None,
    on_notices: OnNotices,
    *,
    connect_timeout: float,
    wanted: Callable[[Notice], bool] = lambda notice: True,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen until cancelled, reconnecting after a lost connection.

    ``on_notices`` runs on the Trio thread with each batch of other nodes' notices that
    ``wanted`` accepts (asked on the listening thread), or with None when notices may have been
    missed (listening began again after a lost connection): the caller should then look at the
    store for what it follows. ``task_status.started()`` once the first LISTEN is in place (so
    nothing committed after that is missed).

    Cancellation: the listening thread is told to stop and is waited for (it notices within
    ``POLL_S``); its connection is closed as it exits and nothing more is delivered.
    """
    listening = False

    def deliver(batch: list[Notice] | None) -> None:
        nonlocal listening
        if batch is None and not listening:
            listening = True
            task_status.started()
            return
        on_notices(batch)

    while True:
        try:
            await _in_thread(dsn, own_node, deliver, connect_timeout, wanted)
        except psycopg.OperationalError as exc:
            if not listening:
                raise  # never listened: the caller's startup fails with the reason
            log.warning("lost the LISTEN connection (%s); reconnecting", str(exc).strip())
        await trio.sleep(RECONNECT_S)


async def _in_thread(
    dsn: str,
    own_node: str | None,
    deliver: OnNotices,
    connect_timeout: float,
    wanted: Callable[[Notice], bool],
) -> None:
    """Run one listening connection on a thread until it fails or we are cancelled."""
    stopped = threading.Event()

    def guarded(batch: list[Notice] | None) -> None:
        if not stopped.is_set():
            deliver(batch)

    async with trio.open_nursery() as nursery:

        async def stop_when_cancelled() -> None:
            try:
                await trio.sleep_forever()
            finally:
                stopped.set()

        nursery.start_soon(stop_when_cancelled)
        try:
            # Not abandoned: a cancel sets ``stopped`` (above) and waits the thread out, so no
            # thread outlives the caller.
            await trio.to_thread.run_sync(
                _listen_thread, dsn, own_node, guarded, stopped, connect_timeout, wanted
            )
        finally:
            nursery.cancel_scope.cancel()


def _listen_thread(
    dsn: str,
    own_node: str | None,
    deliver: OnNotices,
    stopped: threading.Event,
    connect_timeout: float,
    wanted: Callable[[Notice], bool],
) -> None:
    def to_trio(batch: list[Notice] | None) -> None:
        try:
            trio.from_thread.run_sync(deliver, batch)
        except trio.RunFinishedError:
            stopped.set()

    # libpq takes whole seconds.
    with psycopg.connect(dsn, autocommit=True, connect_timeout=math.ceil(connect_timeout)) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        to_trio(None)  # listening: ready (first time) or "you may have missed some" (again)
        while not stopped.is_set():
            notes = list(conn.notifies(timeout=POLL_S, stop_after=1))
            if notes:  # and those that follow it closely, with one wake-up of each thread
                time.sleep(COALESCE_S)
                notes += conn.notifies(timeout=0)
            batch: list[Notice] = []
            for note in notes:
                for part in note.payload.split(";"):
                    parsed = _parse(part)
                    if parsed is not None and parsed[0] != (own_node or "-") and wanted(parsed[1]):
                        batch.append(parsed[1])
            if batch and not stopped.is_set():
                to_trio(batch)


def _parse(part: str) -> tuple[str, Notice] | None:
    """The sending node and the notice of one part of a payload; None for what is neither."""
    revoked = Revoked.parse(part)
    if revoked is not None:
        return revoked
    notice = RemoteNotice.parse(part)
    return (notice.node, notice) if notice is not None else None
