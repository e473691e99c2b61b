"""What a person does with tasks: create, list, read, follow, cancel, retry, write to one.

Each function takes the daemon's ``Services`` and the ``Viewer`` asking, applies the rules of
``policy`` and returns typed results (the store's ``Task`` and ``Event``, or the dataclasses
here); front-ends parse their input, call one of these and render what comes back. A task is
named by its whole id, or by an ``IdPrefix`` where the front-end allows it (``policy``). Errors are
``daemon.errors`` types: ``NotFound`` (no such task, or not the viewer's), ``InvalidTransition``
(the task's status does not allow it), ``Conflict``, ``RateLimited``, ``PermanentError`` (a
repository URL refused), ``BadArguments``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import BadArguments, Conflict, Forbidden, InvalidTransition, NotFound
from ..git import parse_remote
from ..states import TaskStatus
from ..store import Event, NewEvent, Task
from . import account, inputs, policy
from .policy import TaskRef, Viewer

if TYPE_CHECKING:
    from ..services import Services

MAX_INT = inputs.MAX_INT
OWNERS_NAMED = 10  # logins listed when the control socket must be told whose task it is
WAKE_TRIES = 5  # a follow-up's requeue raced an attempt's end this many times: leave it be


@dataclass(frozen=True)
class Created:
    """``created`` False: the idempotency key named a task made before, returned as it is."""

    task: Task
    created: bool


@dataclass(frozen=True)
class TaskPage:
    """Tasks newest first; ``next_cursor`` (None on the last page) asks for the next page."""

    tasks: list[Task]
    next_cursor: str | None


@dataclass(frozen=True)
class EventPage:
    """Stored events in order; ``next_after`` is the ``after`` of the next page."""

    events: list[Event]
    next_after: int


@dataclass(frozen=True)
class FollowUp:
    """The task after a follow-up (queued again, or as it was) and the ``user.message`` event."""

    task: Task
    event: Event


async def create_task(
    svc: Services,
    viewer: Viewer,
    repo_url: str,
    prompt: str,
    *,
    base_branch: str | None = None,
    budget: Mapping[str, object] | None = None,
    idempotency_key: str | None = None,
    owner: str | None = None,
    model: str | None = None,
    draft: bool = False,
    pr_title: str | None = None,
) -> Created:
    """Queue a task owned by ``viewer``, or by the user ``owner`` names (a login); ``budget``:
    its caps (``max_turns``, ``max_tokens``, ``max_usd``), each defaulting to the server's.
    ``model``: one of the operator's allowed models (default: the daemon's); ``draft``: open its
    pull request as a draft; ``pr_title``: that pull request's title (default: the prompt's
    first line). The task keeps all three, its follow-ups too.

    Only an operator names another ``owner`` (``Forbidden``). The control socket's operator has
    no account: without ``owner`` its task is the daemon's one user's, and when there are
    several (or none) ``BadArguments`` says which logins there are (``task_owner``).

    The fields are checked first (``inputs``: ``BadArguments``), then the repository URL
    (``PermanentError``), then the owner's create limit (``RateLimited``). An idempotency key
    already used by the owner returns that task (``created`` False), or ``Conflict`` when it
    was used for a different task.
    """
    inputs.check_field("repo_url", repo_url, inputs.MAX_REPO_URL)
    inputs.check_field("prompt", prompt, inputs.MAX_PROMPT)
    if base_branch is not None:
        inputs.check_field("base_branch", base_branch, inputs.MAX_BRANCH)
    budget = inputs.check_budget(budget or {})
    settings = svc.settings
    model = settings.default_model if model is None else inputs.check_model(model, settings.model_prices())
    pr_title = inputs.pr_title_of(prompt) if pr_title is None else inputs.check_pr_title(pr_title)
    if not isinstance(draft, bool):
        raise BadArguments(f"draft: true or false, got {draft!r}")
    parse_remote(
        repo_url, allow_local=settings.allow_local_remotes, allow_private=settings.allow_private_remotes
    )
    user_id = await task_owner(svc, viewer, owner)
    await svc.create_limiter.check(user_id, "tasks created")
    task, created = await svc.supervisor.submit(
        user_id=user_id,
        repo_url=repo_url,
        prompt=prompt,
        base_branch=base_branch,
        budget=budget,
        idempotency_key=idempotency_key,
        model=model,
        draft=draft,
        pr_title=pr_title,
    )
    # A task made before v13 has no options of its own: only what it has is compared.
    made = (task.repo_url, task.prompt, task.base_branch, task.model or model, task.pr_title or pr_title)
    if not created and (*made, task.draft) != (repo_url, prompt, base_branch, model, pr_title, draft):
        raise Conflict("this Idempotency-Key was used for a different task", code="idempotency_conflict")
    return Created(task, created)


async def task_owner(svc: Services, viewer: Viewer, owner: str | None) -> int:
    """The user id a task ``viewer`` creates belongs to: ``owner``'s (a login; another's than
    the viewer's for operators only), else the viewer's own, else (the control socket's
    operator, who has no account) the daemon's one user; ``NotFound`` for no such login,
    ``BadArguments`` for a disabled user or when there is not exactly one user to choose."""
    if viewer.shared_task is not None:
        raise Forbidden("a share link only reads its one task")
    if owner is None or owner == viewer.login:
        if viewer.user_id is not None:
            return viewer.user_id
        users = [user for user in await svc.store.list_users() if not user.disabled]
        if len(users) == 1:
            return users[0].id
        if not users:
            raise BadArguments(
                "a task belongs to a user, and there is none (or each is revoked): "
                "add one with agentctl user-add LOGIN"
            )
        logins = ", ".join(user.login for user in users[:OWNERS_NAMED])
        more = ", ..." if len(users) > OWNERS_NAMED else ""
        raise BadArguments(
            f"whose task is it? name one of the {len(users)} users with --user ({logins}{more})"
        )
    if not viewer.is_operator:
        raise Forbidden("only an operator may create a task for another user")
    user = await svc.store.user_by_login(owner)
    if user is None:
        raise NotFound(f"no user {owner}: agentctl users lists them")
    if user.disabled:
        raise BadArguments(f"user {owner} is disabled (its tokens were revoked): no new tasks for it")
    return user.id


async def list_tasks(
    svc: Services,
    viewer: Viewer,
    *,
    status: TaskStatus | None = None,
    owner: str | None = None,
    mine: bool = False,
    limit: int = 50,
    cursor: str | None = None,
) -> TaskPage:
    """Tasks newest first, ``limit`` at most, after ``cursor`` (a ``next_cursor``).

    ``owner``: only this login's tasks (``NotFound`` when there is no such user); ``mine``:
    only the viewer's own. A viewer who is not an operator always gets only its own.
    """
    if limit < 1:
        raise BadArguments(f"limit must be at least 1, got {limit}")
    if cursor is not None and not (cursor.isdigit() and len(cursor) <= 18):
        raise BadArguments(f"cursor must be a next_cursor from an earlier page, got {cursor!r}")
    user = await svc.store.user_by_login(owner) if owner else None
    if owner and user is None:
        raise NotFound(f"no user {owner}")
    rows = await svc.store.list_tasks(
        user_id=policy.owner_filter(viewer, user, mine=mine),
        statuses=[status] if status else None,
        before=int(cursor) if cursor else None,
        limit=min(limit, MAX_INT - 1) + 1,  # one more: is there a next page?
    )
    page = rows[:limit]
    return TaskPage([task for _, task in page], str(page[-1][0]) if len(rows) > limit and page else None)


async def get_task(svc: Services, viewer: Viewer, task_id: TaskRef) -> Task:
    """The task, if the viewer may see it (``NotFound`` otherwise)."""
    return await policy.visible_task(svc.store, viewer, task_id)


async def events_page(
    svc: Services, viewer: Viewer, task_id: TaskRef, *, after: int = 0, limit: int = 200
) -> EventPage:
    """The task's stored events with seq > ``after``, ``limit`` at most, in order."""
    task = await policy.visible_task(svc.store, viewer, task_id)
    events = await svc.store.read_events(task.id, after, limit)
    return EventPage(events, events[-1].seq if events else after)


