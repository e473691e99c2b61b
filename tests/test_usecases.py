"""The use-case layer on its own: a real SQLite store, event hub and supervisor, no HTTP.

Who may see and act on a task (owner, operator; anyone else is told it does not exist), which
statuses allow a retry, what a follow-up does in each status, idempotency, paging; and the
layering rule that no front-end imports the daemon itself.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import trio

from daemon import errors, usecases
from daemon.errors import BadArguments, Conflict, Forbidden, InvalidTransition, NotFound, RateLimited
from daemon.rate_limit import RateLimiter
from daemon.states import TaskStatus
from daemon.store import base as store_base
from daemon.supervisor import RunResult
from daemon.usecases import IdPrefix, Viewer

from .helpers import running_services, wait_status

ROOT = Path(__file__).resolve().parents[1]
MISSING = "01m8bz0000000000000000000"


class ByPrompt:
    """Each attempt ends as its task's prompt says: succeed, fail, ask, retry (much later), hang."""

    def __init__(self) -> None:
        self.inputs: dict[str, list[list[str]]] = {}

    async def run(self, ctx) -> RunResult:
        self.inputs.setdefault(ctx.task.id, []).append(await ctx.store.take_inputs(ctx.task.id))
        what = ctx.task.prompt.split()[0]
        if what == "hang":
            await trio.sleep_forever()
        if what == "fail":
            raise errors.PermanentError("repository not found")
        if what == "retry":
            raise errors.TransientError("the network is down", retry_after=1e6)
        if what == "ask" and len(self.inputs[ctx.task.id]) == 1:
            await ctx.emit("agent.question", {"text": "which file?"})
            return RunResult("waiting_input", reason="asked")
        return RunResult()


ENDS_IN = {
    "succeed": TaskStatus.SUCCEEDED,
    "fail": TaskStatus.FAILED,
    "ask": TaskStatus.WAITING_INPUT,
    "retry": TaskStatus.WAITING_RETRY,
    "hang": TaskStatus.RUNNING,
}


@pytest.fixture
async def svc(tmp_path, store, hub):
    runner = ByPrompt()
    async with running_services(store, hub, runner, tmp_path / "data") as services:
        yield services


@pytest.fixture
async def people(store):
    alice = Viewer.of(await store.upsert_user("alice"))
    bob = Viewer.of(await store.upsert_user("bob"))
    root = Viewer.of(await store.upsert_user("root", is_operator=True))
    return alice, bob, root


async def create(svc, viewer, prompt="succeed", **fields):
    return (await usecases.create_task(svc, viewer, "file:///repo", prompt, **fields)).task


async def task_in(svc, viewer, status: TaskStatus):
    """A task of ``viewer``'s that has reached ``status`` (and stays there)."""
    if status is TaskStatus.QUEUED:
        svc.supervisor.drain()  # nothing is admitted: it stays queued
        return await create(svc, viewer, "queued")
    if status is TaskStatus.CANCELLED:
        task = await create(svc, viewer, "hang")
        with trio.fail_after(5):
            await wait_status(svc.hub, task.id, TaskStatus.RUNNING)
        return await svc.supervisor.cancel(task.id)
    prompt = next(word for word, ends in ENDS_IN.items() if ends is status)
    task = await create(svc, viewer, prompt)
    with trio.fail_after(5):
        await wait_status(svc.hub, task.id, status)
    return await svc.store.get_task(task.id)


# -- who may see and act on a task ----------------------------------------------------------


