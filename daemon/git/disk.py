"""Workspaces on disk: their size (for the quota) and their removal (for gc and re-clones)."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import trio

# agentd's own copies of the workspaces (daemon/git/owned.py), beside them.
OWNED_DIR = ".owned"

__all__ = ["charged", "gc_workspaces", "rmtree", "workspace_dirs", "workspace_size"]


def charged(st: os.stat_result) -> int:
    """What an entry counts against the quota: its allocated blocks, and at least 512 bytes
    (an inode): a million empty files fill the disk's inode table while using no blocks."""
    return max(st.st_blocks * 512, 512)


async def workspace_size(path: Path) -> int:
    """Bytes on disk under ``path`` (``charged``: allocated blocks, at least 512 an entry;
    hard links counted once, symlinks not followed).

    Cancellation: the walk runs in a worker thread that is abandoned (it finishes on its own,
    touching nothing), and the cancellation propagates at once.
    """
    return await trio.to_thread.run_sync(_du, Path(path), abandon_on_cancel=True)


def _du(path: Path) -> int:
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue  # removed while walking
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += charged(st)
    return total


async def gc_workspaces(root: Path, keep: Callable[[str], bool]) -> list[str]:
    """Remove every workspace directory under ``root`` whose task id ``keep`` rejects, with
    its owned copy (``root/.owned/<task-id>``, also when the workspace itself is gone);
    return the removed task ids, sorted. Directories whose names start with '.' are skipped.

    Cancellation: each removal runs in a worker thread and is not interrupted (a half-removed
    workspace would be neither usable nor gone); cancellation takes effect once the directory
    being removed is gone, and the ones not reached yet stay.
    """
    removed = []
    for entry in await workspace_dirs(root):
        if keep(entry.name):
            continue
        await trio.to_thread.run_sync(rmtree, entry)
        removed.append(entry.name)
    for entry in await workspace_dirs(root / OWNED_DIR):
        if not keep(entry.name):
            await trio.to_thread.run_sync(rmtree, entry)
    return removed


async def workspace_dirs(root: Path) -> list[Path]:
    """The workspace directories under ``root``, sorted (not the '.'-named: staging dirs).

    In a worker thread: a stat per workspace, and any of them may wait on the disk.
    """
    return await trio.to_thread.run_sync(_workspace_dirs, Path(root))


def _workspace_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(entry for entry in root.iterdir()
                  if not entry.name.startswith(".") and entry.is_dir() and not entry.is_symlink())


def rmtree(path: Path) -> None:
    """Remove ``path`` and everything under it, whatever permissions the agent left."""
    try:
        shutil.rmtree(path)
    except OSError:
        # The agent may have left read-only or unreadable directories: open them up, retry.
        _make_owner_rwx(path)
        for dirpath, dirnames, _files in os.walk(path):
            for name in dirnames:
                _make_owner_rwx(Path(dirpath, name))
        shutil.rmtree(path)


def _make_owner_rwx(path: Path) -> None:
    try:
        if not path.is_symlink():
            os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) | stat.S_IRWXU)
    except OSError:
        pass
