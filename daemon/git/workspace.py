"""A task's workspace: a shallow clone on its own branch, then a commit pushed back.

Layout: ``<root>/<task-id>/`` is the clone itself. ``.git/agentd-workspace.json`` is written
last, so its presence means "fully prepared"; a directory without it is a half-made clone
(crash, cancellation) and is made again from scratch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import trio

from daemon.errors import PermanentError, TransientError
from daemon.git.disk import gc_workspaces, rmtree, workspace_size
from daemon.git.process import GitAuth, classify_git_error, run_git
from daemon.git.remote import Remote, parse_remote

__all__ = [
    "PushResult",
    "Workspace",
    "branch_name",
    "check_quota",
    "commit_and_push",
    "gc_workspaces",
    "prepare_workspace",
    "workspace_size",
]

_MARKER = "agentd-workspace.json"
_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CLONE_TIMEOUT = 600.0
PUSH_TIMEOUT = 300.0
LOCAL_TIMEOUT = 120.0

# Keys in the workspace's own config that `git push` would obey and that could send the
# credentials elsewhere or run a program while the token is in git's environment. The agent
# can write .git/config, so they are looked for before each push.
_UNSAFE_PUSH_CONFIG = re.compile(
    r"^(include\.|includeif\.|url\.|http\.|credential|remote\.(?!origin\.[^.]+$)"
    r"|core\.(sshcommand|gitproxy|askpass|hookspath|fsmonitor)$|push\.gpgsign$|gpg\.)"
)


@dataclass(frozen=True)
class Workspace:
    path: Path
    branch: str
    base_branch: str
    base_commit: str
    remote: Remote
    #: A fresh clone made for a task that had a workspace before (elsewhere, or replaced here):
    #: what the agent did there is not in it.
    reset: bool = False


@dataclass(frozen=True)
class PushResult:
    branch: str
    commit: str
    files_changed: list[str]
    lines_added: int
    lines_removed: int


def branch_name(task_id: str, title: str) -> str:
    """``agentd/<first 8 of the task id>-<slug of the title>``, a valid git branch name."""
    short = re.sub(r"[^a-z0-9]", "", task_id.lower())[:8] or "task"
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    if len(slug) > 40:
        slug = slug[:40].rsplit("-", 1)[0] if "-" in slug[:40] else slug[:40]
    return f"agentd/{short}-{slug or 'task'}"


def _check_branch(name: str) -> None:
    bad = (
        not name
        or name.startswith(("-", "/", "."))
        or name.endswith(("/", ".", ".lock"))
        or ".." in name
        or "@{" in name
        or "//" in name
        or any(c in name for c in " ~^:?*[\\")
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)
    )
    if bad:
        raise PermanentError(f"invalid base branch name: {name!r}", code="invalid_branch")


async def prepare_workspace(
    root: Path,
    task_id: str,
    repo_url: str,
    base_branch: str | None,
    *,
    token: str | None,
    title: str,
    allow_local: bool,
    quota_bytes: int,
    min_free_bytes: int,
    identity: tuple[str, str],
    ssh_key: Path | None = None,
    timeout: float = CLONE_TIMEOUT,
    known_branch: str | None = None,
    attempt: int = 1,
) -> Workspace:
    """Clone ``repo_url`` into ``root/<task_id>`` on a new branch and return the workspace.

    Shallow (``--depth 1 --single-branch``) on ``base_branch``, or on the remote's HEAD when it
    is None. If the workspace was already prepared (a resumed task), it is returned as is.

    ``known_branch``: the branch the task's store record says its workspace is on (None before
    its first workspace). A local workspace on another branch is stale (another node went on
    with the task since) and is replaced. A fresh clone for a task that had a workspace is a
    *reset*: it gets a branch of its own, ``<name>-a<attempt>``, so that a push never mixes the
    work of two runs, and ``Workspace.reset`` says so.
    Raises TransientError when the disk has less than ``min_free_bytes`` free (other tasks
    ending and workspace gc free space, so a later attempt can succeed) or when the network
    fails; PermanentError for a bad URL, credentials, a missing repository or branch, and a
    clone larger than ``quota_bytes`` (that clone is removed at once).

    Cancellation: the running git process is killed and the staging directory removed (a
    file system step already running in its worker thread finishes first); a directory a
    killed daemon left half-made is replaced by the next call for the same task.
    """
    if not _TASK_ID.match(task_id):
        raise PermanentError(f"invalid task id for a workspace: {task_id!r}")
    remote = parse_remote(repo_url, allow_local)
    if base_branch is not None:
        _check_branch(base_branch)
    auth = GitAuth(token=token, ssh_key=ssh_key)
    path = Path(root) / task_id
    marker = path / ".git" / _MARKER

    # Every file system call here runs in a worker thread: even a rename or a stat can wait
    # for the file system's journal while hundreds of clones write (a rename on the Trio
    # thread held the loop for up to 1.7 s at 500 tasks).
    meta = await trio.to_thread.run_sync(_read_marker, marker)
    if meta is not None and (known_branch is None or meta.get("branch") == known_branch):
        return await _reuse(path, meta, remote)
    branch = branch_name(task_id, title)
    if known_branch is not None:
        branch = f"{branch}-a{attempt}"

    free = await trio.to_thread.run_sync(_make_room, Path(root), path, task_id)
    if free < min_free_bytes:
        raise TransientError(
            f"not enough free disk space for a workspace: {_mb(free)} MB free, "
            f"{_mb(min_free_bytes)} MB required",
            code="disk_full",
        )

    # Clone into a staging directory and rename it into place once complete: a git process
    # orphaned by a daemon killed mid-clone may still be writing into its own staging dir, and
    # must never share a directory with the clone that replaces it.
    staging = Path(root) / f".staging-{task_id}-{secrets.token_hex(4)}"
    try:
        ws = await _clone(staging, remote, auth, base_branch, branch=branch,
                          identity=identity, quota_bytes=quota_bytes, allow_local=allow_local,
                          timeout=timeout)
        await trio.to_thread.run_sync(_move_into_place, staging, path, ws)
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_remove_if_present, staging)
        raise
    return dataclasses.replace(ws, path=path, reset=known_branch is not None)


def _read_marker(marker: Path) -> dict | None:
    """The workspace's marker, or None when there is none (not prepared, or half-made)."""
    try:
        text = marker.read_text()
    except (FileNotFoundError, NotADirectoryError):  # no .git, or .git is a file
        return None
    try:
        meta = json.loads(text)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):  # the agent can write in .git: refuse, never wipe its work
        raise PermanentError(f"workspace {marker.parent.parent.name} has a damaged marker "
                             f"({marker.name}); refusing to use or replace it", code="workspace_marker")
    return meta


