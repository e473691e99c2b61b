"""Delivering a workspace's work: the commit made in the sandbox, taken as a bundle into the
repository agentd owns, pushed from there, and counted there against the task's diff base.

Moved out of ``workspace.py`` (which makes workspaces); no git on the host reads the workspace.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from daemon.errors import PermanentError
from daemon.git import owned as owned_repo
from daemon.git.addresses import resolve_remote
from daemon.git.export import Confinement, export_bundle
from daemon.git.process import GitAuth

if TYPE_CHECKING:
    from daemon.git.workspace import Workspace

__all__ = ["PUSH_TIMEOUT", "PushResult", "commit_and_push"]

PUSH_TIMEOUT = 300.0


@dataclass(frozen=True)
class PushResult:
    """What a push left on the task's branch: its ``commit``, and the whole branch's files and
    line counts against the task's diff base (``Workspace.diff_base``)."""

    branch: str
    commit: str
    files_changed: list[str]
    lines_added: int
    lines_removed: int


async def commit_and_push(
    ws: Workspace,
    message: str,
    *,
    token: str | None,
    confinement: Confinement,
    identity: tuple[str, str],
    ssh_key: Path | None = None,
    timeout: float = PUSH_TIMEOUT,
    allow_private: bool = False,
) -> PushResult | None:
    """Commit every change in the workspace (``git add -A``) and push the branch.

    The commit is made in the sandbox (``confinement``, the task's; ``export.py``) by
    ``identity``, and what it made is pushed from the owned repository to the task's remote:
    no git on the host reads the workspace. Returns None, pushing nothing, when the branch has
    no commit beyond the clone's (``ws.base_commit``). When the branch was already pushed at
    its current commit, returns that result without pushing again (an earlier attempt may have
    died before recording it). Commits the agent made itself are pushed too; the counts in the
    result cover the whole branch against ``ws.diff_base`` (the task's first base, also in a
    workspace re-created from its pushed branch: ``pushed.py``). Hooks never run. Raises
    PermanentError when the workspace is off its branch (``workspace_branch``) or its commits
    cannot be taken, and when the remote's host now resolves to a private address (unless
    ``allow_private``).

    Cancellation: the running git process (or the sandbox) is killed; a commit already made
    stays in the workspace and is pushed by the next call.
    """
    meta = await trio.to_thread.run_sync(owned_repo.read_state, ws.owned)
    if meta is None:
        raise PermanentError(
            f"workspace {ws.path.name} lost its record; not pushing", code="workspace_marker"
        )
    bundle = ws.owned / "export.bundle"
    try:
        if not await export_bundle(
            ws.path,
            bundle,
            branch=ws.branch,
            base_commit=ws.base_commit,
            message=message,
            identity=identity,
            confinement=confinement,
        ):
            return None
        head = await owned_repo.fetch_bundle(ws.owned, bundle, ws.branch)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(functools.partial(bundle.unlink, missing_ok=True))
    if head == ws.base_commit:  # a bundle that names the base itself: nothing new either
        return None
    if head != meta.get("pushed_commit"):
        auth = GitAuth(token=token, ssh_key=ssh_key)
        # Resolved again: the host's addresses may have changed since the clone.
        pin = await resolve_remote(ws.remote, allow_private=allow_private)
        await owned_repo.push_branch(ws.owned, ws.remote, ws.branch, auth, timeout, pin)
        with trio.CancelScope(shield=True):  # a finished push is recorded, whatever comes
            await trio.to_thread.run_sync(owned_repo.write_state, ws.owned, ws.record(pushed_commit=head))
    # Already pushed (by an attempt that died before recording it): the same result again,
    # so the caller can still record it; nothing is pushed twice.
    files, added, removed = await owned_repo.numstat(ws.owned, ws.diff_base, head)
    return PushResult(
        branch=ws.branch, commit=head, files_changed=files, lines_added=added, lines_removed=removed
    )
