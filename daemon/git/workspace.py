"""A task's workspace: a shallow clone on its own branch (its commit is pushed by ``push.py``).

What a workspace is, and the request and policy that make one: ``workspace_model.py``.

Layout: ``<root>/<task-id>/`` is the clone the agent works in; ``<root>/.owned/<task-id>/`` is
agentd's own copy of it and the task's record (``owned.py``), which the agent never sees. The
record is written last, so a workspace is "fully prepared" when both exist; anything else is a
half-made clone (crash, cancellation) and is made again from scratch.

After the clone no git on the host runs in the workspace: the agent's work leaves it as a
bundle made in the sandbox (``export.py``), and is pushed from the owned repository
(``push.py``), counted there against the task's diff base (``Workspace.diff_base``).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from daemon.errors import PermanentError, TransientError
from daemon.git import owned as owned_repo
from daemon.git.addresses import ResolvedRemote, resolve_remote
from daemon.git.disk import gc_workspaces, remove_if_present, rmtree, workspace_size
from daemon.git.failures import classify_git_error
from daemon.git.process import GitAuth, GitResult, run_git
from daemon.git.pushed import PushedBranch, Restored, fetch_first_base, remote_heads
from daemon.git.remote import Remote, parse_remote
from daemon.git.workspace_model import (
    TASK_ID,
    ClonePolicy,
    CloneRequest,
    Workspace,
    branch_name,
    check_branch,
    valid_branch,
)

__all__ = [
    "ClonePolicy",
    "CloneRequest",
    "PushedBranch",
    "Restored",
    "Workspace",
    "branch_name",
    "check_quota",
    "gc_workspaces",
    "prepare_workspace",
    "workspace_size",
]

LOCAL_TIMEOUT = 120.0


@dataclass(frozen=True)
class _Clone:
    """What one clone is made of, once the request is checked and its remote resolved."""

    remote: Remote
    auth: GitAuth
    pin: ResolvedRemote
    base_branch: str | None
    branch: str
    owned: Path
    #: False: the clone is already on ``branch`` (the pushed branch itself), no new branch.
    new_branch: bool = True


async def prepare_workspace(request: CloneRequest, policy: ClonePolicy) -> Workspace:
    """Clone ``request.repo_url`` into ``<policy.root>/<task_id>`` on a new branch and return
    the workspace.

    Shallow (``--depth 1 --single-branch``) on ``base_branch``, or on the remote's HEAD when it
    is None. If the workspace was already prepared (a resumed task), it is returned as is.

    A local workspace on another branch than ``request.known_branch`` is stale (another node
    went on with the task since) and is replaced. A fresh clone for a task that had a workspace
    is a *reset*: it gets a branch of its own, ``<name>-a<attempt>``, so that a push never mixes
    the work of two runs, and ``Workspace.reset`` says so. A reset of a task that pushed
    (``request.pushed``: a follow-up after workspace gc, or a task moved to another node) starts
    from the pushed branch instead and keeps its name, so the next push updates the same branch
    (and its pull request): at the remote's commit of that branch, which may have moved since
    agentd pushed it; or, when the branch is gone from the remote, as a fresh clone of the base
    on a branch of that name. ``Workspace.restored`` says which. The task's first base
    (``pushed.base``) is fetched into the owned repository so that its diff stays the whole
    branch (``Workspace.first_base``; the rule and its fallback: ``pushed.py``). Only the
    branch's name and commit ids (all checked) are used on the host; the clone follows the
    same rules as any.
    Raises TransientError when the disk has less than ``min_free_bytes`` free (other tasks
    ending and workspace gc free space, so a later attempt can succeed) or when the network
    fails; PermanentError for a bad URL, credentials, a missing repository or branch, a host
    at a private address (unless ``allow_private`` or ``allow_local``; the name is resolved
    and git held to the addresses checked: ``addresses.py``), and a clone larger than
    ``quota_bytes`` (that clone is removed at once).

    Cancellation: the running git process is killed and the staging directory removed (a
    file system step already running in its worker thread finishes first); a directory a
    killed daemon left half-made is replaced by the next call for the same task.
    """
    task_id, root, known_branch = request.task_id, Path(policy.root), request.known_branch
    if not TASK_ID.match(task_id):
        raise PermanentError(f"invalid task id for a workspace: {task_id!r}")
    remote = parse_remote(request.repo_url, policy.allow_local, allow_private=policy.allow_private)
    if request.base_branch is not None:
        check_branch(request.base_branch)
    path = root / task_id
    owned = owned_repo.owned_path(root, task_id)

    pushed = request.pushed
    if pushed is not None:
        check_branch(pushed.branch, "pushed branch")
        pushed.check_ids()

    # Every file system call here runs in a worker thread: even a rename or a stat can wait
    # for the file system's journal while hundreds of clones write (a rename on the Trio
    # thread held the loop for up to 1.7 s at 500 tasks).
    meta = await trio.to_thread.run_sync(_read_prepared, path, owned)
    if meta is not None and (known_branch is None or meta.get("branch") == known_branch):
        return _reuse(path, owned, meta, remote)
    branch = branch_name(task_id, request.title)
    if known_branch is not None:
        branch = f"{branch}-a{request.attempt}"

    pin = await resolve_remote(remote, allow_private=policy.allow_local or policy.allow_private)
    auth = GitAuth(token=request.token, ssh_key=policy.ssh_key)
    clone = _Clone(remote, auth, pin, request.base_branch, branch, owned)
    restored: Restored | None = None
    base_branch = request.base_branch
    if pushed is not None:
        head, default = await remote_heads(
            remote, pushed.branch, auth=auth, pin=pin, timeout=policy.timeout, allow_local=policy.allow_local
        )
        restored = Restored(pushed, head)
        if base_branch is None and default is not None and valid_branch(default):
            base_branch = default
        if head is None:  # the branch is gone: a clone of the base, on a branch of its name
            clone = dataclasses.replace(clone, branch=pushed.branch)
        else:
            clone = dataclasses.replace(
                clone, branch=pushed.branch, base_branch=pushed.branch, new_branch=False
            )

    free = await trio.to_thread.run_sync(_make_room, root, task_id)
    if free < policy.min_free_bytes:
        raise TransientError(
            f"not enough free disk space for a workspace: {_mb(free)} MB free, "
            f"{_mb(policy.min_free_bytes)} MB required",
            code="disk_full",
        )

    # Clone into staging directories and rename them into place once complete: a git process
    # orphaned by a daemon killed mid-clone may still be writing into its own staging dir, and
    # must never share a directory with the clone that replaces it.
    suffix = f".staging-{task_id}-{secrets.token_hex(4)}"
    staging, owned_staging = root / suffix, owned.parent / suffix
    try:
        ws = await _clone(staging, clone, policy)
        # agentd's own copy is made before the agent has touched the clone.
        await owned_repo.make_owned(staging, owned_staging)
        if restored is not None:  # the diff counts from the task's first base (pushed.py)
            first = await fetch_first_base(
                owned_staging,
                remote,
                restored,
                ws.base_commit,
                auth=auth,
                pin=pin,
                timeout=policy.timeout,
                allow_local=policy.allow_local,
            )
            ws = dataclasses.replace(ws, first_base=first)
        await trio.to_thread.run_sync(_move_into_place, staging, path, owned_staging, owned, ws)
    except BaseException:
        with trio.CancelScope(shield=True):
            for made in (staging, owned_staging):
                await trio.to_thread.run_sync(remove_if_present, made)
        raise
    if restored is not None and restored.head is not None:
        # The clone is on the pushed branch: the base is the task's, its commit where it starts
        # (the branch's commit as cloned, should it have moved again since the listing).
        ws = dataclasses.replace(ws, base_branch=base_branch or ws.base_branch)
        restored = Restored(restored.pushed, ws.base_commit)
    reset = known_branch is not None or pushed is not None
    return dataclasses.replace(ws, path=path, reset=reset, restored=restored)


def _read_prepared(path: Path, owned: Path) -> dict | None:
    """The task's record when its workspace is fully prepared, else None."""
    meta = owned_repo.read_state(owned)
    return meta if meta is not None and path.is_dir() else None


