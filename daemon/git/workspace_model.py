"""What a task's workspace is and how one is asked for (``workspace.prepare_workspace``): its
record, the request and the daemon's policy, and the naming rules (task ids, branch names).
No I/O here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import PermanentError
from daemon.git.pushed import PushedBranch, Restored
from daemon.git.remote import Remote

__all__ = ["ClonePolicy", "CloneRequest", "Workspace", "branch_name", "check_branch", "valid_branch"]

TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CLONE_TIMEOUT = 600.0


@dataclass(frozen=True)
class Workspace:
    path: Path
    branch: str
    base_branch: str
    base_commit: str
    remote: Remote
    #: agentd's own copy and record (``<root>/.owned/<task-id>``): pushes go from there.
    owned: Path
    #: A fresh clone made for a task that had a workspace before (elsewhere, or replaced here):
    #: what the agent did there is not in it.
    reset: bool = False
    #: Set when the workspace was re-created from the task's pushed branch.
    restored: Restored | None = None
    #: The task's first base (the commit its first workspace was cloned at), when it is not
    #: ``base_commit``: a workspace re-created from the task's pushed branch starts at the
    #: pushed commit, yet the task's diff still counts from the first base.
    first_base: str | None = None

    @property
    def diff_base(self) -> str:
        """The commit the task's diff counts from (the whole branch: ``pushed.py``'s rule)."""
        return self.first_base or self.base_commit

    def record(self, *, pushed_commit: str | None) -> dict:
        """The workspace's record (``owned.write_state``), ``pushed_commit`` last pushed."""
        return {
            "branch": self.branch,
            "base_branch": self.base_branch,
            "base_commit": self.base_commit,
            "diff_base": self.diff_base,
            "remote_url": self.remote.url,
            "pushed_commit": pushed_commit,
        }


@dataclass(frozen=True)
class CloneRequest:
    """One task's workspace, as ``prepare_workspace`` makes it.

    ``base_branch``: None for the remote's HEAD. ``title`` names the new branch
    (``branch_name``). ``token``: the user's, for the remote only. ``known_branch``: the
    branch the task's store record says its workspace is on (None before its first
    workspace); ``attempt``: the task's attempt, which names the branch of a reset.
    ``pushed``: the branch and commit agentd pushed for the task (None before its first push);
    a workspace made again for such a task starts from that branch (``prepare_workspace``).
    """

    task_id: str
    repo_url: str
    base_branch: str | None
    title: str
    token: str | None = None
    known_branch: str | None = None
    attempt: int = 1
    pushed: PushedBranch | None = None


@dataclass(frozen=True)
class ClonePolicy:
    """How this daemon makes every workspace: under ``root``, committed as ``identity`` (name,
    email), within ``quota_bytes`` and with ``min_free_bytes`` left on disk, reaching which
    remotes (``allow_local``: paths and ``file://``; ``allow_private``: private addresses), with
    the operator's ``ssh_key``, giving the clone ``timeout`` seconds."""

    root: Path
    identity: tuple[str, str]
    quota_bytes: int
    min_free_bytes: int
    allow_local: bool = False
    allow_private: bool = False
    ssh_key: Path | None = None
    timeout: float = CLONE_TIMEOUT


def branch_name(task_id: str, title: str) -> str:
    """``agentd/<first 8 of the task id>-<slug of the title>``, a valid git branch name."""
    short = re.sub(r"[^a-z0-9]", "", task_id.lower())[:8] or "task"
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    if len(slug) > 40:
        slug = slug[:40].rsplit("-", 1)[0] if "-" in slug[:40] else slug[:40]
    return f"agentd/{short}-{slug or 'task'}"


def check_branch(name: str, what: str = "base branch") -> None:
    if not valid_branch(name):
        raise PermanentError(f"invalid {what} name: {name!r}", code="invalid_branch")


def valid_branch(name: str) -> bool:
    return not (
        not name
        or name.startswith(("-", "/", "."))
        or name.endswith(("/", ".", ".lock"))
        or ".." in name
        or "@{" in name
        or "//" in name
        or any(c in name for c in " ~^:?*[\\")
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)
    )
