"""Taking the agent's work out of its workspace as data: a git bundle made inside the sandbox.

Everything in a workspace is hostile, ``.git/`` included: its config can name programs for git
to run (filters, hooks, fsmonitor, pagers, editors, gpg...) or point git elsewhere
(``core.worktree``, ``include.path``, ``url.*.insteadOf``). So no git on the host ever runs in
a workspace after the agent had it. The commit and the bundle are made by a git running in the
task's sandbox (no network, no secrets, only the workspace visible, the tools' uid and limits);
whatever the workspace's config makes that git do happens in there. What comes out is one file
of data, a bundle of the branch's new commits, written through a file descriptor the daemon
opened; the daemon fetches it (objects checked) into the repository it owns (``owned.py``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Protocol

import trio

from daemon.errors import PermanentError, TransientError
from daemon.git.process import ProcessOptions, run_in_group

__all__ = ["Confinement", "export_bundle"]

EXPORT_TIMEOUT = 120.0

_SAID_CAP = 600
_CONTROLS = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")

# Exit codes of the script, beside git's own.
_OFF_BRANCH = 3
_NOTHING_NEW = 4

# Run by bash inside the sandbox. Arguments: branch, base commit, name, email; the message
# comes on stdin (an argument is limited to 128 KiB), kept in the sandbox's /tmp first so that
# nothing the workspace's config runs can read it away. The identity is given on the command
# line (it beats the workspace's config), and hooks are off (delivery is agentd's step, not
# the repository's); every git writes to stderr except the bundle, the only thing on stdout.
# A lock a killed export left behind (timeout, shutdown) is removed: nothing else runs there.
_SCRIPT = r"""
set -u
branch=$1 base=$2 name=$3 email=$4
message=$(mktemp) && cat > "$message" || exit 1
exec </dev/null
git() {
  command git -c "user.name=$name" -c "user.email=$email" -c core.hooksPath=/dev/null \
    -c core.fsmonitor=false -c core.pager=cat "$@"
}
rm -f -- "$(command git rev-parse --git-path index.lock 2>/dev/null)"
current=$(git symbolic-ref --quiet --short HEAD 2>/dev/null) || current="(detached HEAD)"
if [ "$current" != "$branch" ]; then
  echo "the workspace is on $current, not on its branch $branch" >&2
  exit 3
fi
git add -A >&2 || exit 1
git diff --cached --quiet >&2
case $? in
  0) ;;
  1) git commit --quiet --no-verify --no-gpg-sign --file="$message" >&2 || exit 1 ;;
  *) exit 1 ;;
esac
head=$(git rev-parse --verify --quiet "refs/heads/$branch") || exit 1
[ "$head" = "$base" ] && exit 4
git bundle create --quiet - "refs/heads/$branch" "^$base"
"""


class Confinement(Protocol):
    """How a task's processes run: the tools' sandbox (``TaskSandbox``) satisfies this."""

    def command(self, argv: list[str]) -> tuple[list[str], ProcessOptions]:
        """The full command line for ``argv`` and the options to start it with (env, uid...)."""
        ...


async def export_bundle(
    workspace: Path,
    bundle: Path,
    *,
    branch: str,
    base_commit: str,
    message: str,
    identity: tuple[str, str],
    confinement: Confinement,
    timeout: float = EXPORT_TIMEOUT,
) -> bool:
    """Commit every change in ``workspace`` (``git add -A``) on ``branch`` and write the
    branch's commits since ``base_commit`` to ``bundle``, all inside ``confinement``. False
    when the branch has no commit beyond ``base_commit`` (nothing to deliver, no bundle).

    ``bundle`` is created (mode 0600, truncated) by the daemon; the sandboxed git only gets its
    file descriptor, so it can write that file and nothing else outside the workspace. Hooks
    are skipped (``--no-verify``) and commits are not signed, but whatever the workspace's
    config still runs, runs in the sandbox. Raises PermanentError when the workspace is off
    its branch (``workspace_branch``) or git fails there (``workspace_git``), TransientError
    after ``timeout``.

    Cancellation: the sandbox's process group is killed (bwrap's children die with it); the
    partial bundle is left for the next call, which truncates it.
    """
    name, email = identity
    argv, options = confinement.command(
        ["bash", "--noprofile", "--norc", "-c", _SCRIPT, "agentd-export", branch, base_commit, name, email]
    )
    fd = await trio.to_thread.run_sync(_open_for_writing, bundle)
    try:
        with trio.move_on_after(timeout) as scope:
            returncode, _, stderr = await run_in_group(
                argv,
                options.get("cwd", workspace),
                options["env"],
                stdin=message.encode(),
                stdout=fd,
                pass_fds=options.get("pass_fds", ()),
            )
    finally:
        with trio.CancelScope(shield=True):
            size = await trio.to_thread.run_sync(_close, fd)
    if scope.cancelled_caught:
        raise TransientError(f"committing the workspace timed out after {timeout:g} s", code="git_timeout")
    if returncode == 0 and size == 0:
        # `git bundle create -` writes a file named "-" when the config moves the work tree.
        raise PermanentError(
            "git in the workspace made no bundle of the branch (does the "
            "workspace's git config move its work tree?)",
            code="workspace_git",
        )
    return _verdict(returncode, stderr)


def _close(fd: int) -> int:
    """Close ``fd`` and return the size of the file it wrote."""
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _open_for_writing(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _verdict(returncode: int, stderr: bytes) -> bool:
    if returncode == 0:
        return True
    if returncode == _NOTHING_NEW:
        return False
    # What git said there, as one short line: its last words, without escapes or controls.
    text = _CONTROLS.sub("", stderr.decode("utf-8", errors="replace"))
    said = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    if len(said) > _SAID_CAP:
        said = "…" + said[-_SAID_CAP:]
    if returncode == _OFF_BRANCH:
        raise PermanentError(f"{said}; refusing to commit elsewhere", code="workspace_branch")
    raise PermanentError(
        f"git failed in the workspace (exit {returncode})" + (f": {said}" if said else ""),
        code="workspace_git",
    )
