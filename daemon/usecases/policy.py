"""Who may do what to a task, and in which statuses: every such rule of agentd, written once.

- Seeing a task (reading it, its events and conversation, following it, cancelling it,
  writing to it): its owner or an operator. Anyone else is told the task does not exist
  (``NotFound``), never "forbidden", so a task id cannot be probed (design §5). Front-ends that
  answer a non-operator with 403 (the admin surface) decide that before calling a use case.
- Naming a task: by its whole id, or, where the front-end allows it (agentctl, the admin
  surface; not the phone API), by the first ``MIN_ID_PREFIX`` characters of it or more
  (``IdPrefix``). A prefix is looked up among the tasks the viewer may see only, so it tells
  nobody of another's task; one that several of those start with is refused, saying how many.
- A share link (``usecases.shares``) makes a viewer of its own kind (``Viewer.shared``): it
  sees the one task the link names, and nothing else: no list, no other task, no prefix
  look-up. It reads only: the front-ends give it read routes alone, and it is no task's owner
  (no ``user_id``), so no rule below that asks for an owner or an operator lets it act.
- Listing: an operator may list anyone's tasks; anyone else only their own.
- Retrying (fresh attempts): operators only, and only a task that failed, was cancelled or
  waits (for its retry or for an answer). A queued or running task has nothing to retry (and
  requeueing a running one would race its attempt); a succeeded task did what it was asked,
  and its owner goes on with it by a follow-up instead.
- Cancelling: a task that has not finished ("already cancelled", "already finished (failed)").
- A follow-up or an answer: any status (see ``tasks.follow_up`` for what each one does).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BadArguments, Forbidden, InvalidTransition, NotFound
from ..states import TaskStatus
from ..store import Store, Task, User

MAX_TASK_ID = 64  # longer is no task id: not looked up at all
# The web client shows 12 characters of an id (static/app/dom.js SHORT_ID). The first 8 of an id
# are the second it was made in (models.new_task_id): fewer name minutes or days of tasks.
MIN_ID_PREFIX = 8
AMBIGUOUS_COUNTED = 100  # an ambiguous prefix is said to match "more than" this many
AMBIGUOUS_SHOWN = 3  # ids named in the message

RETRYABLE = frozenset(
    {
        TaskStatus.FAILED,
        TaskStatus.CANCELLED,
        TaskStatus.WAITING_RETRY,
        TaskStatus.WAITING_INPUT,
    }
)


@dataclass(frozen=True)
class Viewer:
    """Who is asking: a user (``user_id``, ``login``), the control socket's operator (no user),
    or the holder of a share link (``shared_task``: the one task it may read; no user)."""

    user_id: int | None
    login: str | None
    is_operator: bool
    shared_task: str | None = None

    def __post_init__(self) -> None:
        if self.shared_task is not None and (self.user_id is not None or self.is_operator):
            raise ValueError("a share link's viewer is neither a user nor an operator")
        if self.user_id is None and not self.is_operator and self.shared_task is None:
            raise ValueError("a viewer who is not an operator is a user: give its id")

    @classmethod
    def of(cls, user: User) -> Viewer:
        return cls(user.id, user.login, user.is_operator)

    @classmethod
    def shared(cls, task_id: str) -> Viewer:
        """The holder of a live share link to ``task_id`` (``usecases.shares.resolve``)."""
        return cls(None, None, False, shared_task=task_id)


@dataclass(frozen=True)
class IdPrefix:
    """A task named by the start of its id (or the whole of it), as agentctl and the admin
    surface accept; upper case is read as lower (ids are Crockford base32)."""

    text: str


TaskRef = str | IdPrefix  # a plain str is a whole id


# Whoever the control socket lets in (the daemon's uid, root, its group) is an operator.
CONTROL_OPERATOR = Viewer(user_id=None, login=None, is_operator=True)


def may_see(viewer: Viewer, task: Task) -> bool:
    """Whether ``viewer`` may see ``task`` (and so act on it): its owner or an operator; a share
    link's viewer, the one task of its link (to read it only)."""
    if viewer.shared_task is not None:
        return task.id == viewer.shared_task
    return viewer.is_operator or task.user_id == viewer.user_id


