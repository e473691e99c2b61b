"""A task's pushed branch, as a workspace made again for the task starts from it.

Only the branch's name and commit ids cross to the host: the commits themselves are agent
output and are cloned like any remote content (``workspace.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from daemon.git.addresses import ResolvedRemote, resolve_remote
from daemon.git.process import GitAuth, run_git
from daemon.git.remote import Remote

__all__ = ["COMMIT_ID", "PushedBranch", "Restored", "branch_head", "remote_heads"]

#: How long a ``git ls-remote`` of one branch may take.
LS_REMOTE_TIMEOUT = 120.0

#: A full commit id (SHA-1, or SHA-256).
COMMIT_ID = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


@dataclass(frozen=True)
class PushedBranch:
    """The branch agentd last pushed for a task and the commit it pushed (the task's record)."""

    branch: str
    commit: str


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
