"""A task's pushed work as a patch: what the phone shows under "diff"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from ..errors import NotFound
from ..git import owned as owned_repo
from . import policy
from .policy import TaskRef, Viewer

if TYPE_CHECKING:
    from ..services import Services


@dataclass(frozen=True)
class TaskPatch:
    """The patch of a task's branch from the commit it started at (``base_commit``: its first
    base, ``daemon/git/pushed.py``) to the commit it pushed last (``commit``): the same span as
    the task's diff summary."""

    task_id: str
    branch: str | None
    base_commit: str
    commit: str
    patch: owned_repo.Patch


async def task_patch(svc: Services, viewer: Viewer, ref: TaskRef) -> TaskPatch:
    """The patch of the task ``ref`` names, read in the repository agentd owns for it
    (``owned.patch``: the trust boundary is argued there), at most ``owned.PATCH_CAP`` bytes.

    ``NotFound``: no such task, not the viewer's (``policy``), no commit pushed yet, or its
    workspace removed since (the summary in the task is all that is kept then). A damaged
    workspace record, or git failing, is ``PermanentError``. Cancellation: git is killed.
    """
    task = await policy.visible_task(svc.store, viewer, ref)
    commit = (task.diff or {}).get("commit")
    if not isinstance(commit, str) or not commit:
        raise NotFound(f"task {task.id} has pushed no commit yet")
    owned = owned_repo.owned_path(svc.settings.data_dir / "workspaces", task.id)
    record = await trio.to_thread.run_sync(owned_repo.read_state, owned)
    if record is None:
        raise NotFound(f"the workspace of task {task.id} was removed; only its diff summary is kept")
    base = owned_repo.diff_base(record)  # the task's first base, also after a re-created workspace
    try:
        patch = await owned_repo.patch(owned, base, commit)
    except ValueError:
        raise NotFound(f"task {task.id}'s workspace record names no base commit to diff from") from None
    return TaskPatch(task.id, task.branch, base, commit, patch)
