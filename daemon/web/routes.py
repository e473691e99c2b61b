"""The phone API's task routes (design §5): parse the request, call one use case, render.

Every route needs a bearer token; a task that is not the caller's is a 404, never a 403 (the
use cases' policy). Request shapes are pydantic models given to quart-schema, which validates
them (422 on a mismatch) and generates /openapi.json from them, every field described. Bodies
are parsed by ``json_input.loads`` (no NaN or infinity: 400); text that can reach a commit is
``json_input.Text``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt
from quart import Blueprint, request
from quart.typing import ResponseReturnValue
from quart_schema import document_headers, validate_querystring, validate_request, validate_response

from .. import usecases
from ..states import TaskStatus
from ..usecases.inputs import MAX_INT, MAX_PR_TITLE
from .auth import require_user, services, viewer
from .errors import ApiError
from .json_input import Text
from .session import MAX_SEQ

CURSOR = r"^[0-9]{1,18}$"

# -- request and response shapes (the OpenAPI document is made from these) ----------------------


class Budget(BaseModel):
    """Caps for this task; each optional, finite and positive. The agent loop enforces them."""

    model_config = ConfigDict(extra="forbid")
    max_turns: StrictInt | None = Field(None, gt=0, le=MAX_INT, description="Model turns at most.")
    max_tokens: StrictInt | None = Field(
        None, gt=0, le=MAX_INT, description="Input, output and cache-write tokens at most."
    )
    max_usd: StrictFloat | StrictInt | None = Field(
        None, gt=0, le=1e12, allow_inf_nan=False, description="Model cost in US dollars at most."
    )


class CreateTask(BaseModel):
    """A task to queue. Prompt and base branch end up in a commit and a branch: no control
    characters (``json_input.Text``), refused here rather than at delivery."""

    model_config = ConfigDict(extra="forbid")
    repo_url: Text = Field(
        min_length=1, max_length=2048, description="The git repository to work on (https, ssh or git URL)."
    )
    prompt: Text = Field(min_length=1, max_length=100_000, description="What the agent is to do.")
    base_branch: Text | None = Field(
        None, min_length=1, max_length=255, description="Branch to start from; default: the remote's HEAD."
    )
    budget: Budget | None = Field(None, description="Caps for this task; default: the server's.")
    model: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The model to run it on, one of the operator's (GET /api/client-config lists them "
        "with their prices); default: the server's. Another is refused (422) with the allowed ones named.",
    )
    draft: StrictBool = Field(False, description="Open its pull request as a draft.")
    pr_title: Text | None = Field(
        None,
        min_length=1,
        max_length=MAX_PR_TITLE,
        description="Its pull request's title, one line; default: the prompt's first line, trimmed.",
    )


class IdempotencyHeaders(BaseModel):
    idempotency_key: str | None = Field(
        None,
        max_length=200,
        description=("Any string of yours: the same key again returns the first task instead of a new one."),
    )


class ListQuery(BaseModel):
    status: TaskStatus | None = Field(None, description="Only tasks in this status.")
    limit: int = Field(50, ge=1, le=200, description="Tasks per page.")
    cursor: str | None = Field(None, pattern=CURSOR, description="A page's next_cursor: the next page.")


class EventsQuery(BaseModel):
    after: int = Field(0, ge=0, le=MAX_SEQ, description="Only events with a greater seq.")
    limit: int = Field(200, ge=1, le=1000, description="Events at most.")


class FollowUp(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Text = Field(
        min_length=1, max_length=100_000, description="The answer to the agent's question, or more to do."
    )
    budget: Budget | None = Field(
        None,
        description="Raise the task's caps (each up to the server's cap; lowering one is refused).",
    )


class UsageOut(BaseModel):
    """What the task's model calls used, summed over its turns."""

    input_tokens: int = Field(description="Input tokens, cache reads and writes left out.")
    output_tokens: int = Field(description="Output tokens.")
    cache_read_tokens: int = Field(description="Input tokens read from the prompt cache.")
    cache_write_tokens: int = Field(description="Input tokens written to the prompt cache.")
    cost_usd: float = Field(description="Cost in US dollars, from the per-model price table.")


