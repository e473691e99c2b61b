"""A task's pushed branch, as a workspace made again for the task starts from it.

Only the branch's name and commit ids cross to the host: the commits themselves are agent
output and are cloned like any remote content (``workspace.py``).

The diff of a task (its ``diff`` summary, ``git.pushed``'s files, ``GET /api/tasks/{id}/diff``)
is always its whole branch against the commit its first workspace was cloned at (the base
branch as the task first saw it), whatever workspace pushed last. That commit is recorded with
each push (``diff["base"]``, ``PushedBranch.base``); a workspace re-created from the pushed
branch starts at the pushed commit, so it fetches that first base into agentd's own repository
(``fetch_first_base``) and counts from it. The rule when that cannot be: a base the remote no
longer has (history rewritten: the base branch force-pushed and the task's branch rebased),
or a task pushed before the base was recorded, counts from where the re-created workspace
starts, as a fresh clone does. When someone else rebased the task's branch onto a newer base,
the first base still counts: the diff then shows that newer base's changes too. A branch gone
from the remote starts again from a fresh clone of the base, and is counted from there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import PermanentError
from daemon.git import owned as owned_repo
from daemon.git.addresses import ResolvedRemote, resolve_remote
from daemon.git.process import GitAuth, run_git
from daemon.git.remote import Remote

__all__ = ["COMMIT_ID", "PushedBranch", "Restored", "branch_head", "fetch_first_base", "remote_heads"]

#: How long a ``git ls-remote`` of one branch may take.
LS_REMOTE_TIMEOUT = 120.0

#: A full commit id (SHA-1, or SHA-256).
COMMIT_ID = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


@dataclass(frozen=True)
class PushedBranch:
    """The branch agentd last pushed for a task and the commit it pushed (the task's record);
    ``base``: the commit the task's diff counts from (None: a push made before it was kept)."""

    branch: str
    commit: str
    base: str | None = None

    def check_ids(self) -> None:
        """PermanentError unless ``commit`` and ``base`` are full commit ids: only ids ever
        reach a git command line from here."""
        for what, value in (("commit", self.commit), ("base", self.base)):
            if value is not None and not COMMIT_ID.match(value):
                raise PermanentError(f"invalid pushed {what}: {value!r}", code="invalid_branch")


@dataclass(frozen=True)
class Restored:
    """How a workspace was re-created from its task's pushed branch (``pushed``).

    ``head``: the commit the workspace starts from: ``pushed.commit``, or another one when the
    remote branch moved since (someone pushed to it); None when the branch is gone from the
    remote and the workspace is a fresh clone of the base on a branch of that name.
    """

    pushed: PushedBranch
    head: str | None

    @property
    def moved(self) -> bool:
        return self.head is not None and self.head != self.pushed.commit


async def remote_heads(
    remote: Remote, branch: str, *, auth: GitAuth, pin: ResolvedRemote, timeout: float, allow_local: bool
) -> tuple[str | None, str | None]:
    """The commit at ``branch`` on ``remote`` (None: no such branch) and the remote's default
    branch (None if it does not say), from one ``git ls-remote`` held to ``pin``'s addresses.

    Raises as a clone would (``classify_git_error``). Cancellation: the git process is killed.
    """
    listed = await run_git(
        ["ls-remote", "--symref", "--", remote.url, "HEAD", f"refs/heads/{branch}"],
        remote=remote,
        auth=auth,
        op="ls-remote",
        timeout=timeout,
        allow_local=allow_local,
        pin=pin,
    )
    head = default = None
    for line in listed.stdout.decode(errors="replace").splitlines():
        words = line.split()
        if words[:1] == ["ref:"] and len(words) == 3 and words[2] == "HEAD":
            default = words[1].removeprefix("refs/heads/")
        elif len(words) == 2 and words[1] == f"refs/heads/{branch}" and COMMIT_ID.match(words[0]):
            head = words[0]
    return head, default


async def branch_head(
    remote: Remote,
    branch: str,
    *,
    auth: GitAuth,
    allow_local: bool,
    allow_private: bool,
    timeout: float = LS_REMOTE_TIMEOUT,
) -> str | None:
    """The commit ``branch`` is at on ``remote`` now (None: no such branch there).

    The remote's host is resolved and checked again first (its addresses may have changed
    since the clone; ``allow_private`` as for a push). Raises as ``remote_heads``.
    Cancellation: the git process is killed.
    """
    pin = await resolve_remote(remote, allow_private=allow_private)
    head, _ = await remote_heads(remote, branch, auth=auth, pin=pin, timeout=timeout, allow_local=allow_local)
    return head


async def fetch_first_base(
    owned: Path,
    remote: Remote,
    restored: Restored,
    clone_commit: str,
    *,
    auth: GitAuth,
    pin: ResolvedRemote,
    timeout: float,
    allow_local: bool,
) -> str | None:
    """The commit the task's diff counts from, for a workspace re-created from its pushed
    branch and cloned at ``clone_commit``: the task's first base (``restored.pushed.base``),
    fetched into the owned repository at ``owned`` (its tree only: depth 1), or None when the
    workspace's own start counts (the module's rule: no base recorded, the branch gone from the
    remote, or a base the remote refuses or no longer has).

    A network failure raises TransientError (the attempt is tried again, as for a clone).
    Cancellation: git is killed; the caller removes the half-made owned repository.
    """
    base = restored.pushed.base
    if base is None or restored.head is None or base == clone_commit:
        return None
    try:
        await owned_repo.fetch_commit(
            owned, remote, base, auth=auth, pin=pin, timeout=timeout, allow_local=allow_local
        )
    except PermanentError:  # "not our ref", or a server that allows no fetch by id
        return None
    return base