def _make_room(root: Path, path: Path, task_id: str) -> int:
    """Remove what a clone for ``task_id`` would replace (a half-made or stale workspace, and
    staging dirs a killed daemon left) and return the bytes free for it."""
    _remove_if_present(path)
    root.mkdir(parents=True, exist_ok=True)
    prefix = f".staging-{task_id}-"
    with os.scandir(root) as entries:
        stale = [entry.path for entry in entries if entry.name.startswith(prefix)]
    for stale_path in stale:
        rmtree(Path(stale_path))
    return shutil.disk_usage(root).free


def _move_into_place(staging: Path, path: Path, ws: Workspace) -> None:
    # The marker last inside the clone: its presence means "fully prepared".
    _write_marker(staging / ".git" / _MARKER, ws, pushed_commit=None)
    os.rename(staging, path)


def _remove_if_present(path: Path) -> None:
    if path.exists():
        rmtree(path)


async def _clone(path: Path, remote: Remote, auth: GitAuth, base_branch: str | None, *,
                 branch: str, identity: tuple[str, str], quota_bytes: int,
                 allow_local: bool, timeout: float) -> Workspace:
    # Three git processes per workspace (each costs a fork, an exec and about 1 ms of CPU): the
    # identity goes into the new repository's config with the clone itself (--config), and one
    # rev-parse says both the commit and the branch the clone is on.
    name, email = identity
    clone = ["clone", "--depth", "1", "--single-branch", "--no-tags", "--quiet",
             "--config", f"user.name={name}", "--config", f"user.email={email}"]
    if base_branch is not None:
        clone.append(f"--branch={base_branch}")
    clone += ["--", remote.url, str(path)]
    await run_git(clone, remote=remote, auth=auth, op="clone", timeout=timeout,
                  allow_local=allow_local)

    size = await workspace_size(path)
    if size > quota_bytes:
        raise _quota_error(size, quota_bytes)

    git = _local_git(path)
    if base_branch is None:
        head = await git("rev-parse", "HEAD", "--symbolic-full-name", "HEAD")
        words = head.stdout.decode().split()
        base_commit, ref = (words[0], words[1]) if len(words) == 2 else ("", "")
        if not ref.startswith("refs/heads/"):
            # What `git symbolic-ref --short HEAD` says of a detached HEAD.
            raise classify_git_error("symbolic-ref", 128, "fatal: ref HEAD is not a symbolic ref")
        base_branch = ref[len("refs/heads/"):]
    else:
        base_commit = (await git("rev-parse", "HEAD")).stdout.decode().strip()
    await git("checkout", "--quiet", "-b", branch)

    return Workspace(path=path, branch=branch, base_branch=base_branch,
                     base_commit=base_commit, remote=remote)