async def conversation(svc: Services, viewer: Viewer, task_id: TaskRef) -> list[dict[str, Any]]:
    """The task's conversation with the model (Anthropic-shaped role/content messages)."""
    task = await policy.visible_task(svc.store, viewer, task_id)
    return await svc.store.list_messages(task.id)


async def cancel_task(svc: Services, viewer: Viewer, task_id: TaskRef) -> Task:
    """Cancel a task that has not finished (``InvalidTransition`` when it has); a running one
    is stopped first. Cancellation: as ``Supervisor.cancel``."""
    task = await policy.visible_task(svc.store, viewer, task_id)
    policy.check_cancel(task)
    return await svc.supervisor.cancel(task.id)


async def retry_task(svc: Services, viewer: Viewer, task_id: TaskRef) -> Task:
    """Queue the task again with fresh attempts, as ``policy.check_retry`` allows.

    A status change since the task was read here is refused (``InvalidTransition``), never
    retried blindly: the supervisor's transition expects the status that was checked.
    """
    task = await policy.visible_task(svc.store, viewer, task_id)
    policy.check_retry(viewer, task)
    reason = f"retried by operator {viewer.login}" if viewer.login else "retried by operator"
    return await svc.supervisor.requeue(task.id, reason=reason, fresh_attempts=True, expect=task.status)