async def test_the_owner_and_operators_see_a_task_and_anyone_else_is_told_it_does_not_exist(svc, people):
    alice, bob, root = people
    task = await task_in(svc, alice, TaskStatus.WAITING_INPUT)
    for viewer in (alice, root):
        assert (await usecases.get_task(svc, viewer, task.id)).id == task.id
        page = await usecases.events_page(svc, viewer, task.id, after=0, limit=1)
        assert [e.type for e in page.events] == ["task.created"] and page.next_after == 1
        assert await usecases.conversation(svc, viewer, task.id) == []
    # bob is told exactly what he would be told of a task that does not exist.
    for target in (task.id, MISSING, "x" * 65):
        for action in (
            lambda t: usecases.get_task(svc, bob, t),
            lambda t: usecases.events_page(svc, bob, t),
            lambda t: usecases.conversation(svc, bob, t),
            lambda t: usecases.cancel_task(svc, bob, t),
            lambda t: usecases.follow_up(svc, bob, t, "hello"),
            lambda t: usecases.retry_task(svc, bob, t),
            lambda t: anext(aiter(usecases.follow_task(svc, bob, t))),
        ):
            with pytest.raises(NotFound) as refused:
                await action(target)
            assert refused.value.message == f"no task {target}"
    assert await svc.store.pending_inputs(task.id) == 0  # nothing of bob's reached the task
    assert (await svc.store.get_task(task.id)).status is TaskStatus.WAITING_INPUT


async def test_an_operator_may_act_on_any_task_and_retries_are_theirs_alone(svc, people):
    alice, _, root = people
    task = await task_in(svc, alice, TaskStatus.FAILED)
    with pytest.raises(Forbidden, match="only an operator"):
        await usecases.retry_task(svc, alice, task.id)  # its owner follows up instead
    svc.supervisor.drain()
    retried = await usecases.retry_task(svc, root, task.id)
    assert (retried.status, retried.attempt, retried.reason) == (
        TaskStatus.QUEUED,
        0,
        "retried by operator root",
    )
    cancelled = await usecases.cancel_task(svc, root, task.id)
    assert cancelled.status is TaskStatus.CANCELLED
    again = await usecases.retry_task(svc, usecases.CONTROL_OPERATOR, task.id)
    assert again.reason == "retried by operator"  # the control socket's operator has no login


# -- which statuses allow what ----------------------------------------------------------------


@pytest.mark.parametrize(
    "status, allowed",
    [
        (TaskStatus.FAILED, True),
        (TaskStatus.CANCELLED, True),
        (TaskStatus.WAITING_RETRY, True),
        (TaskStatus.WAITING_INPUT, True),
        (TaskStatus.SUCCEEDED, False),
        (TaskStatus.QUEUED, False),
        (TaskStatus.RUNNING, False),
    ],
)
async def test_retry_is_for_failed_cancelled_and_waiting_tasks_only(svc, people, status, allowed):
    alice, _, root = people
    task = await task_in(svc, alice, status)
    svc.supervisor.drain()  # a retried task stays queued to be looked at
    if allowed:
        retried = await usecases.retry_task(svc, root, task.id)
        assert (retried.status, retried.attempt) == (TaskStatus.QUEUED, 0)
        return
    with pytest.raises(InvalidTransition) as refused:
        await usecases.retry_task(svc, root, task.id)
    if status is TaskStatus.SUCCEEDED:
        assert "follow-up" in refused.value.message  # what to do instead
    else:
        assert "has not finished" in refused.value.message
    assert (await svc.store.get_task(task.id)).status is status  # untouched


@pytest.mark.parametrize(
    "status, said",
    [
        (TaskStatus.CANCELLED, "is already cancelled"),
        (TaskStatus.SUCCEEDED, "already finished (succeeded): nothing to cancel"),
        (TaskStatus.FAILED, "already finished (failed): nothing to cancel"),
    ],
)
async def test_a_finished_task_cannot_be_cancelled_and_is_told_how_it_ended(svc, people, status, said):
    alice, *_ = people
    task = await task_in(svc, alice, status)
    with pytest.raises(InvalidTransition) as refused:
        await usecases.cancel_task(svc, alice, task.id)
    assert refused.value.message == f"task {task.id} {said}"


# -- naming a task by the start of its id -----------------------------------------------------

A1, B1, A2 = "01kaaaaa" + "0" * 18, "01kaaaaa" + "1" * 18, "01kbbbbb" + "0" * 18


@pytest.fixture
async def prefixed(svc, people, monkeypatch):
    """Queued tasks whose ids are A1 and A2 (alice's) and B1 (bob's)."""
    alice, bob, _ = people
    svc.supervisor.drain()
    made = []
    for viewer, task_id in ((alice, A1), (bob, B1), (alice, A2)):
        monkeypatch.setattr(store_base, "new_task_id", lambda now, task_id=task_id: task_id)
        made.append(await create(svc, viewer, "queued"))
    assert [task.id for task in made] == [A1, B1, A2]