def _make_room(root: Path, task_id: str) -> int:
    """Remove what a clone for ``task_id`` would replace (a half-made or stale workspace and
    its owned copy, and staging dirs a killed daemon left) and return the bytes free for it."""
    owned = owned_repo.owned_path(root, task_id)
    for path in (root / task_id, owned):
        remove_if_present(path)
    owned.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".staging-{task_id}-"
    for parent in (root, owned.parent):
        with os.scandir(parent) as entries:
            stale = [entry.path for entry in entries if entry.name.startswith(prefix)]
        for stale_path in stale:
            rmtree(Path(stale_path))
    return shutil.disk_usage(root).free


def _move_into_place(staging: Path, path: Path, owned_staging: Path, owned: Path, ws: Workspace) -> None:
    # The record is written last, and the workspace renamed after it: both there means
    # "fully prepared".
    owned_repo.write_state(owned_staging, ws.record(pushed_commit=None))
    os.rename(owned_staging, owned)
    os.rename(staging, path)


async def _clone(path: Path, clone: _Clone, policy: ClonePolicy) -> Workspace:
    # Three git processes per workspace (each costs a fork, an exec and about 1 ms of CPU): the
    # identity goes into the new repository's config with the clone itself (--config), and one
    # rev-parse says both the commit and the branch the clone is on.
    name, email = policy.identity
    remote, base_branch = clone.remote, clone.base_branch
    command = [
        "clone",
        "--depth",
        "1",
        "--single-branch",
        "--no-tags",
        "--quiet",
        "--config",
        f"user.name={name}",
        "--config",
        f"user.email={email}",
    ]
    if base_branch is not None:
        command.append(f"--branch={base_branch}")
    command += ["--", remote.url, str(path)]
    await run_git(
        command,
        remote=remote,
        auth=clone.auth,
        op="clone",
        timeout=policy.timeout,
        allow_local=policy.allow_local,
        pin=clone.pin,
    )

    size = await workspace_size(path)
    if size > policy.quota_bytes:
        raise _quota_error(size, policy.quota_bytes)

    git = _local_git(path)
    if base_branch is None:
        head = await git("rev-parse", "HEAD", "--symbolic-full-name", "HEAD")
        words = head.stdout.decode().split()
        base_commit, ref = (words[0], words[1]) if len(words) == 2 else ("", "")
        if not ref.startswith("refs/heads/"):
            # What `git symbolic-ref --short HEAD` says of a detached HEAD.
            raise classify_git_error("symbolic-ref", 128, "fatal: ref HEAD is not a symbolic ref")
        base_branch = ref[len("refs/heads/") :]
    else:
        base_commit = (await git("rev-parse", "HEAD")).stdout.decode().strip()
    if clone.new_branch:
        await git("checkout", "--quiet", "-b", clone.branch)

    return Workspace(
        path=path,
        branch=clone.branch,
        base_branch=base_branch,
        base_commit=base_commit,
        remote=remote,
        owned=clone.owned,
    )