class TaskOut(BaseModel):
    """A task as its owner sees it."""

    id: str = Field(description="The task's id.")
    user_id: int = Field(description="Its owner's user id.")
    repo_url: str = Field(description="The repository it works on.")
    prompt: str = Field(description="What it was asked to do.")
    base_branch: str | None = Field(description="The branch it started from (null: the remote's HEAD).")
    status: TaskStatus = Field(description="Where it is in its life (README: How a task runs).")
    attempt: int = Field(description="Attempts counted so far.")
    due_at: float | None = Field(description="waiting_retry: when it runs again (Unix time).")
    reason: str | None = Field(description="Why it last changed status.")
    error: str | None = Field(description="failed: what went wrong.")
    budget: dict[str, Any] = Field(description="Its caps: max_turns, max_tokens, max_usd.")
    usage: UsageOut = Field(description="What its model calls used.")
    branch: str | None = Field(description="The branch it pushed.")
    pr_url: str | None = Field(description="The pull request it opened.")
    diff: dict[str, Any] | None = Field(description="The files its commit changed and their number.")
    created_at: float = Field(description="When it was created (Unix time).")
    updated_at: float = Field(description="When it last changed (Unix time).")
    started_at: float | None = Field(description="When its first attempt started (Unix time).")
    finished_at: float | None = Field(description="When it finished (Unix time).")
    last_seq: int = Field(description="The seq of its newest event.")
    model: str | None = Field(description="The model it runs on (null: made before models were chosen).")
    draft: bool = Field(description="Whether its pull request opens as a draft.")
    pr_title: str | None = Field(description="Its pull request's title.")
    compacted_at: float | None = Field(
        None,
        description="When retention removed its history (Unix time; null: never): its events but "
        "the last, its conversation and tool calls are gone after retention_days; this summary stays.",
    )


class TaskList(BaseModel):
    """One page of the caller's tasks, newest first."""

    tasks: list[TaskOut] = Field(description="The tasks of this page.")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null: the last page.")


class EventOut(BaseModel):
    """One stored event of a task, as the WebSocket sends it."""

    type: Literal["event"] = Field(description="Always event.")
    task_id: str = Field(description="The task's id.")
    seq: int = Field(description="Its place among the task's events: 1, 2, 3... without gaps.")
    event: str = Field(description="What happened: task.status, agent.text, git.pushed...")
    ts: float = Field(description="When it was stored (Unix time).")
    data: dict[str, Any] = Field(description="The event's details; their shape depends on event.")


class EventPage(BaseModel):
    """Stored events in order."""

    events: list[EventOut] = Field(description="The events of this page.")
    next_after: int = Field(description="Pass as after for the next page.")


class Conversation(BaseModel):
    """The task's conversation with the model."""

    messages: list[dict[str, Any]] = Field(description="Anthropic-shaped role/content messages.")


class FollowUpOut(BaseModel):
    """The task after the message, and the message as stored."""

    task: TaskOut = Field(description="The task: queued again, or as it was (see the route).")
    event: EventOut = Field(description="The user.message event stored.")


async def event_page(
    task_id: usecases.TaskRef, query: EventsQuery, who: usecases.Viewer | None = None
) -> dict[str, Any]:
    """The caller's (or ``who``'s) page of the task's events, rendered (the phone's, the
    admin's and the share link's route)."""
    who = who if who is not None else viewer()
    page = await usecases.events_page(services(), who, task_id, after=query.after, limit=query.limit)
    return {"events": [event.wire() for event in page.events], "next_after": page.next_after}


# -- routes ------------------------------------------------------------------------------------

bp = Blueprint("tasks", __name__)


@bp.post("/api/tasks")
@require_user
@document_headers(IdempotencyHeaders)
@validate_request(CreateTask)
@validate_response(TaskOut, 201)
async def create_task(data: CreateTask) -> ResponseReturnValue:
    """Queue a task.

    With an ``Idempotency-Key``, the same key again returns the first task (200, header
    ``Idempotent-Replayed: true``); the key used for a different task is a 409.
    """
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and len(key) > 200:
        raise ApiError(422, "invalid_request", "Idempotency-Key: at most 200 characters")
    budget = data.budget.model_dump(exclude_none=True) if data.budget else {}
    result = await usecases.create_task(
        services(),
        viewer(),
        data.repo_url,
        data.prompt,
        base_branch=data.base_branch,
        budget=budget,
        idempotency_key=key,
        model=data.model,
        draft=data.draft,
        pr_title=data.pr_title,
    )
    if not result.created:
        return result.task.public(), 200, {"Idempotent-Replayed": "true"}
    return result.task.public(), 201, {"Location": f"/api/tasks/{result.task.id}"}


@bp.get("/api/tasks")
@require_user
@validate_querystring(ListQuery)
@validate_response(TaskList)
async def list_tasks(query_args: ListQuery) -> ResponseReturnValue:
    """The caller's tasks, newest first.

    Pass ``next_cursor`` as ``cursor`` for the next page.
    """
    page = await usecases.list_tasks(
        services(),
        viewer(),
        status=query_args.status,
        mine=True,
        limit=query_args.limit,
        cursor=query_args.cursor,
    )
    return {"tasks": [task.public() for task in page.tasks], "next_cursor": page.next_cursor}


