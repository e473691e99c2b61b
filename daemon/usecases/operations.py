"""What an operator does with the daemon itself: look at it, drain and resume admission, change
the concurrency limit, back the store up, collect old workspaces, compact the store, rotate the
secret keys."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from .. import __version__
from ..errors import BadArguments
from ..key_rotation import rotate_keys as _rotate_keys
from ..maintenance import collect_workspaces
from ..retention import run_retention
from ..states import TaskStatus

if TYPE_CHECKING:
    from ..services import Runtime, Services


async def daemon_status(svc: Services, runtime: Runtime) -> dict[str, Any]:
    """The daemon at a glance: version, phase, uptime, admission and its counts, the task
    counts of the whole store, the database, the HTTP addresses, the model, the nodes."""
    store = svc.store
    counts = await store.count_by_status()
    return {
        "version": __version__,
        "pid": os.getpid(),
        "phase": runtime.phase,
        "uptime_s": round(time.time() - runtime.started_at, 1),
        **svc.supervisor.stats(),
        # Waiting to run anywhere (on a shared store, the whole cluster's queue).
        "queued": counts.get(TaskStatus.QUEUED.value, 0),
        "tasks": {status.value: counts.get(status.value, 0) for status in TaskStatus},
        "db_path": str(store.path),
        "db_size_bytes": await trio.to_thread.run_sync(store.size_bytes),  # SQLite: stat()s its files
        "http": runtime.http_urls,
        "model": svc.settings.model_name,
        # The whole cluster as the store knows it (one node on SQLite).
        "nodes": [node.public(store.now()) for node in await store.list_nodes()],
    }


def drain(svc: Services) -> dict[str, Any]:
    """Stop admitting tasks (running ones go on); returns the supervisor's counts."""
    svc.supervisor.drain()
    return svc.supervisor.stats()


def resume(svc: Services) -> dict[str, Any]:
    """Admit tasks again; returns the supervisor's counts."""
    svc.supervisor.resume()
    return svc.supervisor.stats()


def set_concurrency(svc: Services, limit: int) -> dict[str, Any]:
    """Run at most ``limit`` (>= 1) tasks at once from now on; lowering it cancels nothing."""
    if limit < 1:
        raise BadArguments(f"concurrency must be a whole number >= 1, got {limit}")
    svc.supervisor.set_concurrency(limit)
    return svc.supervisor.stats()


async def backup(svc: Services, path: Path) -> int:
    """Write a consistent copy of the store to ``path`` (absolute, not there yet); returns its
    size in bytes. ``BadArguments`` naming the path and why when it cannot be written; the
    store's own error when it cannot back up (PostgreSQL)."""
    if not path.is_absolute():
        raise BadArguments(f"backup needs an absolute path, got {str(path)!r}")
    try:
        await svc.store.backup(path)
        size = (await trio.Path(path).stat()).st_size
    except OSError as exc:
        raise BadArguments(f"cannot back up to {path}: {_unwritable(exc, path)}") from None
    return size


def _unwritable(exc: OSError, path: Path) -> str:
    """Why ``path`` could not be written, and what to do, for the operator."""
    if isinstance(exc, FileExistsError):
        return "something is there already (a backup never overwrites): give a new file name"
    if isinstance(exc, FileNotFoundError):
        return f"there is no directory {path.parent}"
    if isinstance(exc, PermissionError):
        return f"permission denied: the daemon's user may not write in {path.parent}"
    return exc.strerror or str(exc)


async def gc(svc: Services) -> list[str]:
    """Remove the workspaces of tasks that ended more than ``workspace_keep_days`` ago now;
    returns the ids of the tasks whose workspaces went."""
    settings = svc.settings
    return await collect_workspaces(svc.store, settings.data_dir / "workspaces", settings.workspace_keep_days)


async def compact(svc: Services, *, full: bool = False) -> dict[str, Any]:
    """Run retention now (``daemon.retention``): what it removed, the room given back, what
    the store takes now. ``full``: also ask for what only a restart does (SQLite: the one-time
    conversion of a large file to incremental vacuum); ``full`` says whether it was needed."""
    store = svc.store
    report = await run_retention(store, svc.settings.retention_days, metrics=svc.metrics)
    shown = report.public()
    if full:
        shown["full"] = (
            "the conversion to incremental vacuum runs at the next start"
            if await store.request_full_compaction()
            else "nothing more to do"
        )
    shown["store_bytes"] = await trio.to_thread.run_sync(store.size_bytes)  # SQLite: stat()s its files
    shown["reusable_bytes"] = await store.reclaimable_bytes()
    return shown


async def rotate_keys(svc: Services) -> dict[str, Any]:
    """Re-encrypt every stored secret with the newest key (``daemon.key_rotation``); the
    counts per secret column, and whether the older keys may now be removed."""
    report = await _rotate_keys(svc.store, svc.secrets, node=svc.store.node_id or "agentctl")
    return {
        "columns": {name: asdict(counts) for name, counts in report.columns.items()},
        "old_keys_retirable": report.old_keys_retirable,
    }
