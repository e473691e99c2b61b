"""The repository agentd owns for each task: what is pushed, and what is counted, comes from here.

Layout under the workspace root: ``.owned/<task-id>/repo.git``, a bare repository copied from
the fresh clone before the agent ever saw it, with a config agentd wrote; and
``.owned/<task-id>/state.json``, the task's workspace record (branch, base, remote, the commit
last pushed). Neither is in the workspace, so neither is visible in the sandbox or writable by
the agent. The agent's commits arrive as a bundle (``export.py``), checked object by object as
they are fetched; the push, with the user's token, goes from here to the task's own remote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import trio

from daemon.errors import AgentdError, PermanentError
from daemon.git.addresses import ResolvedRemote
from daemon.git.disk import OWNED_DIR
from daemon.git.process import GitAuth, run_git
from daemon.git.remote import Remote

__all__ = [
    "OWNED_DIR",
    "PATCH_CAP",
    "Patch",
    "diff_base",
    "fetch_bundle",
    "fetch_commit",
    "make_owned",
    "numstat",
    "owned_path",
    "patch",
    "push_branch",
    "read_state",
    "write_state",
]

LOCAL_TIMEOUT = 120.0
_STATE = "state.json"
_REPO = "repo.git"
_SECTION = re.compile(r"^\s*\[")
# Blobs over 1 MB are streamed, not inflated in memory (a 400 MB blob compresses to 1 MB in a
# bundle), and counted as binary by the diff summary; and no gc is started behind our back.
_BIG_FILES = ("-c", "core.bigFileThreshold=1m", "-c", "gc.auto=0", "-c", "maintenance.auto=false")


def owned_path(root: Path, task_id: str) -> Path:
    """Where the task's owned repository and record live."""
    return Path(root) / OWNED_DIR / task_id


def repo_of(owned: Path) -> Path:
    return owned / _REPO


async def make_owned(clone: Path, owned: Path) -> None:
    """Copy the fresh clone at ``clone`` (not yet seen by the agent) into ``owned``'s bare
    repository, with a config of agentd's own.

    A copy of the clone's git directory, not a ``git clone``: git clones a shallow repository
    through its transport (``--local`` is ignored), which packs every object again (about
    20 ms of CPU a workspace). What is copied is git's data only (objects, refs, ``shallow``,
    ``HEAD``); no hooks, index, logs or remote. Cancellation: the copy in its worker thread
    finishes; the caller removes the directory."""
    await trio.to_thread.run_sync(_copy_repository, clone / ".git", repo_of(owned))


_GIT_DATA = ("HEAD", "objects", "refs", "packed-refs", "shallow")


def _copy_repository(source: Path, repo: Path) -> None:
    repo.mkdir(parents=True)
    for name in _GIT_DATA:
        if (source / name).is_dir():
            shutil.copytree(source / name, repo / name, symlinks=True)
        elif (source / name).exists():
            shutil.copy2(source / name, repo / name, follow_symlinks=False)
    (repo / "config").write_text(_bare_config((source / "config").read_text()))


def _bare_config(text: str) -> str:
    """The clone's [core] and [extensions] sections, made bare: no remote, no branch, nothing
    that names a path or a program."""
    kept: list[str] = []
    section = ""
    for line in text.splitlines():
        if _SECTION.match(line):
            section = line.strip().lower()
        if section in ("[core]", "[extensions]"):
            bare = re.match(r"\s*bare\s*=", line, re.IGNORECASE)
            kept.append("\tbare = true" if bare else line)
    return "\n".join(kept) + "\n"


async def fetch_bundle(owned: Path, bundle: Path, branch: str) -> str:
    """Take ``branch``'s commits from ``bundle`` into the owned repository and return its
    commit. Every object is checked as git's fsck would (``index-pack --strict``: git before
    2.46 fetches a bundle without checking its objects, whatever ``transfer.fsckObjects``
    says), every object the commit needs must be there, and only then is the branch moved.
    Raises PermanentError (``workspace_bundle``) for anything else.

    Cancellation: git is killed; a pack it had written stays unreferenced (gc's to remove).
    """
    repo = repo_of(owned)
    ref = f"refs/heads/{branch}"
    await trio.to_thread.run_sync(_remove_stale_locks, repo)
    try:
        commit, fd = await trio.to_thread.run_sync(_open_bundle_pack, bundle, ref)
    except (OSError, ValueError) as e:
        raise _not_taken(str(e)) from None
    try:
        await run_git(
            [*_BIG_FILES, "index-pack", "--strict", "--fix-thin", "--stdin"],
            cwd=repo,
            stdin=fd,
            timeout=LOCAL_TIMEOUT,
            op="index-pack",
        )
        # A commit (the peel fails for anything else), and every object it needs is there.
        await run_git(
            ["rev-list", "--objects", "--quiet", f"{commit}^{{commit}}", "--not", "--all"],
            cwd=repo,
            timeout=LOCAL_TIMEOUT,
            op="rev-list",
        )
        await run_git(["update-ref", ref, commit], cwd=repo, timeout=LOCAL_TIMEOUT)
    except AgentdError as e:
        raise _not_taken(str(e)) from None
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(os.close, fd)
    return commit