async def test_a_prefix_names_the_one_task_that_starts_so_among_those_the_viewer_may_see(
    svc, people, prefixed
):
    alice, bob, root = people
    assert (await usecases.get_task(svc, root, IdPrefix("01kbbbbb"))).id == A2
    assert (await usecases.get_task(svc, root, IdPrefix("01KBBBBB0"))).id == A2  # base32: any case
    assert (await usecases.get_task(svc, root, IdPrefix(B1))).id == B1  # the whole id too
    # Among alice's tasks alone, 01kaaaaa is hers; bob's task that starts so stays unseen.
    assert (await usecases.get_task(svc, alice, IdPrefix("01kaaaaa"))).id == A1
    assert (await usecases.get_task(svc, bob, IdPrefix("01kaaaaa"))).id == B1
    with pytest.raises(NotFound) as refused:
        await usecases.get_task(svc, bob, IdPrefix("01kbbbbb"))
    assert refused.value.message == "no task 01kbbbbb"  # as for a prefix nobody's task has
    with pytest.raises(NotFound):
        await usecases.get_task(svc, root, "01kbbbbb")  # a plain str is a whole id (the phone's)


async def test_an_ambiguous_or_short_prefix_is_refused_saying_why(svc, people, prefixed):
    _, _, root = people
    with pytest.raises(BadArguments) as refused:
        await usecases.cancel_task(svc, root, IdPrefix("01kaaaaa"))
    assert refused.value.message == f"01kaaaaa is the start of 2 task ids ({A1}, {B1}): give more of the id"
    with pytest.raises(BadArguments) as refused:
        await usecases.cancel_task(svc, root, IdPrefix("01kbbbb"))
    assert refused.value.message == (
        "'01kbbbb' is too short to name a task: give at least 8 characters of its id"
    )
    for task_id in (A1, B1, A2):
        assert (await svc.store.get_task(task_id)).status is TaskStatus.QUEUED  # none touched


async def test_every_action_on_a_task_takes_a_prefix(svc, people, prefixed):
    alice, _, root = people
    ref = IdPrefix("01kbbbbb")
    assert (await usecases.events_page(svc, alice, ref, limit=1)).events[0].type == "task.created"
    assert await usecases.conversation(svc, alice, ref) == []
    assert (await usecases.follow_up(svc, alice, ref, "and docs")).task.id == A2
    assert (await usecases.cancel_task(svc, root, ref)).status is TaskStatus.CANCELLED
    assert (await usecases.retry_task(svc, root, ref)).status is TaskStatus.QUEUED
    await usecases.cancel_task(svc, root, ref)
    followed = [event.type async for event in usecases.follow_task(svc, alice, ref)]
    assert followed[0] == "task.created" and followed[-1] == "task.finished"


# -- follow-ups and answers -------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, then, reason, attempt",
    [
        (TaskStatus.WAITING_INPUT, TaskStatus.QUEUED, "answered", 0),  # the question spent none
        (TaskStatus.SUCCEEDED, TaskStatus.QUEUED, "follow-up", 0),  # goes on, fresh attempts
        (TaskStatus.FAILED, TaskStatus.QUEUED, "follow-up", 0),
        (TaskStatus.CANCELLED, TaskStatus.QUEUED, "follow-up", 0),
        # The agent reads it at its next turn: nothing to wake.
        (TaskStatus.RUNNING, TaskStatus.RUNNING, None, 1),
        (TaskStatus.WAITING_RETRY, TaskStatus.WAITING_RETRY, None, 1),
        (TaskStatus.QUEUED, TaskStatus.QUEUED, None, 0),
    ],
)
async def test_a_follow_up_wakes_only_a_task_that_would_not_read_it_by_itself(
    svc, people, status, then, reason, attempt
):
    alice, *_ = people
    task = await task_in(svc, alice, status)
    svc.supervisor.drain()  # a task queued again stays queued to be looked at
    done = await usecases.follow_up(svc, alice, task.id, "src/app.py")
    assert (done.task.status, done.task.attempt) == (then, attempt)
    assert done.task.reason == (reason or task.reason)  # None: the status and its reason stay
    assert (done.event.type, done.event.data["text"]) == ("user.message", "src/app.py")
    assert await svc.store.take_inputs(task.id) == ["src/app.py"]


