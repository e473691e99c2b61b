"""A task's row decoded into a ``Task``: the same columns and JSON text on both backends.

Each backend selects the columns in this order (SQLite: ``sqlite_queries``; PostgreSQL:
``postgres_claims.TASK_COLUMNS``) and decodes the row here; ``sqlite_queries`` re-exports
``task_from_row`` for the modules that import it from there.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..states import TaskStatus
from .models import NewTask, Task, Usage

# The columns a new task's row is inserted with, in the order of ``new_task_values``.
NEW_TASK_COLUMNS = (
    "id, user_id, repo_url, prompt, base_branch, status, budget, "
    "created_at, updated_at, idempotency_key, model, draft, pr_title"
)


def new_task_values(new: NewTask, prompt: str | None, budget_json: str, now: float) -> tuple[Any, ...]:
    """The values of ``NEW_TASK_COLUMNS`` for ``new``, queued at ``now``; ``prompt`` and
    ``budget_json`` as the backend stores them."""
    return (
        new.id,
        new.user_id,
        new.repo_url,
        prompt,
        new.base_branch,
        TaskStatus.QUEUED.value,
        budget_json,
        now,
        now,
        new.idempotency_key,
        new.model,
        new.draft,
        new.pr_title,
    )


def task_from_row(row: Sequence[Any]) -> Task:
    (
        tid,
        user_id,
        repo_url,
        prompt,
        base_branch,
        status,
        attempt,
        created_at,
        updated_at,
        due_at,
        reason,
        error,
        budget,
        usage,
        branch,
        pr_url,
        diff,
        started_at,
        finished_at,
        last_seq,
        idem,
        node_id,
        workspace_branch,
        model,
        draft,
        pr_title,
        compacted_at,
    ) = row
    # Most rows hold the empty budget and usage: every status change reads a row, so skip
    # the JSON decoder for them.
    return Task(
        id=tid,
        user_id=user_id,
        repo_url=repo_url,
        prompt=prompt,
        base_branch=base_branch,
        status=_STATUSES[status],
        attempt=attempt,
        created_at=created_at,
        updated_at=updated_at,
        due_at=due_at,
        reason=reason,
        error=error,
        budget={} if budget == "{}" else json.loads(budget),
        usage=_NO_USAGE if usage == "{}" else Usage(**json.loads(usage)),
        branch=branch,
        pr_url=pr_url,
        diff=json.loads(diff) if diff else None,
        started_at=started_at,
        finished_at=finished_at,
        last_seq=last_seq,
        idempotency_key=idem,
        node_id=node_id,
        workspace_branch=workspace_branch,
        model=model,
        draft=bool(draft),
        pr_title=pr_title,
        compacted_at=compacted_at,
    )


_STATUSES = {status.value: status for status in TaskStatus}
_NO_USAGE = Usage()
