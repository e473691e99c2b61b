"""A task's limits through the agent loop (scripted model, real tools, git and store): a fork
bomb, a /tmp filler and a workspace filler each fail their task with a clear reason, and the
next task on the same supervisor runs as usual.

Needs a usable bubblewrap: without it, as root, nothing would bound a fork bomb here.
"""

from __future__ import annotations

import os

import pytest
import trio

from daemon.agent.scripted_provider import ScriptedProvider
from daemon.agent.tools import ToolSettings, probe_sandbox
from daemon.agent.tools.identity import count_tasks
from daemon.states import TaskStatus

from .agent_env import FIX_SCRIPT, agent_supervisor, bare_repo, text, tool_use
from .helpers import wait_gone, wait_status

MIB = 1024 * 1024
SANDBOX = trio.run(probe_sandbox)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SANDBOX.usable, reason=f"bubblewrap is not usable here: {SANDBOX.reason}"),
]

TOOLS = ToolSettings(
    command_timeout_s=30, sandbox="required", max_processes=64, tmp_bytes=8 * MIB, file_size_bytes=4 * MIB
)


class ByPrompt:
    """The scripted model, with a script per task chosen by the task's prompt."""

    name = model = "scripted"

    def __init__(self, scripts: dict[str, dict]) -> None:
        self._providers = {prompt: ScriptedProvider(script) for prompt, script in scripts.items()}

    async def complete(self, request, on_text_delta=None):
        first = request.messages[0]["content"]
        prompt = first if isinstance(first, str) else first[0]["text"]
        return await self._providers[prompt].complete(request, on_text_delta=on_text_delta)


def attack(command: str) -> dict:
    return {
        "turns": [{"content": [tool_use("t1", "bash", command=command)]}, {"content": [text("All done.")]}]
    }


async def run_attack_then_a_normal_task(store, hub, tmp_path, command: str, **settings):
    """The attack as one task, then the usual fix as another; both tasks as stored."""
    bare = bare_repo(tmp_path)
    provider = ByPrompt({"Attack": attack(command), "Fix add()": FIX_SCRIPT})
    async with agent_supervisor(store, hub, tmp_path, provider=provider, tools=TOOLS, **settings) as sup:
        alice = await store.upsert_user("alice")
        with trio.fail_after(60):
            bad, _ = await sup.submit(user_id=alice.id, repo_url=str(bare), prompt="Attack")
            await wait_status(hub, bad.id, TaskStatus.SUCCEEDED, TaskStatus.FAILED)
            good, _ = await sup.submit(user_id=alice.id, repo_url=str(bare), prompt="Fix add()")
            await wait_status(hub, good.id, TaskStatus.SUCCEEDED, TaskStatus.FAILED)
    return await store.get_task(bad.id), await store.get_task(good.id)


async def assert_no_sandbox_processes_left():
    """None of the tasks' uids runs anything once the tasks ended: what was killed is waited
    for (a pidfd turns readable when its process exits), for at most 10 s."""
    if os.geteuid() != 0:
        return  # the tasks ran as the daemon's user
    uids = range(TOOLS.uid_base, TOOLS.uid_base + 8)
    with trio.fail_after(10):
        for pid in await trio.to_thread.run_sync(_processes_of, uids):
            await wait_gone(pid)
    assert all(count_tasks(uid) == 0 for uid in uids)


def _processes_of(uids: range) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid in uids:
                    found.append(int(name))
            except OSError:
                pass
    return found


async def test_a_fork_bomb_fails_its_task_with_pids_limit(store, hub, tmp_path):
    bad, good = await run_attack_then_a_normal_task(store, hub, tmp_path, ":(){ :|:& };:")
    assert bad.status is TaskStatus.FAILED and bad.reason == "pids_limit", bad.error
    assert "sandbox_max_processes" in bad.error
    assert good.status is TaskStatus.SUCCEEDED, good.error
    await assert_no_sandbox_processes_left()


async def test_a_tmp_filler_fails_its_task_with_tmp_full(store, hub, tmp_path):
    # Several files: each stops at the per-file limit (4 MiB), /tmp (8 MiB) fills all the same.
    bad, good = await run_attack_then_a_normal_task(
        store, hub, tmp_path, "for i in 1 2 3; do cat /dev/zero > /tmp/fill$i; done; echo written"
    )
    assert bad.status is TaskStatus.FAILED and bad.reason == "tmp_full", bad.error
    assert "sandbox_tmp_mb" in bad.error
    assert good.status is TaskStatus.SUCCEEDED, good.error
    await assert_no_sandbox_processes_left()


async def test_a_workspace_filler_fails_its_task_with_quota_exceeded_and_keeps_it(store, hub, tmp_path):
    bad, good = await run_attack_then_a_normal_task(
        store,
        hub,
        tmp_path,
        "for i in 1 2 3 4; do head -c 100M /dev/zero > fill$i; done",
        quota_bytes=10_000_000,
    )
    assert bad.status is TaskStatus.FAILED and bad.reason == "quota_exceeded", bad.error
    assert "workspace is kept" in bad.error
    kept = tmp_path / "workspaces" / bad.id
    # Each file stopped at the per-file limit; none was removed.
    assert sorted((p.name, p.stat().st_size) for p in kept.glob("fill*")) == [
        (f"fill{i}", 4 * MIB) for i in range(1, 5)
    ]
    assert good.status is TaskStatus.SUCCEEDED, good.error
