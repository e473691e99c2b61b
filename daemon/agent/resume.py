"""What the model is told when a task goes on after its last attempt ended: how its workspace
was made again, and why a tool call it started has no result.

Both are read from the task's own records (its pushed branch and commit, its ``task.status``
events): nothing the agent wrote decides them.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..git import Workspace
from ..git.pushed import PushedBranch
from ..states import REASON_LEASE_LOST, REASON_MAX_DURATION, REASON_TAKEN_OVER
from ..store import Event, Store, Task
from .conversation import Interruption

WORKSPACE_RESET = """\
[agentd] This task moved to another machine, and its workspace there could not come along. \
{path} is now a fresh clone of {base}, on the new branch {branch}. The changes you made to files \
earlier in this task are not in it (earlier tool results describe a workspace that is gone). Look \
at the files, redo what is still needed, and finish as before."""

# A workspace re-created from the task's pushed branch (``Workspace.restored``): gone because
# workspace gc removed it after the task finished, or because the task moved to another machine
# (this node cannot tell which: both leave no workspace here).
_GONE = "[agentd] The workspace was removed (after the task finished, or left on another machine)"
WORKSPACE_RESTORED = (
    _GONE
    + """; it was re-created from your pushed branch {branch} at commit {commit}. Uncommitted \
files from before are gone; everything you pushed is there. Your next changes are pushed to \
the same branch."""
)
WORKSPACE_RESTORED_MOVED = (
    _GONE
    + """; it was re-created from your pushed branch {branch}, which is now at commit {head}, \
not at {commit} where agentd pushed it: someone changed the branch since. Look at what changed \
before going on. Uncommitted files from before are gone. Your next changes are pushed to the \
same branch."""
)
WORKSPACE_RESTORED_GONE = (
    _GONE
    + """, and your pushed branch {branch} is no longer on the remote: {path} is a fresh clone \
of {base}, without the commits you pushed before (earlier tool results describe files that are \
gone). Redo what is still needed; your changes are pushed to {branch} again."""
)


def workspace_note(w: Workspace) -> str:
    """What the model is told of a workspace made again for a task it already worked on."""
    r = w.restored
    if r is None:
        return WORKSPACE_RESET.format(path=w.path, base=w.base_branch, branch=w.branch)
    if r.head is None:
        return WORKSPACE_RESTORED_GONE.format(branch=r.pushed.branch, path=w.path, base=w.base_branch)
    template = WORKSPACE_RESTORED_MOVED if r.moved else WORKSPACE_RESTORED
    return template.format(branch=r.pushed.branch, commit=r.pushed.commit, head=r.head)


def pushed_branch(task: Task) -> PushedBranch | None:
    """The branch and commit agentd pushed for ``task`` and the base its diff counts from (its
    record; no base for a push recorded before it was kept), None before a push."""
    diff = task.diff or {}
    commit, base = diff.get("commit"), diff.get("base")
    if not task.branch or not isinstance(commit, str):
        return None
    return PushedBranch(task.branch, commit, base if isinstance(base, str) else None)


# How far back the end of the previous attempt is looked for: between it and the running
# attempt's start there are only the few events of a requeue (a message, a budget, statuses).
_LOOK_BACK = 64


async def last_interruption(store: Store, task: Task) -> Interruption:
    """How the attempt before this one (``task`` as admitted) ended, from its status events.

    An end that was never recorded, or one that says nothing more precise, is a restart: the
    only way for an attempt to end unrecorded is for its daemon to die.
    """
    events = await store.read_events(task.id, after=max(0, task.last_seq - _LOOK_BACK), limit=2 * _LOOK_BACK)
    return interruption_of(events)


def interruption_of(events: Sequence[Event]) -> Interruption:
    """The cause in ``events`` (the latest of a task's, oldest first): the first status after
    the previous attempt's ``running``, that attempt's end."""
    statuses = [e.data for e in events if e.type == "task.status"]
    if statuses and statuses[-1].get("status") == "running":
        statuses.pop()  # the attempt running now
    since = len(statuses)
    while since > 0 and statuses[since - 1].get("status") != "running":
        since -= 1
    if since == len(statuses):  # nothing after it: the end was never recorded
        return Interruption.RESTART
    end = statuses[since]
    reason = str(end.get("reason") or "")
    if end.get("status") == "cancelled":
        return Interruption.CANCEL
    if reason.startswith(REASON_TAKEN_OVER) or reason == REASON_LEASE_LOST:
        return Interruption.TAKEOVER
    if reason == REASON_MAX_DURATION:
        return Interruption.TIMEOUT
    return Interruption.RESTART