_BUNDLE_SIGNATURES = (b"# v2 git bundle\n", b"# v3 git bundle\n")
_HEADER_CAP = 1 << 20
_OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def _open_bundle_pack(bundle: Path, ref: str) -> tuple[str, int]:
    """The commit ``bundle`` names for ``ref`` and a descriptor of the bundle at its pack
    (gitformat-bundle: a signature line, prerequisites, capabilities and refs, a blank line)."""
    with open(bundle, "rb") as f:
        head = f.read(_HEADER_CAP)
    end = head.find(b"\n\n")
    if not head.startswith(_BUNDLE_SIGNATURES) or end < 0:
        raise ValueError("the workspace's git made no bundle (or one whose header is over 1 MB)")
    commit = None
    for line in head[:end].split(b"\n")[1:]:
        oid, _, name = line.partition(b" ")
        if name.decode(errors="replace") == ref and not oid.startswith((b"-", b"@")):
            commit = oid.decode(errors="replace")
    if commit is None or not _OID.fullmatch(commit):
        raise ValueError(f"the bundle has no {ref}")
    fd = os.open(bundle, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    os.lseek(fd, end + 2, os.SEEK_SET)
    return commit, fd


def _not_taken(why: str) -> PermanentError:
    return PermanentError(
        f"the commits made in the workspace could not be taken: {why}", code="workspace_bundle"
    )


async def push_branch(
    owned: Path, remote: Remote, branch: str, auth: GitAuth, timeout: float, pin: ResolvedRemote
) -> None:
    """Push ``branch`` from the owned repository to ``remote``'s URL (never a configured one),
    held to the addresses in ``pin``. Cancellation: git and its helpers are killed."""
    ref = f"refs/heads/{branch}"
    await run_git(
        ["push", "--quiet", "--no-verify", "--", remote.url, f"{ref}:{ref}"],
        cwd=repo_of(owned),
        remote=remote,
        auth=auth,
        op="push",
        timeout=timeout,
        pin=pin,
    )


#: Where a commit fetched by id is kept (a ref: so that no gc can take it).
FIRST_BASE_REF = "refs/agentd/first-base"


async def fetch_commit(
    owned: Path,
    remote: Remote,
    commit: str,
    *,
    auth: GitAuth,
    pin: ResolvedRemote,
    timeout: float,
    allow_local: bool,
) -> None:
    """Fetch ``commit`` (a full object id) from ``remote``'s URL into the owned repository,
    without its history (depth 1), at ``FIRST_BASE_REF``; held to ``pin``'s addresses.

    Fetching by id needs the server to allow it: git's protocol v2 serves any commit it has
    (so does GitHub for a reachable one), protocol v0 only advertised ones. Raises as
    ``classify_git_error`` says: PermanentError when the server refuses or lacks the commit.
    Cancellation: git and its helpers are killed.
    """
    if not _OID.fullmatch(commit):
        raise ValueError("fetch_commit needs an object id")
    await run_git(
        [
            "-c",
            "gc.auto=0",
            "-c",
            "maintenance.auto=false",
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--depth=1",
            "--",
            remote.url,
            f"+{commit}:{FIRST_BASE_REF}",
        ],
        cwd=repo_of(owned),
        remote=remote,
        auth=auth,
        op="fetch",
        timeout=timeout,
        allow_local=allow_local,
        pin=pin,
    )


def diff_base(record: Mapping[str, object]) -> str:
    """The commit a task's diff counts from, as its workspace record (``read_state``) says:
    ``diff_base`` (the task's first base, in a workspace re-created from its pushed branch),
    else ``base_commit`` (where the clone started: a record made before ``diff_base`` was).
    "" when it names neither as an object id."""
    for key in ("diff_base", "base_commit"):
        value = record.get(key)
        if isinstance(value, str) and _OID.fullmatch(value):
            return value
    return ""


async def numstat(owned: Path, base: str, head: str) -> tuple[list[str], int, int]:
    """Files changed, lines added and removed from ``base`` to ``head``, read in the owned
    repository (no external diff, no textconv: only agentd's config counts there)."""
    done = await run_git(
        [
            *_BIG_FILES,
            "diff",
            "--numstat",
            "-z",
            "--no-renames",
            "--no-ext-diff",
            "--no-textconv",
            base,
            head,
            "--",
        ],
        cwd=repo_of(owned),
        timeout=LOCAL_TIMEOUT,
    )
    return parse_numstat(done.stdout)


PATCH_CAP = 1 << 20  # bytes of patch text given out at most
_EMPTY_TREE = {  # by the length of an object id: SHA-1, SHA-256
    40: "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
    64: "6ef19b41225c5369f1c104d45d8d85efa9b057b53b14b4b9b939dd74decc5321",
}


@dataclass(frozen=True)
class Patch:
    """A unified diff as text; ``truncated``: it was cut at a line end to ``size`` bytes."""

    text: str
    truncated: bool
    size: int


async def patch(owned: Path, base: str, head: str, *, cap: int = PATCH_CAP) -> Patch:
    """The patch from commit ``base`` to commit ``head`` (object ids), read in the owned
    repository: git's unified diff, uncoloured, at most ``cap`` bytes.

    Trust boundary: both commits' blobs and paths are the agent's (hostile), their objects
    checked by ``index-pack --strict`` when they were fetched; here they are data only and
    leave as text. Nothing of theirs can make this git run anything: a diff runs a program
    only through a driver (``diff.<name>.command``, ``.textconv``) or ``diff.external``, and
    those come from config alone, which here is agentd's (``make_owned``: no system or global
    config, ``git_env``; the repository's own written by agentd, never by a workspace). A
    ``.gitattributes`` in the agent's tree can name a driver but not define one, and none is
    read anyway: a bare repository has no work tree, ``core.attributesFile`` is
    ``/dev/null``, and ``attr.tree`` (git 2.42+) points at the empty tree; ``--no-ext-diff``
    and ``--no-textconv`` would refuse a driver even then. No hook runs on a diff, no pager
    (no terminal). File names come quoted by git (``core.quotePath``) where they hold control
    or non-ASCII characters; content is as the agent wrote it: a caller shows it as text.
    Binary files, and blobs over 1 MB, are named as binary, not shown.

    Raises ``ValueError`` for an argument that is not an object id. Cancellation: git is
    killed.
    """
    if not (_OID.fullmatch(base) and _OID.fullmatch(head) and len(base) == len(head)):
        raise ValueError("patch needs two object ids of one kind")
    done = await run_git(
        [
            *_BIG_FILES,
            "-c",
            "core.attributesFile=/dev/null",
            "-c",
            f"attr.tree={_EMPTY_TREE[len(head)]}",
            "-c",
            "core.quotePath=true",
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--no-renames",
            base,
            head,
            "--",
        ],
        cwd=repo_of(owned),
        timeout=LOCAL_TIMEOUT,
        stdout_cap=cap + 1,
        op="diff",
    )
    out = done.stdout
    truncated = len(out) > cap
    if truncated:  # whole lines only
        out = out[: out.rfind(b"\n", 0, cap) + 1]
    return Patch(out.decode(errors="replace"), truncated, len(out))


def _remove_stale_locks(repo: Path) -> None:
    """Locks a killed fetch left (a timeout, a shutdown): only agentd writes here, one delivery
    of the task at a time, so any lock is stale."""
    for lock in [*repo.glob("*.lock"), *repo.joinpath("refs").rglob("*.lock")]:
        lock.unlink(missing_ok=True)


def parse_numstat(out: bytes) -> tuple[list[str], int, int]:
    """``git diff --numstat -z --no-renames``'s output: files, lines added, lines removed."""
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


def read_state(owned: Path) -> dict | None:
    """The task's workspace record, or None when there is none (not prepared, or half-made).
    A record that is not a JSON object is refused (PermanentError), never silently replaced."""
    try:
        text = (owned / _STATE).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        meta = json.loads(text)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise PermanentError(
            f"workspace {owned.name} has a damaged record ({_STATE}); refusing to use or replace it",
            code="workspace_marker",
        )
    return meta


def write_state(owned: Path, meta: dict) -> None:
    """Replace the record atomically."""
    tmp = owned / f"{_STATE}.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, owned / _STATE)
