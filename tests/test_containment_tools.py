"""A hostile agent against the editor and the limits of a real ``agentd serve`` (issue 18).

What must hold (the world: tests/containment_tools_support.py):

1. The symlink race: ``OPS_PER_KIND`` editor calls of each kind through directories and a file
   that the agent keeps swapping with links to the daemon's data dir and to another directory
   outside never read (no secret in any event, conversation or task row) nor write (those
   directories unchanged: names, sizes, mtimes, inodes, owners, content) outside the workspace,
   and the task ends.
2. FIFOs and a unix socket under the editor (the sandbox cannot make a device: no CAP_MKNOD; one
   would be judged the same way) are refused at once with an error naming what they are; a task
   then blocked in a ``sleep 600`` is cancelled over HTTP within 5 s, and SIGTERM stops the
   daemon within its grace period, exit code 0, the task put back in the queue.
3. A fork bomb, a ``/tmp`` filler and a workspace filler fail their tasks with ``pids_limit``,
   ``tmp_full`` and ``quota_exceeded`` and an error naming the setting, while ``/healthz``
   answers throughout; a plain task after them succeeds; nothing of any task is left running.

The module fixture runs everything once (about 40 s on two cores); each test judges one outcome.
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
import trio
from trio._core import _thread_cache

from daemon.agent.tools import Toolbox, ToolSettings, probe_sandbox

from .agent_env import BUGGY_PROJECT
from .containment_support import ARMED, every_object, found_secrets, outside_paths, refs, tree
from .containment_tools_support import (
    CALLS_PER_TURN,
    CANCEL_WITHIN_S,
    CODES,
    GRACE_S,
    LIMIT_ATTACKS,
    OPS_PER_KIND,
    PER_KIND_PER_TURN,
    RACE,
    RACE_FILES,
    RUN_TIMEOUT_S,
    VIEW_PATHS,
    WRITE_PATHS,
    Ran,
    ToolAttacks,
)

SANDBOX = trio.run(probe_sandbox)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not SANDBOX.usable, reason=f"bubblewrap is not usable here: {SANDBOX.reason}"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> ToolAttacks:
    run = ToolAttacks(tmp_path_factory.mktemp("containment-tools"))
    run.run()
    return run


def _outputs(ran: Ran, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    return [(i, r) for i, r in ran.results().items() if i.startswith(prefix)]


# -- 1. the symlink race against the editor -------------------------------------------------------


def _via(call_id: str) -> str:
    """The swapped name a race call's path goes through: rd, ro or rf.txt."""
    kind, n = call_id.rsplit("-", 1)
    i = int(n)
    path = {"view": VIEW_PATHS[i % len(VIEW_PATHS)], "create": ("rd", "ro")[i % 2]}.get(
        kind, WRITE_PATHS[i % len(WRITE_PATHS)]
    )
    return path.split("/")[0]


