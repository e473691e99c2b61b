"""Attempts count failures only: questions answered, follow-ups and an orderly shutdown spend
none, while an attempt that dies with its daemon does. A follow-up may raise a task's budget up
to the operator's caps. The real supervisor, agent loop, scripted model, store and git."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from daemon import usecases
from daemon.agent.loop import AgentRunner
from daemon.agent.scripted_provider import ScriptedProvider
from daemon.errors import BadArguments
from daemon.services import Services
from daemon.states import TaskStatus
from daemon.supervisor import Backoff
from daemon.usecases import Viewer

from .agent_env import agent_settings, ask_then_write, bare_repo, branch_file
from .helpers import running_services, wait_status

pytestmark = pytest.mark.slow

QUESTIONS = ("Tabs or spaces?", "Which file?", "Push it?")
SCRIPT = ask_then_write(*QUESTIONS)
WRITE_TURN = len(QUESTIONS)  # the turn after the last answer: the first daemon dies in it


class DiesAtTurn(ScriptedProvider):
    """The script, but the model call for turn ``turn`` never returns (the daemon dies in it)."""

    def __init__(self, script: object, turn: int) -> None:
        super().__init__(script)
        self.turn = turn
        self.reached = trio.Event()

    async def complete(self, request: Any, on_text_delta: Callable[[str], None] | None = None) -> Any:
        if sum(1 for m in request.messages if m.get("role") == "assistant") == self.turn:
            self.reached.set()
            await trio.sleep_forever()
        return await super().complete(request, on_text_delta)


@asynccontextmanager
async def daemon(store: Any, hub: Any, tmp_path: Path, provider: ScriptedProvider, max_attempts: int):
    """One daemon's life on the shared store: leaving the block kills it (nothing is put back)."""
    runner = AgentRunner(provider, agent_settings(tmp_path))
    backoff = Backoff(0.01, 0.05, max_attempts)
    async with running_services(store, hub, runner, tmp_path / "data", backoff=backoff) as svc:
        yield svc


async def answer(svc: Services, alice: Viewer, task_id: str, question: str, after: int) -> int:
    """Wait for ``question`` (asked after event ``after``), check it spent no attempt, and answer
    it through the use case; return the answer's event seq."""
    with trio.fail_after(60):
        async for event in svc.hub.follow(task_id, after):
            if event.type == "task.status" and event.data["status"] == TaskStatus.WAITING_INPUT:
                break
    waiting = await svc.store.get_task(task_id)
    assert (waiting.status, waiting.reason, waiting.attempt) == (TaskStatus.WAITING_INPUT, question, 0)
    done = await usecases.follow_up(svc, alice, task_id, f"answer to {question}")
    assert (done.task.status, done.task.attempt) == (TaskStatus.QUEUED, 0)
    return done.event.seq


async def test_three_answered_questions_and_a_restart_fit_in_two_attempts(store, hub, tmp_path):
    bare = bare_repo(tmp_path)
    alice = Viewer.of(await store.upsert_user("alice"))
    dying = DiesAtTurn(SCRIPT, WRITE_TURN)
    async with daemon(store, hub, tmp_path, dying, max_attempts=2) as svc:
        created = await usecases.create_task(svc, alice, str(bare), "Pick a style")
        task_id, seq = created.task.id, 0
        for question in QUESTIONS:
            seq = await answer(svc, alice, task_id, question, seq)
        with trio.fail_after(60):
            await dying.reached.wait()
    # Killed mid-attempt: that attempt counts (the daemon may have died of the task), the
    # three question attempts before it do not, so the next one is the second and last allowed.
    assert (await store.get_task(task_id)).status is TaskStatus.RUNNING
    async with daemon(store, hub, tmp_path, ScriptedProvider(SCRIPT), max_attempts=2):
        with trio.fail_after(60):
            assert await wait_status(hub, task_id, TaskStatus.SUCCEEDED, TaskStatus.FAILED) is (
                TaskStatus.SUCCEEDED
            )
    task = await store.get_task(task_id)
    assert task.attempt == 2
    events = await store.read_events(task_id)
    assert [e.data["text"] for e in events if e.type == "agent.question"] == list(QUESTIONS)
    runs = [e.data["attempt"] for e in events if e.type == "task.status" and e.data["status"] == "running"]
    assert runs == [1, 1, 1, 1, 2]  # each question's attempt given back; the killed one kept
    assert branch_file(bare, task.branch, "style.txt") == "spaces\n"


async def test_a_follow_up_raises_the_budget_within_the_caps_only(store, hub, tmp_path):
    alice = Viewer.of(await store.upsert_user("alice"))
    async with daemon(store, hub, tmp_path, ScriptedProvider(SCRIPT), max_attempts=2) as svc:
        svc.supervisor.drain()  # the task stays queued: only its budget is looked at
        created = await usecases.create_task(
            svc, alice, "file:///repo", "Pick a style", budget={"max_turns": 10}
        )
        task_id = created.task.id
        caps = usecases.client_config(svc).budget_caps
        default_usd = usecases.client_config(svc).budget_defaults["max_usd"]
        refused = [
            ({"max_turns": caps["max_turns"] + 1}, f"at most {caps['max_turns']}, the operator's cap"),
            ({"max_turns": 9}, "may only raise it; the task has 10, got 9"),
            ({"max_usd": default_usd / 2}, f"the task has {default_usd:g}, got {default_usd / 2:g}"),
            ({"max_minutes": 5}, "no cap 'max_minutes'"),
        ]
        for budget, message in refused:
            with pytest.raises(BadArguments, match=message):
                await usecases.follow_up(svc, alice, task_id, "more", budget)
        assert await store.take_inputs(task_id) == []  # a refused follow-up writes nothing
        raised = {"max_turns": caps["max_turns"], "max_tokens": caps["max_tokens"]}
        done = await usecases.follow_up(svc, alice, task_id, "more", raised)
        assert done.task.budget == raised and done.task.status is TaskStatus.QUEUED
        assert await store.take_inputs(task_id) == ["more"]
        events = await store.read_events(task_id)
        assert [e.data for e in events if e.type == "task.budget"] == [{"budget": raised}]
