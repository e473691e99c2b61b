"""A task's story in the log: one INFO line per step of its life, in order, each with its fields.

The whole story runs for real (store, supervisor, agent loop, git, the scripted model) on a
MockClock that moves only when the test moves it: the retry's delay is then exact.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from daemon.agent.loop import AgentRunner
from daemon.agent.scripted_provider import ScriptedProvider
from daemon.errors import TransientError
from daemon.states import TaskStatus
from daemon.supervisor import Backoff
from daemon.supervisor.tasklog import repo_for_log

from .agent_env import agent_settings, ask_then_write, bare_repo
from .fakes.phone import running_daemon
from .helpers import running_supervisor, submit, wait_status
from .runners import FailPermanently, Hang

TASKLOG = "daemon.supervisor.tasklog"
PROMPT = "Pick a style (the words of a user: never in a log line)"
# The fields each line has besides ``task_id``.
USAGE = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd")
FIELDS = {
    "task created": ("user_id", "repo", "base_branch", "prompt_chars"),
    "task started": ("attempt", "node"),
    "attempt failed": ("attempt", "reason", "delay_s"),
    "task waiting for input": ("attempt",),
    "task queued again": ("attempt", "reason"),
    "task finished": ("attempt", "outcome", "reason", "error", "attempts", *USAGE),
    "task cancelled": ("attempt", "reason"),
}


def story(caplog: pytest.LogCaptureFixture, task_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The task's lifecycle lines: ``(message, fields)``, with ``task_id`` checked on each."""
    told = []
    for record in caplog.records:
        if record.name != TASKLOG or getattr(record, "task_id", None) != task_id:
            continue
        assert record.levelno == logging.INFO
        message = record.getMessage()
        fields = {name: getattr(record, name) for name in FIELDS[message]}
        told.append((message, fields))
    return told


class OverloadedOnce(ScriptedProvider):
    """The scripted model, whose first call fails as an overloaded API does ("retry after 30 s")."""

    calls = 0

    async def complete(self, request, on_text_delta=None):
        self.calls += 1
        if self.calls == 1:
            raise TransientError("the model is overloaded", retry_after=30)
        return await super().complete(request, on_text_delta)


ASK_THEN_WRITE = ask_then_write("Tabs or spaces?")


async def test_a_task_tells_its_story_from_creation_to_its_end(mock_clock, store, hub, tmp_path, caplog):
    """Created, started, failed with its retry delay, started again at that delay exactly,
    waiting for input, queued again by the answer, started, finished with its usage; and a
    task cancelled as it starts."""
    caplog.set_level(logging.INFO)
    bare = bare_repo(tmp_path)
    runner = AgentRunner(OverloadedOnce(ASK_THEN_WRITE), agent_settings(tmp_path))
    async with running_supervisor(store, hub, runner, backoff=Backoff(1, 30, 3)) as sup:
        alice = await store.upsert_user("alice")
        task, _ = await sup.submit(user_id=alice.id, repo_url=str(bare), prompt=PROMPT)
        await wait_status(hub, task.id, TaskStatus.WAITING_RETRY)
        mock_clock.jump(29.9)
        await wait_all_tasks_blocked()
        assert (await store.get_task(task.id)).status is TaskStatus.WAITING_RETRY  # not yet due
        mock_clock.jump(0.1)
        await wait_status(hub, task.id, TaskStatus.WAITING_INPUT)
        await store.add_input(task.id, "spaces, please")
        await sup.requeue(task.id, reason="answered")
        await wait_status(hub, task.id, TaskStatus.SUCCEEDED)
        done = await store.get_task(task.id)

        second, _ = await sup.submit(user_id=alice.id, repo_url=str(bare), prompt="another")
        await sup.cancel(second.id)

    usage = done.usage.__dict__
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert story(caplog, task.id) == [
        (
            "task created",
            {"user_id": alice.id, "repo": str(bare), "base_branch": None, "prompt_chars": len(PROMPT)},
        ),
        ("task started", {"attempt": 1, "node": "local"}),
        ("attempt failed", {"attempt": 1, "reason": "the model is overloaded", "delay_s": 30.0}),
        ("task started", {"attempt": 2, "node": "local"}),
        # The question's attempt is given back (attempts count failures only): the answer's
        # attempt is the second again.
        ("task waiting for input", {"attempt": 1}),
        ("task queued again", {"attempt": 1, "reason": "answered"}),
        ("task started", {"attempt": 2, "node": "local"}),
        (
            "task finished",
            {"attempt": 2, "outcome": "succeeded", "reason": None, "error": None, "attempts": 2, **usage},
        ),
    ]
    assert [message for message, _ in story(caplog, second.id)] == [
        "task created",
        "task started",
        "task cancelled",
    ]
    for record in caplog.records:  # what the user wrote stays out of every line, ours or not
        assert "never in a log line" not in record.getMessage() + repr(vars(record))


async def test_a_final_failure_says_why_and_after_how_many_attempts(
    autojump_clock, store, hub, alice, caplog
):
    caplog.set_level(logging.INFO, logger=TASKLOG)
    async with running_supervisor(store, hub, FailPermanently()) as sup:
        task = await submit(sup, alice)
        await wait_status(hub, task.id, TaskStatus.FAILED)
    assert story(caplog, task.id)[-1] == (
        "task finished",
        {
            "attempt": 1,
            "outcome": "failed",
            "reason": "permanent",
            "error": "repository not found: example/missing",
            "attempts": 1,
            **dict.fromkeys(USAGE[:4], 0),
            "cost_usd": 0.0,
        },
    )


async def test_a_shutdown_puts_a_running_task_back_and_says_so(autojump_clock, store, hub, alice, caplog):
    caplog.set_level(logging.INFO, logger=TASKLOG)
    runner = Hang()
    async with running_supervisor(store, hub, runner) as sup:
        task = await submit(sup, alice)
        await runner.wait_until(lambda: runner.active == 1)
        await sup.shutdown(grace_s=5)
    assert story(caplog, task.id)[-1] == ("task queued again", {"attempt": 0, "reason": "daemon shutdown"})


def test_a_repository_url_is_logged_without_its_credentials():
    assert repo_for_log("https://x-access-token:ghs_abc@github.com/o/r.git") == "https://github.com/o/r.git"
    assert repo_for_log("https://github.com/o/r") == "https://github.com/o/r"
    assert repo_for_log("git@github.com:o/r.git") == "git@github.com:o/r.git"
    assert repo_for_log("/srv/git/r.git") == "/srv/git/r.git"


async def test_the_daemon_says_when_it_has_stopped(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="daemon.service")
    async with running_daemon(tmp_path):
        await trio.lowlevel.checkpoint()
    said = [record.getMessage() for record in caplog.records if record.name == "daemon.service"]
    assert said[-1] == "agentd stopped"