def _reuse(path: Path, owned: Path, meta: dict, remote: Remote) -> Workspace:
    if meta.get("remote_url") != remote.url:
        raise PermanentError(
            f"workspace {path.name} was prepared for another repository ({meta.get('remote_url')})"
        )
    base = owned_repo.diff_base(meta)
    return Workspace(
        path=path,
        branch=meta["branch"],
        base_branch=meta["base_branch"],
        base_commit=meta["base_commit"],
        remote=remote,
        owned=owned,
        first_base=base if base != meta["base_commit"] else None,
    )


def _local_git(path: Path) -> Callable[..., Awaitable[GitResult]]:
    """git in a fresh clone that no agent has touched yet (never in a workspace after that)."""

    async def git(*args: str, check: bool = True) -> GitResult:
        return await run_git(list(args), cwd=path, timeout=LOCAL_TIMEOUT, check=check)

    return git


async def check_quota(ws: Workspace | Path, quota_bytes: int) -> int:
    """The workspace's size in bytes; PermanentError when it is over ``quota_bytes``.

    Cancellation: as :func:`workspace_size`.
    """
    path = ws.path if isinstance(ws, Workspace) else Path(ws)
    size = await workspace_size(path)
    if size > quota_bytes:
        raise _quota_error(size, quota_bytes)
    return size


def _quota_error(size: int, quota: int) -> PermanentError:
    return PermanentError(
        f"workspace quota exceeded: {_mb(size)} MB > {_mb(quota)} MB", code="quota_exceeded"
    )


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f}"
