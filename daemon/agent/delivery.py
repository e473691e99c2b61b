"""The end of a task: commit and push the branch, then open a pull request when possible."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..git import (
    GitAuth,
    PullRequest,
    PushResult,
    Workspace,
    check_quota,
    commit_and_push,
    open_pull_request,
)
from ..git.export import Confinement
from ..git.pushed import branch_head
from ..store import NewEvent, Task
from ..supervisor import RunContext, RunResult
from .conversation import commit_message
from .resume import pushed_branch

if TYPE_CHECKING:
    from .loop import AgentSettings

MAX_FILES_LISTED = 1000


async def deliver(
    ctx: RunContext,
    workspace: Workspace,
    *,
    token: str | None,
    summary: str,
    settings: AgentSettings,
    confinement: Confinement,
) -> RunResult:
    """Push what changed (``git.pushed``) and open a PR (``git.pr_opened``); idempotent on resume.

    The commit is made in the task's sandbox (``confinement``), the push from agentd's own
    copy of the repository (``daemon/git/workspace.py``).
    A push that happened in an earlier attempt is not repeated nor announced twice; its PR is
    still opened if that step failed last time, also when this attempt has nothing new to push
    (its workspace made again from the pushed branch: a retry or a follow-up after workspace
    gc, or on another node): then the task succeeds with no reason, its work delivered. With
    nothing new to push and nothing left to deliver (its PR open, or none to open), it succeeds
    with ``no changes``. GitHub's "already exists" answer records the open PR of the branch
    (``open_pull_request``): never two. A result and its event are written together.
    Cancellation: the running git process is killed; the next attempt picks up from what
    reached the remote.
    """
    await check_quota(workspace, settings.quota_bytes)
    await ctx.check_held()
    pushed = await commit_and_push(
        workspace,
        commit_message(ctx.task.prompt, summary),
        token=token,
        confinement=confinement,
        identity=settings.identity,
        ssh_key=settings.ssh_key,
        allow_private=settings.allow_local_remotes or settings.allow_private_remotes,
    )
    task = await ctx.store.get_task(ctx.task.id) or ctx.task
    repo = workspace.remote.github(settings.github_web_host) if token else None
    if pushed is not None:
        if (task.diff or {}).get("commit") != pushed.commit:  # not recorded by an earlier attempt
            task = await _record_push(ctx, task, pushed, base=workspace.diff_base)
    elif not (repo is not None and await _owes_pull_request(task, workspace, token, settings)):
        return RunResult(reason="no changes")
    if task.pr_url is None and token and repo is not None:
        url = await open_pull_request(
            settings.github_api,
            token,
            PullRequest(
                repo.owner,
                repo.name,
                head=workspace.branch,
                base=workspace.base_branch,
                # The task's own title (the user's, or its prompt's first line), never the
                # model's words; a task made before v13 has none.
                title=task.pr_title or commit_message(task.prompt, summary).splitlines()[0],
                body=f"{summary or 'Changes made by agentd.'}\n\n---\nPrompt:\n\n{task.prompt}",
                draft=task.draft,
            ),
        )
        await ctx.store.update_task(task.id, pr_url=url, events=[NewEvent("git.pr_opened", {"url": url})])
    return RunResult()


async def _record_push(ctx: RunContext, task: Task, pushed: PushResult, *, base: str) -> Task:
    """``pushed`` on the task and as its ``git.pushed`` event, written together. ``base``, the
    commit its counts are from, is kept with it: a workspace re-created from the pushed branch
    counts from there too (``daemon/git/pushed.py``)."""
    # The agent decides how many files a push has: the task and its event name the first
    # MAX_FILES_LISTED, and say how many there were.
    files = pushed.files_changed[:MAX_FILES_LISTED]
    diff = {
        "commit": pushed.commit,
        "base": base,
        "files": files,
        "files_total": len(pushed.files_changed),
        "lines_added": pushed.lines_added,
        "lines_removed": pushed.lines_removed,
    }
    announced = NewEvent(
        "git.pushed",
        {
            "branch": pushed.branch,
            "commit": pushed.commit,
            "files_changed": files,
            "files_total": len(pushed.files_changed),
        },
    )
    return await ctx.store.update_task(task.id, branch=pushed.branch, diff=diff, events=[announced])


async def _owes_pull_request(
    task: Task, workspace: Workspace, token: str | None, settings: AgentSettings
) -> bool:
    """Whether an earlier attempt pushed the workspace's branch, that branch is still on the
    remote, and its PR was never recorded: then it is opened although nothing new was pushed.

    The remote is asked (one ``git ls-remote``) only when the task's record says so: a branch
    deleted there since has nothing to open a PR from.
    """
    if (
        task.pr_url is not None
        or (earlier := pushed_branch(task)) is None
        or earlier.branch != workspace.branch
    ):
        return False
    head = await branch_head(
        workspace.remote,
        workspace.branch,
        auth=GitAuth(token=token, ssh_key=settings.ssh_key),
        allow_local=settings.allow_local_remotes,
        allow_private=settings.allow_local_remotes or settings.allow_private_remotes,
    )
    return head is not None
