"""A task's sandbox lives as long as the daemon's process: not longer (the daemon killed with
SIGKILL takes every sandbox with it), and not shorter (not only as long as the worker thread
that started it: tests/test_containment_tools.py shows that one)."""

from __future__ import annotations

import os

import pytest
import trio

from daemon.agent.tools import probe_sandbox
from daemon.agent.tools.procs import descendants

from .daemon_process import stand_in
from .helpers import wait_gone

pytestmark = pytest.mark.slow

# A stand-in for the daemon: starts a process in a task's sandbox (one that reads no stdin, so
# that the daemon's death reaches it only through the lifeline), says its pid once it runs,
# then waits to be killed.
DAEMON = """
import json, subprocess, sys, trio
from pathlib import Path
from daemon.agent.tools import TaskSandbox, ToolSettings

async def main():
    settings = ToolSettings(sandbox="required", uid_base=int(sys.argv[2]), uid_count=2)
    async with TaskSandbox(Path(sys.argv[1]), settings) as sandbox:
        argv, options = sandbox.command(["bash", "-c", "sleep 1000 & echo started; exec sleep 999"])
        proc = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL,
                                                stdout=subprocess.PIPE, **options)
        said = await proc.stdout.receive_some(100)
        print(json.dumps({"output": said.decode(), "shell": proc.pid}), flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


async def test_the_sandbox_dies_with_the_daemons_process(tmp_path):
    if not (await probe_sandbox()).usable:
        pytest.skip("bubblewrap is not usable here")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    async with stand_in(DAEMON, str(workspace), str(1_960_000 + os.getpid() % 1000 * 4)) as (_, said):
        assert said["output"] == "started\n"
        sandbox = await trio.to_thread.run_sync(descendants, said["shell"])
        assert len(sandbox) >= 3  # bwrap, its init, the shell, sleep...
    with trio.fail_after(10):
        for pid in [said["shell"], *sandbox]:
            await wait_gone(pid)
