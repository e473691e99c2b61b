"""The end of a task: commit and push the branch, then open a pull request when possible."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..git import PullRequest, Workspace, check_quota, commit_and_push, open_pull_request
from ..git.export import Confinement
from ..store import NewEvent
from ..supervisor import RunContext, RunResult
from .conversation import commit_message

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
    still opened if that step failed last time. A result and its event are written together.
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
    if pushed is None:
        return RunResult(reason="no changes")
    if (task.diff or {}).get("commit") != pushed.commit:  # not recorded by an earlier attempt
        # The agent decides how many files a push has: the task and its event name the first
        # MAX_FILES_LISTED, and say how many there were.
        files = pushed.files_changed[:MAX_FILES_LISTED]
        diff = {
            "commit": pushed.commit,
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
        task = await ctx.store.update_task(task.id, branch=pushed.branch, diff=diff, events=[announced])
    if task.pr_url is None and token:
        repo = workspace.remote.github(settings.github_web_host)
        if repo is not None:
            url = await open_pull_request(
                settings.github_api,
                token,
                PullRequest(
                    repo.owner,
                    repo.name,
                    head=workspace.branch,
                    base=workspace.base_branch,
                    title=commit_message(task.prompt, summary).splitlines()[0],
                    body=f"{summary or 'Changes made by agentd.'}\n\n---\nPrompt:\n\n{task.prompt}",
                ),
            )
            await ctx.store.update_task(task.id, pr_url=url, events=[NewEvent("git.pr_opened", {"url": url})])
    return RunResult()