async def _reuse(path: Path, meta: dict, remote: Remote) -> Workspace:
    if meta.get("remote_url") != remote.url:
        raise PermanentError(
            f"workspace {path.name} was prepared for another repository ({meta.get('remote_url')})"
        )
    ws = Workspace(path=path, branch=meta["branch"], base_branch=meta["base_branch"],
                   base_commit=meta["base_commit"], remote=remote)
    await _ensure_on_branch(ws)
    return ws


async def _ensure_on_branch(ws: Workspace) -> None:
    git = _local_git(ws.path)
    head = await git("symbolic-ref", "--quiet", "--short", "HEAD", check=False)
    if head.returncode != 0 or head.stdout.decode().strip() != ws.branch:
        raise PermanentError(
            f"the workspace is no longer on its branch {ws.branch}; refusing to commit elsewhere",
            code="workspace_branch",
        )


async def commit_and_push(
    ws: Workspace,
    message: str,
    *,
    token: str | None,
    ssh_key: Path | None = None,
    timeout: float = PUSH_TIMEOUT,
) -> PushResult | None:
    """Commit every change in the workspace (``git add -A``) and push the branch.

    Returns None, pushing nothing, when the branch is still at the clone's commit. When the
    branch was already pushed at its current commit, returns that result without pushing
    again (an earlier attempt may have died before recording it). Commits the agent made itself are pushed too. The counts
    in the result cover the whole branch against ``ws.base_commit``. Hooks never run.
    Raises PermanentError when the agent's edits to ``.git/config`` could redirect the push.

    Cancellation: the running git process is killed; a commit already made stays and is
    pushed by the next call.
    """
    git = _local_git(ws.path)
    head = await _clean_head(ws)
    if head is None:
        await _ensure_on_branch(ws)
        await git("add", "-A")
        staged = await git("diff", "--cached", "--quiet", check=False)
        if staged.returncode == 1:
            await git("commit", "--quiet", "--no-verify", "--no-gpg-sign", "-m", message)
        elif staged.returncode != 0:
            raise PermanentError(f"git diff failed: {staged.stderr.strip()}")
        head = (await git("rev-parse", "HEAD")).stdout.decode().strip()
    if head == ws.base_commit:
        return None
    marker = ws.path / ".git" / _MARKER
    meta = await trio.to_thread.run_sync(_read_marker, marker)
    if meta is None:
        raise PermanentError(f"workspace {ws.path.name} lost its marker ({marker.name}); not pushing",
                             code="workspace_marker")

    if head != meta.get("pushed_commit"):
        await _check_push_config(ws)
        auth = GitAuth(token=token, ssh_key=ssh_key)
        # The URL comes from the validated Remote, not from the workspace's (agent-writable)
        # config; no remote-tracking ref is needed since the branch belongs to this task.
        refspec = f"refs/heads/{ws.branch}:refs/heads/{ws.branch}"
        await run_git(["push", "--quiet", "--no-verify", "--", ws.remote.url, refspec],
                      cwd=ws.path, remote=ws.remote, auth=auth, op="push", timeout=timeout)
        with trio.CancelScope(shield=True):  # a finished push is recorded, whatever comes
            await trio.to_thread.run_sync(_write_marker, marker, ws, head)
    # Already pushed (by an attempt that died before recording it): the same result again,
    # so the caller can still record it; nothing is pushed twice.

    numstat = await git("diff", "--numstat", "-z", "--no-renames", ws.base_commit, head)
    files, added, removed = _parse_numstat(numstat.stdout)
    return PushResult(branch=ws.branch, commit=head, files_changed=files,
                      lines_added=added, lines_removed=removed)


