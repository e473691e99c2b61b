"""Iterating on review: what a task's pull request's reviewers and checks ask for becomes the
task's next user turn, on the same task, workspace and branch, so its next push updates the
same pull request (delivery opens one only while the task has none)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import Conflict
from ..git.github_reviews import parse_pull_url, read_feedback, render_turn
from . import policy
from .policy import TaskRef, Viewer
from .repos import github_token
from .tasks import FollowUp, follow_up

if TYPE_CHECKING:
    from ..services import Services


async def review_task(svc: Services, viewer: Viewer, task_id: TaskRef) -> FollowUp:
    """Read the task's pull request's reviews, review threads and failing checks with the task
    owner's GitHub token, and hand them to the agent as a follow-up (``tasks.follow_up``).

    ``Conflict``: the task has no pull request on ``github_web_host``, its owner has no GitHub
    token, or there is nothing to address (and then the task is not woken). GitHub's refusals
    and outages are ``PermanentError`` and ``TransientError`` (``github_reviews``).
    Cancellation: the requests to GitHub are abandoned and nothing is written.
    """
    task = await policy.visible_task(svc.store, viewer, task_id)
    pull = parse_pull_url(task.pr_url or "", svc.settings.github_web_host)
    if pull is None:
        raise Conflict("this task has no pull request")
    token = await github_token(svc, task.user_id)
    if token is None:
        raise Conflict("the task's owner has no GitHub token here: sign in with GitHub again")
    feedback = await read_feedback(svc.settings.github_api, token, pull)
    if feedback.empty:
        raise Conflict("the pull request has no review comments or failing checks")
    return await follow_up(svc, viewer, task.id, render_turn(feedback, pull))