def may_be_task_id(text: str) -> bool:
    """Whether ``text`` could be a task id at all; what cannot is never looked up (PostgreSQL
    refuses a NUL in text, and no store holds a longer id)."""
    return len(text) <= MAX_TASK_ID and text.isascii() and text.isprintable()


async def visible_task(store: Store, viewer: Viewer, ref: TaskRef) -> Task:
    """The task ``ref`` names, if ``viewer`` may see it; else ``NotFound``, worded as for a
    missing task. An ``IdPrefix`` shorter than ``MIN_ID_PREFIX`` (and no whole id), or one
    that several of the tasks the viewer may see start with, is ``BadArguments``."""
    task_id = ref.text if isinstance(ref, IdPrefix) else ref
    looked_up = may_be_task_id(task_id)
    task = await store.get_task(task_id) if looked_up else None
    if task is None and isinstance(ref, IdPrefix) and looked_up and viewer.shared_task is None:
        task = await _by_prefix(store, viewer, task_id)
    if task is None or not may_see(viewer, task):
        raise NotFound(f"no task {task_id}")
    return task


async def _by_prefix(store: Store, viewer: Viewer, text: str) -> Task | None:
    """The one task among those ``viewer`` may see whose id starts with ``text``, or None."""
    if len(text) < MIN_ID_PREFIX:
        raise BadArguments(
            f"{text!r} is too short to name a task: give at least {MIN_ID_PREFIX} characters of its id"
        )
    ids = await store.task_ids_with_prefix(
        text.lower(),
        user_id=None if viewer.is_operator else viewer.user_id,
        limit=AMBIGUOUS_COUNTED + 1,
    )
    if len(ids) > 1:
        many = f"more than {AMBIGUOUS_COUNTED}" if len(ids) > AMBIGUOUS_COUNTED else str(len(ids))
        shown = ", ".join(ids[:AMBIGUOUS_SHOWN]) + (", ..." if len(ids) > AMBIGUOUS_SHOWN else "")
        raise BadArguments(f"{text} is the start of {many} task ids ({shown}): give more of the id")
    return await store.get_task(ids[0]) if ids else None


def check_retry(viewer: Viewer, task: Task) -> None:
    """Raise unless ``viewer`` may retry ``task`` now (``Forbidden``, ``InvalidTransition``)."""
    if not viewer.is_operator:
        raise Forbidden("only an operator may retry a task; send it a follow-up message instead")
    if task.status is TaskStatus.SUCCEEDED:
        raise InvalidTransition(
            "a succeeded task cannot be retried: it did what it was asked; "
            "send it a follow-up message to go on from there"
        )
    if task.status not in RETRYABLE:
        raise InvalidTransition(
            f"a {task.status.value} task cannot be retried: it has not finished (cancel it first)"
        )


def check_cancel(task: Task) -> None:
    """Raise ``InvalidTransition`` if ``task`` has finished: there is nothing to cancel."""
    if task.status is TaskStatus.CANCELLED:
        raise InvalidTransition(f"task {task.id} is already cancelled")
    if task.status.is_terminal:
        raise InvalidTransition(f"task {task.id} already finished ({task.status.value}): nothing to cancel")


def owner_filter(viewer: Viewer, owner: User | None, *, mine: bool) -> int | None:
    """Whose tasks ``viewer`` lists: ``owner``'s, its own (``mine``), or everyone's (None).

    A viewer who is not an operator lists its own tasks; naming anyone else is ``NotFound``.
    A share link's viewer lists nothing (``NotFound``).
    """
    if viewer.shared_task is not None:
        raise NotFound("a share link shows its one task only")
    if viewer.is_operator and not mine:
        return owner.id if owner is not None else None
    if owner is not None and owner.id != viewer.user_id:
        raise NotFound(f"no user {owner.login}")
    return viewer.user_id
