"""A task's story in the log: one INFO line per step of its life, its id in a field.

The lines, each with ``task_id``: ``task created`` (``user_id``, ``repo``, ``base_branch``,
``prompt_chars``); then, each with the task's ``attempt``: ``task started`` (``node``),
``attempt failed`` (``reason``, ``delay_s`` until the next one), ``task waiting for input``,
``task finished`` (``outcome``, ``reason``, ``error``, ``attempts`` and the usage:
``input_tokens``, ``output_tokens``, ``cache_read_tokens``, ``cache_write_tokens``,
``cost_usd``), ``task cancelled`` and ``task queued again`` (``reason``). Each is written
where the step is decided, once it has committed. What users wrote (the prompt, their answers)
and credentials in a repository URL never reach a line: the prompt's length does, the URL
without its user part.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..states import TaskStatus
from ..store import Task, Transition

log = logging.getLogger(__name__)

_MESSAGES = {
    TaskStatus.QUEUED: "task queued again",
    TaskStatus.RUNNING: "task started",
    TaskStatus.WAITING_RETRY: "attempt failed",
    TaskStatus.WAITING_INPUT: "task waiting for input",
    TaskStatus.SUCCEEDED: "task finished",
    TaskStatus.FAILED: "task finished",
    TaskStatus.CANCELLED: "task cancelled",
}


def created(task: Task) -> None:
    log.info(
        "task created",
        extra={
            "task_id": task.id,
            "user_id": task.user_id,
            "repo": repo_for_log(task.repo_url),
            "base_branch": task.base_branch,
            "prompt_chars": len(task.prompt),
        },
    )


def started(task: Task) -> None:
    """An attempt of ``task`` started (however it was admitted: started, claimed, created so)."""
    changed(task, Transition(task.id, TaskStatus.RUNNING, node_id=task.node_id))


def changed(task: Task, change: Transition, delay_s: float | None = None) -> None:
    """Log ``change``, which made ``task`` what it is now (``delay_s``: a retry's delay)."""
    fields: dict[str, Any] = {"task_id": task.id, "attempt": task.attempt}
    target = change.target
    if target is TaskStatus.RUNNING:
        fields["node"] = task.node_id
    if target is TaskStatus.WAITING_RETRY:
        fields.update(reason=change.reason, delay_s=None if delay_s is None else round(delay_s, 3))
    elif target in (TaskStatus.QUEUED, TaskStatus.CANCELLED):
        fields["reason"] = change.reason
    elif target.is_terminal:  # succeeded or failed
        fields.update(
            outcome=target.value,
            reason=change.reason,
            error=change.error,
            attempts=task.attempt,
            **task.usage.__dict__,
        )
    log.info(_MESSAGES[target], extra=fields)


def repo_for_log(url: str) -> str:
    """``url`` without a user name or password (``https://user:token@host/x`` -> ``https://host/x``)."""
    if "://" not in url:
        return url  # a path, or scp-like ``git@host:owner/repo`` (no secret there)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))
