"""Housekeeping: workspaces are kept for a while after their task ends, then removed; values
the store keeps for a short while (sign-ins in progress, one-time codes) go once expired."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import trio

from .git import gc_workspaces
from .store import Store

log = logging.getLogger(__name__)

GC_INTERVAL_S = 3600.0


async def collect_workspaces(
    store: Store, root: Path, keep_days: float, *, now: float | None = None
) -> list[str]:
    """Remove the workspaces of tasks that ended more than ``keep_days`` ago (and orphans).

    A task that is not finished keeps its workspace whatever its age: it may resume.
    Cancellation: the directory being removed is finished; the others stay.
    """
    now = time.time() if now is None else now
    cutoff = now - keep_days * 86400

    async def keep(task_id: str) -> bool:
        task = await store.get_task(task_id)
        if task is None:
            return False  # no task owns it: an orphan, removed
        return not task.status.is_terminal or (task.finished_at or now) > cutoff

    removed = await gc_workspaces(root, keep)
    if removed:
        log.info("removed %d workspaces", len(removed))
    return removed


async def forget_expired(store: Store) -> int:
    """Delete the expired values the store keeps to be taken once (GitHub sign-ins never
    finished, one-time codes never redeemed); how many. Each new one deletes them too: this is
    for a store nobody signs in through for a while."""
    forgotten = await store.purge_one_time()
    if forgotten:
        log.info("forgot %d expired sign-ins and one-time codes", forgotten)
    return forgotten


async def collect_periodically(
    store: Store, root: Path, keep_days: float, interval_s: float = GC_INTERVAL_S
) -> None:
    """Run ``collect_workspaces`` and ``forget_expired`` every ``interval_s`` until cancelled.

    Cancellation: as ``collect_workspaces``'s; a store write under way is finished.
    """
    jobs = {
        "workspace gc": lambda: collect_workspaces(store, root, keep_days),
        "forgetting expired sign-ins": lambda: forget_expired(store),
    }
    while True:
        for name, job in jobs.items():
            try:
                await job()
            except Exception as exc:  # one bad directory or a store hiccup must not stop the daemon
                log.warning("%s failed: %s", name, exc, exc_info=exc)
        await trio.sleep(interval_s)
