"""The use cases: every action a person takes on agentd, behind the phone API, the operator view
and the control socket alike.

Each is a typed async function (a plain one where nothing waits) taking the daemon's
``Services`` first and, for tasks, the ``Viewer`` asking; the rules of who may do what in which
status live in ``policy`` and nowhere else. Front-ends parse, call one function, render the
typed result, and turn ``daemon.errors`` into their own answers (HTTP status, control code).
"""

from .account import ClientConfig, Me, ModelChoice, client_config, me, sign_out
from .diffs import TaskPatch, task_patch
from .operations import backup, compact, daemon_status, drain, gc, resume, rotate_keys, set_concurrency
from .policy import CONTROL_OPERATOR, MIN_ID_PREFIX, RETRYABLE, IdPrefix, TaskRef, Viewer, may_see
from .repos import RepoPage, list_repos
from .review import review_task
from .tasks import (
    Created,
    EventPage,
    FollowUp,
    TaskPage,
    cancel_task,
    conversation,
    create_task,
    events_page,
    follow_task,
    follow_up,
    get_task,
    list_tasks,
    retry_task,
    task_owner,
)
from .users import NewUser, add_user, link_user, list_users, revoke_user, with_owner_logins

__all__ = [
    "CONTROL_OPERATOR",
    "MIN_ID_PREFIX",
    "RETRYABLE",
    "ClientConfig",
    "Created",
    "EventPage",
    "FollowUp",
    "IdPrefix",
    "Me",
    "ModelChoice",
    "NewUser",
    "RepoPage",
    "TaskPage",
    "TaskPatch",
    "TaskRef",
    "Viewer",
    "add_user",
    "backup",
    "cancel_task",
    "client_config",
    "compact",
    "conversation",
    "create_task",
    "daemon_status",
    "drain",
    "events_page",
    "follow_task",
    "follow_up",
    "gc",
    "get_task",
    "link_user",
    "list_repos",
    "list_tasks",
    "list_users",
    "may_see",
    "me",
    "resume",
    "retry_task",
    "review_task",
    "revoke_user",
    "rotate_keys",
    "set_concurrency",
    "sign_out",
    "task_owner",
    "task_patch",
    "with_owner_logins",
]
