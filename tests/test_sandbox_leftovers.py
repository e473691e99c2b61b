"""Nothing of a sandbox outlives its stop: not when bwrap is stopped as it starts.

bwrap's monitor clones the sandbox's pid 1, which then waits on an eventfd for the monitor to
let it go on, and until it becomes that pid 1 it has no ``PR_SET_PDEATHSIG``. A monitor killed
alone in that window left that child behind for ever: parent pid 1, no children, blocked on
the eventfd, running as the daemon's user or root (not the task's uid, in no task cgroup), its
cwd the workspace; killed a little later, the whole sandbox, its command running. Each
test stops sandboxes at spread moments of their start, the way the daemon or the world does,
then waits for every process of the task's uid, or whose command line or working directory is
the workspace, to end (each one's pidfd; never a sleep). The commands run behind the egress
proxy's bridge (``proxy_bridge.py``, as the task's uid), which must go too.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import trio

from daemon.agent.tools import TaskSandbox, ToolSettings, probe_sandbox
from daemon.agent.tools.procs import pids, proc_file, proc_stat
from daemon.agent.tools.sandbox import bwrap_argv, run_probe_command

from .daemon_process import stand_in
from .helpers import wait_gone

pytestmark = pytest.mark.slow

# Stops at 0, 0.5, 1 ... 19.5 ms after the start: bwrap clones its child a few ms in.
ATTEMPTS = 40
STEP_S = 0.0005


@pytest.fixture
def bwrap_usable():
    # A sync fixture: a skip raised inside trio loses its reason under pytest-trio.
    probe = trio.run(probe_sandbox)
    if not probe.usable:
        pytest.skip(f"bubblewrap is not usable here: {probe.reason}")
    return probe.bwrap


def uid_base(slot: int) -> int:
    """Task uids of this test process alone (two per slot), away from other tests' ranges."""
    return 2_100_000 + os.getpid() % 1000 * 8 + slot * 2


def settings(slot: int) -> ToolSettings:
    return ToolSettings(sandbox="required", uid_base=uid_base(slot), uid_count=2)


def leftovers(place: Path, uid: int | None) -> list[int]:
    """Live processes of ``uid``, or whose command line names ``place`` or whose working
    directory is ``place`` (by inode: a sandbox's own view of it counts too)."""
    here = os.stat(place)
    name = os.fsencode(place)
    found = []
    for pid in pids():
        stat = proc_stat(int(pid))
        if stat is None or stat[0] in ("Z", "X") or int(pid) == os.getpid():
            continue
        try:
            cwd = os.stat(f"/proc/{pid}/cwd")
            owner = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue
        cmdline = proc_file(pid, "cmdline") or b""
        if os.path.samestat(cwd, here) or name in cmdline or (uid is not None and owner == uid):
            found.append(int(pid))
    return found


async def assert_all_gone(place: Path, uid: int | None = None) -> None:
    """Every leftover of ``place`` and ``uid`` ends within 10 s (what was killed may still be
    dying: each one is waited for), and none is left then."""
    with trio.fail_after(10):
        for pid in await trio.to_thread.run_sync(leftovers, place, uid):
            await wait_gone(pid)
    assert await trio.to_thread.run_sync(leftovers, place, uid) == []


def placeholder_proxy(tmp_path: Path) -> Path:
    """What the egress proxy's socket is bound from: the bridge only connects to it when
    something in the sandbox connects to the bridge, which nothing does here."""
    path = tmp_path / "proxy.sock"
    path.touch()
    return path


async def test_a_probe_cancelled_as_bwrap_starts_leaves_nothing(bwrap_usable, tmp_path):
    """The probe (``run_probe_command``), cancelled or timed out: its whole group is killed."""
    scratch = tmp_path / "probe"
    scratch.mkdir()
    argv = [*bwrap_argv(bwrap_usable, scratch, tmp_bytes=1 << 20), "sleep", "1000"]
    for attempt in range(ATTEMPTS):
        with trio.move_on_after(attempt * STEP_S):
            await run_probe_command(argv, cwd=str(scratch))
    await assert_all_gone(scratch)