async def follow_up(
    svc: Services, viewer: Viewer, task_id: TaskRef, text: str, budget: Mapping[str, object] | None = None
) -> FollowUp:
    """Write ``text`` to the task's inbox (an answer to ``agent.question``, or a follow-up).

    Then: ``waiting_input``, the task is queued again with the answer; queued, running or
    ``waiting_retry``, the agent reads it at its next turn; finished, it is queued again with
    fresh attempts, to go on in the same workspace and branch. Neither spends an attempt.
    Follow-ups count against the viewer's create limit (``RateLimited``); ``text`` is checked
    as a prompt is (``inputs``). ``budget`` (the shape ``create_task`` takes) raises the task's
    caps, each up to the operator's (``inputs.raised_budget``: ``BadArguments`` above it or
    below what the task has, and then nothing is written); it is recorded, with a
    ``task.budget`` event, before the message, and an attempt reads its budget as it starts.
    """
    inputs.check_field("text", text, inputs.MAX_PROMPT)
    asked = inputs.check_budget(budget or {})
    task = await policy.visible_task(svc.store, viewer, task_id)
    await svc.create_limiter.check(viewer.user_id, "messages")
    if asked:
        offered = account.client_config(svc)
        raised = inputs.raised_budget(task.budget, asked, offered.budget_defaults, offered.budget_caps)
        await svc.store.update_task(
            task.id, budget=raised, events=[NewEvent("task.budget", {"budget": raised})]
        )
    event = await svc.store.add_input(task.id, text)
    return FollowUp(await _wake(svc, viewer, task.id), event)


async def _wake(svc: Services, viewer: Viewer, task_id: str) -> Task:
    """Queue the task again if it is not going to read its inbox by itself.

    The status is read after the message is stored, and may change under us (the attempt ends
    as we look): the requeue expects the status read, and a refused one is looked at again.
    """
    for _ in range(WAKE_TRIES):
        task = await policy.visible_task(svc.store, viewer, task_id)
        try:
            if task.status is TaskStatus.WAITING_INPUT:
                return await svc.supervisor.requeue(task_id, reason="answered", expect=task.status)
            if task.status.is_terminal:
                return await svc.supervisor.requeue(
                    task_id, reason="follow-up", fresh_attempts=True, expect=task.status
                )
            return task
        except InvalidTransition:
            continue
    return task


async def follow_task(
    svc: Services, viewer: Viewer, task_id: TaskRef, after: int = 0
) -> AsyncIterator[Event]:
    """The task's events after ``after``: the stored ones, then live ones as they are committed,
    up to ``task.finished``. A finished task with nothing after ``after`` gives nothing.

    Cancellation (the caller stops iterating or is cancelled): the live subscription ends.
    """
    task = await policy.visible_task(svc.store, viewer, task_id)
    if task.status.is_terminal and after >= task.last_seq:
        return
    async for event in svc.hub.follow(task.id, after):
        if isinstance(event, Event):  # always, without ``ephemeral``
            yield event
            if event.type == "task.finished":
                return
