"""The task routes of design §5: create, list, read, events, conversation, follow-ups, cancel.

Every route needs a bearer token; every task route answers 404 for another user's task (never
403). Request shapes are pydantic models given to quart-schema, which validates them (422 on a
mismatch) and generates /openapi.json from them. Bodies are parsed by ``json_input.loads``
(no NaN or infinity: 400); text that can reach a commit is ``json_input.Text``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt
from quart import Blueprint, g
from quart_schema import (
    document_headers, validate_querystring, validate_request, validate_response,
)

from ..errors import InvalidTransition
from ..git import parse_remote
from ..states import TaskStatus
from ..store import Task
from .auth import require_user
from .errors import ApiError
from .json_input import Text
from .session import MAX_SEQ

if TYPE_CHECKING:
    from .app import WebState

# -- request and response shapes (the OpenAPI document is made from these) ----------------------


_MAX_INT = 2**63 - 1  # what either store can hold as a number


class Budget(BaseModel):
    """Caps for this task; each optional, finite and positive. The agent loop enforces them."""

    model_config = ConfigDict(extra="forbid")
    max_turns: StrictInt | None = Field(None, gt=0, le=_MAX_INT)
    max_tokens: StrictInt | None = Field(None, gt=0, le=_MAX_INT)
    max_usd: StrictFloat | StrictInt | None = Field(None, gt=0, le=1e12, allow_inf_nan=False)


class CreateTask(BaseModel):
    """Prompt and base branch end up in a commit and a branch: no control characters
    (``json_input.Text``), refused here rather than at delivery."""

    model_config = ConfigDict(extra="forbid")
    repo_url: Text = Field(min_length=1, max_length=2048)
    prompt: Text = Field(min_length=1, max_length=100_000)
    base_branch: Text | None = Field(None, min_length=1, max_length=255)
    budget: Budget | None = None


class IdempotencyHeaders(BaseModel):
    idempotency_key: str | None = Field(None, max_length=200)


class ListQuery(BaseModel):
    status: TaskStatus | None = None
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(None, pattern=r"^[0-9]{1,18}$")


class EventsQuery(BaseModel):
    after: int = Field(0, ge=0, le=MAX_SEQ)
    limit: int = Field(200, ge=1, le=1000)


class FollowUp(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Text = Field(min_length=1, max_length=100_000)


class UsageOut(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float


class TaskOut(BaseModel):
    id: str
    user_id: int
    repo_url: str
    prompt: str
    base_branch: str | None
    status: TaskStatus
    attempt: int
    due_at: float | None
    reason: str | None
    error: str | None
    budget: dict[str, Any]
    usage: UsageOut
    branch: str | None
    pr_url: str | None
    diff: dict[str, Any] | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    last_seq: int


class TaskList(BaseModel):
    tasks: list[TaskOut]
    next_cursor: str | None


class EventOut(BaseModel):
    type: Literal["event"]
    task_id: str
    seq: int
    event: str
    ts: float
    data: dict[str, Any]


class EventPage(BaseModel):
    events: list[EventOut]
    next_after: int


class Conversation(BaseModel):
    messages: list[dict[str, Any]]


class FollowUpOut(BaseModel):
    task: TaskOut
    event: EventOut


# -- routes ------------------------------------------------------------------------------------


async def event_page(store: Any, task_id: str, after: int, limit: int) -> dict[str, Any]:
    """Stored events with seq > ``after``, in order; ``next_after`` is the next ``after``."""
    events = await store.read_events(task_id, after, limit)
    return {
        "events": [event.wire() for event in events],
        "next_after": events[-1].seq if events else after,
    }


def tasks_blueprint(state: "WebState") -> Blueprint:
    bp = Blueprint("tasks", __name__)
    authed = require_user(lambda: state.auth)

    async def owned(task_id: str) -> Task:
        task = await state.store.get_task(task_id) if len(task_id) <= 64 else None
        if task is None or task.user_id != g.user.id:
            raise ApiError(404, "not_found", f"no task {task_id}")
        return task

    @bp.post("/api/tasks")
    @authed
    @document_headers(IdempotencyHeaders)
    @validate_request(CreateTask)
    @validate_response(TaskOut, 201)
    async def create_task(data: CreateTask):
        """Queue a task. With an ``Idempotency-Key`` the same key returns the first task (200)."""
        from quart import request

        key = request.headers.get("Idempotency-Key") or None
        if key is not None and len(key) > 200:
            raise ApiError(422, "invalid_request", "Idempotency-Key: at most 200 characters")
        parse_remote(data.repo_url, allow_local=state.settings.allow_local_remotes,
                     allow_private=state.settings.allow_private_remotes)
        state.create_limiter.check(g.user.id, "tasks created")
        budget = data.budget.model_dump(exclude_none=True) if data.budget else {}
        task, created = await state.supervisor.submit(
            user_id=g.user.id, repo_url=data.repo_url, prompt=data.prompt,
            base_branch=data.base_branch, budget=budget, idempotency_key=key,
        )
        state.fanout.remember_owner(task.id, task.user_id)
        if not created:
            if (task.repo_url, task.prompt, task.base_branch) != (
                    data.repo_url, data.prompt, data.base_branch):
                raise ApiError(409, "idempotency_conflict",
                               "this Idempotency-Key was used for a different task")
            return task.public(), 200, {"Idempotent-Replayed": "true"}
        return task.public(), 201, {"Location": f"/api/tasks/{task.id}"}

    @bp.get("/api/tasks")
    @authed
    @validate_querystring(ListQuery)
    @validate_response(TaskList)
    async def list_tasks(query_args: ListQuery):
        """The caller's tasks, newest first; pass ``next_cursor`` as ``cursor`` for the next page."""
        rows = await state.store.list_tasks(
            user_id=g.user.id, statuses=[query_args.status] if query_args.status else None,
            before=int(query_args.cursor) if query_args.cursor else None,
            limit=query_args.limit + 1,
        )
        more = len(rows) > query_args.limit
        rows = rows[:query_args.limit]
        return {
            "tasks": [task.public() for _, task in rows],
            "next_cursor": str(rows[-1][0]) if more and rows else None,
        }

    @bp.get("/api/tasks/<task_id>")
    @authed
    @validate_response(TaskOut)
    async def get_task(task_id: str):
        """Status, attempts, usage, branch, pr_url, error and timestamps of one task."""
        return (await owned(task_id)).public()

    @bp.get("/api/tasks/<task_id>/events")
    @authed
    @validate_querystring(EventsQuery)
    @validate_response(EventPage)
    async def task_events(task_id: str, query_args: EventsQuery):
        """Stored events with seq > ``after``, in order; ``next_after`` is the next ``after``."""
        await owned(task_id)
        return await event_page(state.store, task_id, query_args.after, query_args.limit)

    @bp.get("/api/tasks/<task_id>/messages")
    @authed
    @validate_response(Conversation)
    async def task_messages(task_id: str):
        """The conversation with the model (Anthropic-shaped role/content messages)."""
        await owned(task_id)
        return {"messages": await state.store.list_messages(task_id)}

    @bp.post("/api/tasks/<task_id>/messages")
    @authed
    @validate_request(FollowUp)
    @validate_response(FollowUpOut, 202)
    async def follow_up(task_id: str, data: FollowUp):
        """An answer to ``agent.question`` or a follow-up.

        waiting_input: the task is queued again with the answer. queued / running /
        waiting_retry: the agent gets it at its next turn. Finished: queued again with fresh
        attempts, to go on in the same workspace and branch.
        """
        await owned(task_id)
        state.create_limiter.check(g.user.id, "messages")
        event = await state.store.add_input(task_id, data.text)
        task = await _wake(state, task_id)
        return {"task": task.public(), "event": event.wire()}, 202

    @bp.post("/api/tasks/<task_id>/cancel")
    @authed
    @validate_response(TaskOut, 202)
    async def cancel_task(task_id: str):
        """Cancel a task that has not finished (409 when it has)."""
        await owned(task_id)
        task = await state.supervisor.cancel(task_id)
        return task.public(), 202

    return bp


async def _wake(state: "WebState", task_id: str) -> Task:
    """Requeue the task if it is not going to read its inbox by itself.

    The status may change under us (the attempt ends as we look): the transition is made with
    ``expect`` and looked at again when it was refused.
    """
    for _ in range(5):
        task = await state.store.get_task(task_id)
        assert task is not None
        try:
            if task.status is TaskStatus.WAITING_INPUT:
                return await state.supervisor.requeue(task_id, reason="answered")
            if task.status.is_terminal:
                return await state.supervisor.requeue(task_id, reason="follow-up",
                                                      fresh_attempts=True)
            return task
        except InvalidTransition:
            continue
    return task