async def test_closing_the_sandbox_ends_what_a_bwrap_killed_alone_left(bwrap_usable, tmp_path):
    """Something kills bwrap alone (an operator's kill, the OOM killer): when the task's
    sandbox closes, nothing of it is left either."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    async with TaskSandbox(workspace, settings(0)) as box:
        argv, options = box.command(["sleep", "1000"], proxy=placeholder_proxy(tmp_path))
        # Without the lifeline shell in front: the process started is bwrap itself (the
        # limits' prefix execs it), the one that gets killed.
        if "pass_fds" in options:
            argv = argv[argv.index("agentd-lifeline") + 2 :]
        for attempt in range(ATTEMPTS):
            proc = await trio.lowlevel.open_process(
                argv, stdin=subprocess.DEVNULL, start_new_session=True, env=options["env"], cwd=workspace
            )
            with trio.move_on_after(attempt * STEP_S):
                await proc.wait()
            proc.kill()
            await proc.wait()
        uid = box.owner[0] if box.owner is not None else None
    await assert_all_gone(workspace, uid)


# A stand-in for the daemon: enters a task's sandbox, starts one sandboxed command and says so
# once it runs, then keeps starting more, three at a time, until it is killed (at most 18).
DAEMON = """
import json, subprocess, sys, trio
from pathlib import Path
from daemon.agent.tools import TaskSandbox, ToolSettings

async def start(sandbox, proxy, stdout):
    argv, options = sandbox.command(["bash", "-c", "echo started; exec sleep 1000"], proxy=proxy)
    return await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL, stdout=stdout,
                                            start_new_session=True, **options)

async def keep_starting(sandbox, proxy):
    for _ in range(6):
        await start(sandbox, proxy, subprocess.DEVNULL)

async def main():
    workspace, proxy = Path(sys.argv[1]), Path(sys.argv[3])
    settings = ToolSettings(sandbox="required", uid_base=int(sys.argv[2]), uid_count=2)
    async with TaskSandbox(workspace, settings) as sandbox:
        first = await start(sandbox, proxy, subprocess.PIPE)
        said = await first.stdout.receive_some(100)
        uid = sandbox.owner[0] if sandbox.owner is not None else None
        print(json.dumps({"output": said.decode(), "uid": uid}), flush=True)
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(keep_starting, sandbox, proxy)
        await trio.sleep_forever()

trio.run(main)
"""


def children(pid: int) -> list[int]:
    """Children of every thread of ``pid`` (trio forks from its worker threads)."""
    found = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            found += (proc_file(f"{pid}/task/{tid}", "children") or b"").split()
    except OSError:
        pass
    return [int(child) for child in found]


def is_bwrap(pid: int) -> bool:
    return (proc_file(pid, "comm") or b"").strip() == b"bwrap"


def starting(root: int) -> bool:
    """Whether a sandbox under ``root`` is halfway through its start: a bwrap whose child (the
    sandbox's pid 1 to be) has not started the command yet (it and its children are bwrap)."""
    todo = [root]
    while todo:
        pid = todo.pop()
        below = children(pid)
        if is_bwrap(pid) and any(is_bwrap(c) and all(map(is_bwrap, children(c))) for c in below):
            return True
        todo += below
    return False


def wait_for_a_start(root: int, looks: int = 20_000) -> None:
    """Look at the tree under ``root`` until a sandbox is starting there (at most ``looks``
    times: a start missed is still a kill at a moment of starts)."""
    for _ in range(looks):
        if starting(root):
            return


async def test_the_daemon_killed_as_sandboxes_start_leaves_nothing(bwrap_usable, tmp_path):
    """SIGKILL to the daemon while it starts sandboxes: the lifeline ends each of them whole."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    proxy = placeholder_proxy(tmp_path)
    async with stand_in(DAEMON, str(workspace), str(uid_base(1)), str(proxy)) as (daemon, said):
        assert said["output"] == "started\n"
        # The moment to kill it (as the block ends): while a sandbox is halfway through its start.
        await trio.to_thread.run_sync(wait_for_a_start, daemon.pid)
    await assert_all_gone(workspace, said["uid"])