def test_the_race_ran_every_call_and_the_task_ended(world):
    race = world.editor["race"]
    results = race.results()
    assert ARMED in results["attack"]["output"], results["attack"]
    assert "FINISHED" in results["finish"]["output"], results["finish"]
    assert race.task["status"] == "succeeded", race.task
    assert race.task["finished_at"] - race.task["started_at"] < RUN_TIMEOUT_S
    kinds = ("view", "create", "str_replace", "insert")
    for kind in kinds:
        assert len(_outputs(race, f"{kind}-")) == OPS_PER_KIND, kind

    def outcomes(ids) -> tuple[int, int]:
        """(refused at a link, went through a directory or file) among ``ids``."""
        refused = sum(results[i]["is_error"] and "symbolic link" in results[i]["output"] for i in ids)
        return refused, sum(not results[i]["is_error"] for i in ids)

    # The swapper ran in every turn, and calls through each swapped directory met both of its
    # states over the run. (Not asserted per turn: on a loaded machine a turn's calls may all
    # run while the swapper waits for a CPU. The file's link, once an edit renamed a file over
    # it, stays a file until the next turn.)
    all_ids = []
    for turn in range(len(RACE) // CALLS_PER_TURN):
        assert "SWAPPER started" in results[f"arm-{turn}"]["output"], results[f"arm-{turn}"]
        all_ids += [
            f"{kind}-{n}"
            for kind in kinds
            for n in range(turn * PER_KIND_PER_TURN, (turn + 1) * PER_KIND_PER_TURN)
        ]
    for name in ("rd", "ro"):
        refused, through = outcomes([i for i in all_ids if _via(i) == name])
        assert refused and through, (name, refused, through)
    refused, through = outcomes([i for i in results if i.split("-")[0] in kinds and _via(i) == "rf.txt"])
    assert refused and through, ("rf.txt", refused, through)


def test_the_race_never_read_outside_the_workspace(world):
    race = world.editor["race"]
    assert found_secrets(race.transcript(), world.secrets()) == []
    assert found_secrets(every_object(race.remote), world.secrets()) == []  # nor in what it pushed
    # What a view showed through a directory is the workspace's decoy, never anything else.
    for i, result in _outputs(race, "view-"):
        if not result["is_error"] and "secret" in VIEW_PATHS[int(i.split("-")[1]) % len(VIEW_PATHS)]:
            assert "inside decoy" in result["output"], result


def test_the_race_never_wrote_outside_the_workspace(world):
    assert world.after["outside"] == world.before["outside"]
    assert world.after["data"]["planted"] == world.before["data"]["planted"]
    new = set(world.after["data"]["names"]) - set(world.before["data"]["names"])
    assert not [n for n in new if n.startswith(("new-", ".agentd-edit-"))], sorted(new)
    race = world.editor["race"]
    # What was pushed is the project and what the agent made in its workspace, nothing else.
    pushed = set(refs(race.remote)) - {"refs/heads/main"}
    assert pushed == {f"refs/heads/{race.task['branch']}"}, pushed
    for ref in pushed:
        assert outside_paths([p for _, p in tree(race.remote, ref)], [*BUGGY_PROJECT, *RACE_FILES]) == [], ref


# -- 2. special files under the editor; cancel and SIGTERM out of a blocked task ---------------------


@pytest.mark.parametrize("name", ["special_cancel", "special_term"])
def test_special_files_are_refused_at_once(world, name):
    ran = world.editor[name]
    results = ran.results()
    armed = results["attack"]["output"]
    assert ARMED in armed, armed
    kinds = {"fifo": "a FIFO (named pipe)", "held": "a FIFO (named pipe)", "sock": "a unix socket"}
    if "MKNOD-OK" in armed:
        kinds["chardev"] = "a character device"
    else:  # no CAP_MKNOD in the sandbox: a FIFO and a socket are what an agent can make
        assert "MKNOD-REFUSED" in armed
    for path, kind in kinds.items():
        for command in ("view", "str_replace", "insert", "create"):
            result = results[f"sp-{command}-{path}"]
            assert result["is_error"] and f"{path} is {kind}" in result["output"], result
            assert result["took_s"] < 2.0, result


def test_cancel_ends_a_blocked_task_within_5_s(world):
    ran = world.editor["special_cancel"]
    assert ran.task["status"] == "cancelled", ran.task
    assert ran.cancel_s is not None and ran.cancel_s < CANCEL_WITHIN_S, ran.cancel_s


def test_sigterm_stops_the_daemon_within_its_grace_period(world):
    term = world.editor["special_term"]
    assert term.task["status"] == "running" and "block" not in term.results(), term.results()
    assert world.exits["editor"] == 0, world.logs["editor"][-3000:]
    assert world.term_s is not None and world.term_s < GRACE_S + 3.0, world.term_s
    # Put back in the queue for the next start, not lost nor left running.
    assert world.term_task.get("status") == "queued", world.term_task


# -- 3. limits: fork bomb, /tmp filler, workspace filler -------------------------------------------


@pytest.mark.parametrize("name", list(LIMIT_ATTACKS))
def test_a_limit_attack_fails_its_task_with_a_clear_reason(world, name):
    ran = world.limits[name]
    assert ARMED in ran.results()["attack"]["output"], ran.results()["attack"]
    code, setting = CODES[name]
    assert ran.task["status"] == "failed" and ran.task["reason"] == code, ran.task
    assert setting in ran.task["error"], ran.task["error"]


def test_the_daemon_stayed_healthy_and_runs_the_next_task(world):
    assert len(world.healthz) >= 3, world.healthz
    assert all(status == 200 for status, _ in world.healthz), world.healthz
    assert max(took for _, took in world.healthz) < 2.0, world.healthz
    assert world.healthz_after == 200
    benign = world.limits["benign"]
    assert benign.task["status"] == "succeeded", benign.task
    assert benign.task["diff"]["files"] == ["calc.py"], benign.task["diff"]
    assert world.exits["limits"] == 0, world.logs["limits"][-3000:]


def test_no_secret_anywhere_and_nothing_left_running(world):
    for name, ran in {**world.editor, **world.limits}.items():
        assert found_secrets(ran.transcript(), world.secrets()) == [], name
    if os.geteuid() == 0:
        assert world.leftover == {"editor": 0, "limits": 0}, world.leftover


# -- found by the race: the persistent shell died with the worker thread that started it ---------


def test_a_bash_session_outlives_the_worker_thread_that_started_it(tmp_path, monkeypatch):
    """trio.lowlevel.open_process runs Popen in a worker thread; trio retires a thread idle for
    ``IDLE_TIMEOUT`` (10 s), and the kernel then SIGKILLed the bwrap it forked (bwrap's
    ``--die-with-parent``) until a lifeline shell stood between them (``lifeline.py``). With a few tasks
    at once, a command running longer than ~10 s is killed (status -9), and a shell kept for
    later calls dies with its working directory, environment and background processes (the
    race's, in 4 runs out of 5 before each turn got a fresh one); a fork bomb whose command was
    killed so had ended "succeeded" instead of ``pids_limit`` (1 task in 20). The timeout is made
    short here; the sleep is the idle time under test, not a wait for something."""
    monkeypatch.setattr(_thread_cache, "IDLE_TIMEOUT", 0.2)
    settings = ToolSettings(sandbox="required", uid_base=1_950_000 + random.randrange(1000) * 32, uid_count=4)

    async def main() -> tuple[Any, Any]:
        async with Toolbox(tmp_path, settings) as toolbox:
            first = await toolbox.run("bash", {"command": "export MARK=kept; cd /tmp; echo $MARK"})
            await trio.sleep(1.0)
            return first, await toolbox.run("bash", {"command": "echo $MARK in $PWD"})

    first, second = trio.run(main)
    assert first.output == "kept\n"
    assert second.output == "kept in /tmp\n", second