async def _clean_head(ws: Workspace) -> str | None:
    """HEAD's commit when the workspace is on its branch with nothing to commit, else None.

    One ``git status`` answers what ``symbolic-ref``, ``add -A``, ``diff --cached`` and
    ``rev-parse`` would (four processes) when the agent changed nothing, the common case. It
    is asked to show every change ``add -A`` could stage, whatever the workspace's config
    says (untracked files, submodules); anything else, or a failure, returns None and the
    caller takes the long way, which says exactly what went wrong.
    """
    status = await _local_git(ws.path)(
        "status", "--porcelain=v2", "--branch", "-z", "--untracked-files=normal",
        "--ignore-submodules=none", "--no-ahead-behind", check=False)
    if status.returncode != 0:
        return None
    oid = branch = None
    for entry in status.stdout.decode(errors="replace").split("\0"):
        if entry.startswith("# branch.oid "):
            oid = entry[len("# branch.oid "):]
        elif entry.startswith("# branch.head "):
            branch = entry[len("# branch.head "):]
        elif entry and not entry.startswith("#"):
            return None  # a change, staged or not, or an untracked file
    if branch != ws.branch or oid is None or not re.fullmatch(r"[0-9a-f]{40,64}", oid):
        return None
    return oid


async def _check_push_config(ws: Workspace) -> None:
    git = _local_git(ws.path)
    listed = await git("config", "--local", "--null", "--list", check=False)
    for entry in listed.stdout.decode(errors="replace").split("\0"):
        key, _, value = entry.partition("\n")
        key = key.lower()
        if not key:
            continue
        if _UNSAFE_PUSH_CONFIG.match(key):
            raise PermanentError(
                f"the workspace's git config sets '{key}', which could redirect the push; "
                "refusing to push with credentials",
                code="unsafe_git_config",
            )


def _parse_numstat(out: bytes) -> tuple[list[str], int, int]:
    files: list[str] = []
    added = removed = 0
    for record in out.decode(errors="replace").split("\0"):
        if not record:
            continue
        plus, minus, name = record.split("\t", 2)
        files.append(name)
        # Binary files show "-" for both counts.
        added += int(plus) if plus.isdigit() else 0
        removed += int(minus) if minus.isdigit() else 0
    return files, added, removed


def _local_git(path: Path):
    async def git(*args: str, check: bool = True):
        return await run_git(list(args), cwd=path, timeout=LOCAL_TIMEOUT, check=check)

    return git


def _write_marker(marker: Path, ws: Workspace, pushed_commit: str | None) -> None:
    meta = {k: v for k, v in asdict(ws).items() if k in ("branch", "base_branch", "base_commit")}
    meta.update(remote_url=ws.remote.url, pushed_commit=pushed_commit)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, marker)


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
