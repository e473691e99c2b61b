"""Workspaces on disk: their size (for the quota) and their removal (for gc and re-clones)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

# agentd's own copies of the workspaces (daemon/git/owned.py), beside them.
OWNED_DIR = ".owned"

__all__ = [
    "charged",
    "first_sight",
    "gc_workspaces",
    "remove_if_present",
    "rmtree",
    "workspace_dirs",
    "workspace_size",
]


def charged(st: os.stat_result) -> int:
    """What an entry counts against the quota: its allocated blocks, and at least 512 bytes
    (an inode): a million empty files fill the disk's inode table while using no blocks."""
    return max(st.st_blocks * 512, 512)


def first_sight(st: os.stat_result, seen: set[tuple[int, int]]) -> bool:
    """False for a file with several links that was counted already (hard links count once)."""
    if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
        if (st.st_dev, st.st_ino) in seen:
            return False
        seen.add((st.st_dev, st.st_ino))
    return True


async def workspace_size(path: Path) -> int:
    """Bytes on disk under ``path`` (``charged``: allocated blocks, at least 512 an entry;
    hard links counted once, symlinks not followed).

    Cancellation: the walk runs in a worker thread that is abandoned (it finishes on its own,
    touching nothing), and the cancellation propagates at once.
    """
    return await trio.to_thread.run_sync(_du, Path(path), abandon_on_cancel=True)


def _du(path: Path) -> int:
    # Iterative: os.walk recurses on Python 3.11, and a chain of a thousand directories the
    # agent made would raise RecursionError.
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [str(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as listing:
                entries = list(listing)
        except OSError:
            continue  # removed while walking, or unreadable
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # removed while walking
            if not first_sight(st, seen):
                continue
            total += charged(st)
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
    return total


async def gc_workspaces(root: Path, keep: Callable[[str], Awaitable[bool]]) -> list[str]:
    """Remove every workspace under ``root`` (and its owned copy, ``root/.owned/<task-id>``,
    also when the workspace itself is gone) whose task id ``keep`` rejects; return the removed
    task ids, sorted. Names starting with '.' are skipped.

    ``keep`` is asked about each one just before it would go, not from an earlier listing: a
    workspace made meanwhile (its task's record exists first) is kept.

    Cancellation: each removal runs in a worker thread and is not interrupted (a half-removed
    workspace would be neither usable nor gone); cancellation takes effect once the directory
    being removed is gone, and the ones not reached yet stay.
    """
    owned = root / OWNED_DIR
    names = sorted(
        {entry.name for entry in await workspace_dirs(root)}
        | {entry.name for entry in await workspace_dirs(owned)}
    )
    removed = []
    for name in names:
        if await keep(name):
            continue
        for path in (root / name, owned / name):
            await trio.to_thread.run_sync(remove_if_present, path)
        removed.append(name)
    return removed


def remove_if_present(path: Path) -> None:
    """``rmtree`` of ``path`` when it is a directory (not a link to one); nothing otherwise."""
    if path.is_dir() and not path.is_symlink():
        rmtree(path)


async def workspace_dirs(root: Path) -> list[Path]:
    """The workspace directories under ``root``, sorted (not the '.'-named: staging dirs).

    In a worker thread: a stat per workspace, and any of them may wait on the disk.
    """
    return await trio.to_thread.run_sync(_workspace_dirs, Path(root))


def _workspace_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(
        entry
        for entry in root.iterdir()
        if not entry.name.startswith(".") and entry.is_dir() and not entry.is_symlink()
    )


def rmtree(path: Path) -> None:
    """Remove ``path`` and everything under it, whatever permissions the agent left and however
    deep it nests (``shutil.rmtree`` recurses: a chain of a few thousand directories raises
    RecursionError). Raises OSError when something stays."""
    try:
        shutil.rmtree(path)
        return
    except (OSError, RecursionError):
        pass
    # GNU chmod and rm walk trees without a depth limit, and follow no symlink.
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    subprocess.run(
        ["chmod", "-R", "u+rwx", "--", str(path)],
        env=env,
        capture_output=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    done = subprocess.run(
        ["rm", "-rf", "--one-file-system", "--", str(path)],
        env=env,
        capture_output=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if os.path.lexists(path):
        raise OSError(f"could not remove {path}: {done.stderr.decode(errors='replace').strip()}")