async def test_follow_ups_count_against_the_create_limit(svc, people):
    alice, *_ = people
    limited = dataclasses.replace(svc, create_limiter=RateLimiter(per_min=1, burst=2))
    task = await create(limited, alice, "hang")
    await usecases.follow_up(limited, alice, task.id, "one")
    with pytest.raises(RateLimited) as refused:
        await usecases.follow_up(limited, alice, task.id, "two")
    assert refused.value.retry_after >= 1 and "messages" in refused.value.message


# -- create and list --------------------------------------------------------------------------


async def test_an_idempotency_key_returns_the_first_task_and_refuses_another(svc, people):
    alice, bob, _ = people
    svc.supervisor.drain()
    first = await usecases.create_task(svc, alice, "file:///repo", "go", idempotency_key="k")
    again = await usecases.create_task(svc, alice, "file:///repo", "go", idempotency_key="k")
    assert (first.created, again.created, again.task.id) == (True, False, first.task.id)
    with pytest.raises(Conflict) as refused:
        await usecases.create_task(svc, alice, "file:///repo", "other", idempotency_key="k")
    assert refused.value.code == "idempotency_conflict"
    bobs = await usecases.create_task(svc, bob, "file:///repo", "go", idempotency_key="k")
    assert bobs.created and bobs.task.id != first.task.id  # keys are per user


async def test_the_control_socket_creates_a_task_for_the_user_it_names_or_the_only_one(svc, people):
    alice, bob, root = people
    svc.supervisor.drain()
    operator = usecases.CONTROL_OPERATOR
    made = await usecases.create_task(svc, operator, "file:///repo", "go", owner="bob")
    assert made.task.user_id == bob.user_id
    with pytest.raises(BadArguments) as refused:
        await usecases.create_task(svc, operator, "file:///repo", "go")
    assert refused.value.message == "whose task is it? name one of the 3 users with --user (alice, bob, root)"
    with pytest.raises(NotFound, match="no user carol"):
        await usecases.create_task(svc, operator, "file:///repo", "go", owner="carol")
    with pytest.raises(Forbidden, match="only an operator"):
        await usecases.create_task(svc, alice, "file:///repo", "go", owner="bob")
    with pytest.raises(Forbidden, match="a share link only reads its one task"):
        await usecases.create_task(svc, Viewer.shared(made.task.id), "file:///repo", "go")
    assert (await create(svc, alice, owner="alice")).user_id == alice.user_id
    assert (await create(svc, root, owner="alice")).user_id == alice.user_id
    # Revoked users are disabled: no task is made for them, named or by default.
    await usecases.revoke_user(svc, "bob")
    await usecases.revoke_user(svc, "root")
    with pytest.raises(BadArguments, match="user bob is disabled"):
        await usecases.create_task(svc, operator, "file:///repo", "go", owner="bob")
    assert (await create(svc, operator)).user_id == alice.user_id  # the one user left
    await usecases.revoke_user(svc, "alice")
    with pytest.raises(BadArguments, match="there is none .* agentctl user-add LOGIN"):
        await usecases.create_task(svc, operator, "file:///repo", "go")