@bp.get("/api/tasks/<task_id>")
@require_user
@validate_response(TaskOut)
async def get_task(task_id: str) -> ResponseReturnValue:
    """One task.

    Status, attempts, usage, branch, pr_url, error and timestamps.
    """
    return (await usecases.get_task(services(), viewer(), task_id)).public()


@bp.get("/api/tasks/<task_id>/events")
@require_user
@validate_querystring(EventsQuery)
@validate_response(EventPage)
async def task_events(task_id: str, query_args: EventsQuery) -> ResponseReturnValue:
    """The task's stored events.

    Those with seq > ``after``, in order; ``next_after`` is the next ``after``.
    """
    return await event_page(task_id, query_args)


@bp.get("/api/tasks/<task_id>/messages")
@require_user
@validate_response(Conversation)
async def task_messages(task_id: str) -> ResponseReturnValue:
    """The task's conversation with the model.

    Anthropic-shaped role/content messages, oldest first.
    """
    return {"messages": await usecases.conversation(services(), viewer(), task_id)}


@bp.post("/api/tasks/<task_id>/messages")
@require_user
@validate_request(FollowUp)
@validate_response(FollowUpOut, 202)
async def follow_up(task_id: str, data: FollowUp) -> ResponseReturnValue:
    """An answer to ``agent.question``, or a follow-up.

    waiting_input: the task is queued again with the answer. queued / running /
    waiting_retry: the agent gets it at its next turn. Finished: queued again with fresh
    attempts, to go on in the same workspace and branch. None spends an attempt. ``budget``
    raises the task's caps; 422 when one is above the server's cap or below the task's own.
    """
    budget = data.budget.model_dump(exclude_none=True) if data.budget else None
    done = await usecases.follow_up(services(), viewer(), task_id, data.text, budget)
    return {"task": done.task.public(), "event": done.event.wire()}, 202


@bp.post("/api/tasks/<task_id>/review")
@require_user
@validate_response(FollowUpOut, 202)
async def review_task(task_id: str) -> ResponseReturnValue:
    """Iterate on review: the pull request's feedback becomes the task's next message.

    The reviews, review threads and failing checks of the task's pull request, read from
    GitHub with the task owner's token, are sent as a follow-up: the task goes on in the same
    workspace and branch, and its next push updates the same pull request. 409 when the task
    has no pull request or there is nothing to address (the task is not woken).
    """
    done = await usecases.review_task(services(), viewer(), task_id)
    return {"task": done.task.public(), "event": done.event.wire()}, 202


@bp.post("/api/tasks/<task_id>/cancel")
@require_user
@validate_response(TaskOut, 202)
async def cancel_task(task_id: str) -> ResponseReturnValue:
    """Cancel a task.

    One that has not finished; 409 when it has.
    """
    return (await usecases.cancel_task(services(), viewer(), task_id)).public(), 202


class TaskDiff(BaseModel):
    """The task's pushed work as a patch, from the commit it started at to the one it pushed."""

    task_id: str = Field(description="The task's id.")
    branch: str | None = Field(description="The branch it pushed.")
    base_commit: str = Field(description="The commit the task started from.")
    commit: str = Field(description="The commit it pushed last.")
    patch: str = Field(
        description="git's unified diff, uncoloured (binary files named, not shown): untrusted "
        "text, the agent's own, to show as text."
    )
    truncated: bool = Field(description="Whether the patch was cut (at a line end) to 1 MiB.")
    bytes: int = Field(description="The patch's size in bytes.")


@bp.get("/api/tasks/<task_id>/diff")
@require_user
@validate_response(TaskDiff)
async def task_diff(task_id: str) -> ResponseReturnValue:
    """The task's pushed diff, as a patch.

    From the commit it started at to the commit it pushed last; 404 while it has pushed
    nothing, or once its workspace is removed.
    """
    return render_patch(await usecases.task_patch(services(), viewer(), task_id))


def render_patch(done: usecases.TaskPatch) -> dict[str, Any]:
    """A ``TaskDiff`` body (the owner's route and the share link's)."""
    return {
        "task_id": done.task_id,
        "branch": done.branch,
        "base_commit": done.base_commit,
        "commit": done.commit,
        "patch": done.patch.text,
        "truncated": done.patch.truncated,
        "bytes": done.patch.size,
    }