@pytest.mark.parametrize(
    "fields, said",
    [
        ({"repo_url": ""}, "repo_url: text of at least one character is required"),
        ({"repo_url": "file:///" + "r" * 2048}, "repo_url: at most 2048 characters, got 2056"),
        ({"prompt": "fix\x00it"}, "prompt: contains a control character, U+0000, at position 3"),
        ({"base_branch": "main\ud800"}, "base_branch: contains a lone surrogate (not Unicode), U+D800"),
        (
            {"budget": {"max_usd": float("nan")}},
            "budget.max_usd: a number above 0 and at most 1e+12, got nan",
        ),
        ({"budget": {"max_usd": float("inf")}}, "budget.max_usd: a number above 0"),
        ({"budget": {"max_turns": 0}}, "budget.max_turns: a whole number from 1 to"),
        ({"budget": {"max_tokens": 1.5}}, "budget.max_tokens: a whole number from 1 to"),
        ({"budget": {"max_turns": True}}, "budget.max_turns: a whole number from 1 to"),
        ({"budget": {"colour": 1}}, "budget: no cap 'colour'; the caps are max_turns, max_tokens, max_usd"),
    ],
)
async def test_what_a_task_is_made_of_is_checked_for_every_front_end(svc, people, fields, said):
    alice, *_ = people
    svc.supervisor.drain()
    task = {"repo_url": "file:///repo", "prompt": "go", **fields}
    with pytest.raises(BadArguments) as refused:
        await usecases.create_task(
            svc,
            alice,
            task["repo_url"],
            task["prompt"],
            base_branch=task.get("base_branch"),
            budget=task.get("budget"),
        )
    assert refused.value.message.startswith(said)
    assert await svc.store.list_tasks() == []


async def test_pages_are_newest_first_without_overlap_and_each_viewer_sees_its_share(svc, people):
    alice, bob, root = people
    svc.supervisor.drain()
    alices = [(await create(svc, alice, f"task {i}")).id for i in range(5)]
    bobs = [(await create(svc, bob)).id]
    pages, cursor = [], None
    while True:
        page = await usecases.list_tasks(svc, alice, limit=2, cursor=cursor)
        pages.append([task.id for task in page.tasks])
        if (cursor := page.next_cursor) is None:
            break
    assert pages == [alices[4:2:-1], alices[2:0:-1], alices[0:1]]
    everyone = await usecases.list_tasks(svc, root)
    assert [t.id for t in everyone.tasks] == [*bobs, *reversed(alices)] and everyone.next_cursor is None
    assert [t.id for t in (await usecases.list_tasks(svc, root, owner="bob")).tasks] == bobs
    assert (await usecases.list_tasks(svc, root, mine=True)).tasks == []  # root has none
    with pytest.raises(NotFound, match="no user bob"):
        await usecases.list_tasks(svc, alice, owner="bob")  # not alice's to look at
    with pytest.raises(NotFound, match="no user nobody"):
        await usecases.list_tasks(svc, root, owner="nobody")
    running = await usecases.list_tasks(svc, root, status=TaskStatus.RUNNING)
    assert running.tasks == []


async def test_following_replays_then_goes_live_and_stops_at_the_end(svc, people):
    alice, *_ = people
    task = await task_in(svc, alice, TaskStatus.RUNNING)
    seen = []

    async def follow() -> None:
        async for event in usecases.follow_task(svc, alice, task.id):
            seen.append(event.type)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            await usecases.cancel_task(svc, alice, task.id)
    assert seen[0] == "task.created" and seen[-1] == "task.finished"
    ended = await svc.store.get_task(task.id)
    assert [e async for e in usecases.follow_task(svc, alice, task.id, ended.last_seq)] == []


# -- layering ---------------------------------------------------------------------------------


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (anywhere in it, also under TYPE_CHECKING), made absolute."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return found


def test_no_front_end_imports_the_daemon_and_the_use_cases_know_no_front_end():
    front_ends = [*sorted((ROOT / "daemon/web").glob("*.py")), ROOT / "daemon/control_handlers.py"]
    offenders = [str(p.relative_to(ROOT)) for p in front_ends if "daemon.service" in imported_modules(p)]
    assert offenders == []
    for path in sorted((ROOT / "daemon/usecases").glob("*.py")):
        wrong = {
            m
            for m in imported_modules(path)
            if m.startswith(("daemon.web", "daemon.control", "daemon.service.", "quart", "control"))
            or m == "daemon.service"
        }
        assert wrong == set(), path


def test_the_import_check_sees_relative_and_deferred_imports(tmp_path):
    # The check above must not pass by missing an import written another way.
    assert "daemon.service" in imported_modules(ROOT / "daemon/cli.py")  # inside a function
    assert "daemon.service.Daemon" in imported_modules(ROOT / "daemon/demo.py")
