"""``run_git``: output, exit codes, a missing git, what a timeout or a cancellation kills, and
git's CPU priority."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import trio

from daemon.cpu_pin import loop_on_one_cpu
from daemon.errors import PermanentError, TransientError
from daemon.git import process as git_process, run_git
from daemon.git.process import GIT_NICE

from .helpers import cpu_list


async def test_output_exit_code_and_classified_failure(tmp_path):
    done = await run_git(["init", "-q", str(tmp_path / "r")])
    assert done.returncode == 0 and done.stdout == b"" and done.stderr == ""
    head = await run_git(["symbolic-ref", "HEAD"], cwd=tmp_path / "r")
    assert head.stdout.startswith(b"refs/heads/")

    failed = await run_git(["rev-parse", "--verify", "HEAD"], cwd=tmp_path / "r", check=False)
    assert failed.returncode != 0 and "fatal" in failed.stderr
    with pytest.raises(PermanentError, match=r"git rev-parse failed \(exit 128\)"):
        await run_git(["rev-parse", "--verify", "HEAD"], cwd=tmp_path / "r")


async def test_large_output_on_both_pipes_is_read_whole_and_stderr_capped(tmp_path):
    """stdout and stderr are drained together: neither pipe fills up and stalls git. stdout is
    read whole; of stderr (a hostile server's sideband messages can be endless) the first and
    last 32 KiB are kept."""
    script = (
        "import sys; sys.stdout.write('o' * 300000); "
        "sys.stderr.write('h' * 40000 + 'e' * 300000 + 'fatal: the end')"
    )
    done = await run_git(["-c", f'alias.both=!{sys.executable} -c "{script}"', "both"], check=False)
    assert done.returncode == 0
    assert done.stdout == b"o" * 300000
    assert done.stderr.startswith("h" * 32768 + "\n[...]\n") and done.stderr.endswith("eefatal: the end")
    assert len(done.stderr) < 70000


async def test_git_missing_is_permanent(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PermanentError, match="git is not installed") as info:
        await run_git(["--version"])
    assert info.value.code == "git_missing"


def _alive(pid: int) -> bool:
    """Running or stopped; a zombie (killed, waiting for its parent) does not count."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


async def _pid_from(path: Path) -> int:
    with trio.fail_after(10):
        # A file a grandchild of git writes: no event says when.
        while not path.exists() or not path.read_text().strip():  # noqa: ASYNC110
            await trio.sleep(0.01)
    return int(path.read_text())


async def test_cancel_kills_the_whole_group_and_waits_for_git(tmp_path):
    """A grandchild of git (here the shell of an alias) dies with it, by the group's SIGKILL."""
    pidfile = tmp_path / "pid"
    alias = f"alias.slow=!echo $$ > {pidfile}; exec sleep 60"
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def cancel_once_started():
                await _pid_from(pidfile)
                scope.cancel()

            nursery.start_soon(cancel_once_started)
            await run_git(["-c", alias, "slow"], timeout=60)
    assert scope.cancelled_caught
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:  # noqa: ASYNC110 - a pid's death has no event
        await trio.sleep(0.01)
    assert not _alive(pid)


@pytest.mark.skipif(shutil.which("setsid") is None, reason="setsid(1) not installed")
async def test_timeout_returns_even_if_an_escaped_process_holds_the_pipes(tmp_path):
    """A process that left git's group keeps stdout open; the timeout still ends the call."""
    pidfile = tmp_path / "pid"
    alias = f"alias.escape=!setsid sh -c 'echo $$ > {pidfile}; exec sleep 60' &"
    started = time.monotonic()
    try:
        with pytest.raises(TransientError, match=r"timed out after 0\.5 s"):
            await run_git(["-c", alias, "escape"], timeout=0.5)
        assert time.monotonic() - started < 5
    finally:
        pid = await _pid_from(pidfile)
        os.kill(pid, signal.SIGKILL)


async def test_many_at_once_each_get_their_own_output(tmp_path):
    results: dict[int, bytes] = {}

    async def one(i: int) -> None:
        done = await run_git(["-c", f"alias.say=!echo {i}; sleep 0.2", "say"])
        results[i] = done.stdout

    async with trio.open_nursery() as nursery:
        for i in range(100):
            nursery.start_soon(one, i)
    assert results == {i: f"{i}\n".encode() for i in range(100)}


async def test_git_and_what_it_starts_run_at_background_priority_in_the_daemons_session(
    tmp_path, monkeypatch
):
    # The alias's shell asks once the test says so: after run_git has set the priority of git's
    # group (told by the wrapper below; git may start before trio hears it has). The event
    # loop's thread is pinned to one CPU meanwhile, as when serving: git gets them all.
    go, pidfile = tmp_path / "go", tmp_path / "pid"
    alias = (
        f"alias.where=!echo $$ > {pidfile}; while [ ! -e {go} ]; do sleep 0.01; done; "
        "nice; ps -o sid= -p $$; sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/$PPID/status"
    )
    wide = os.sched_getaffinity(0)
    prioritized = trio.Event()
    real_priority = git_process.background_priority

    def and_say_so(process: trio.Process) -> None:
        real_priority(process)
        prioritized.set()

    monkeypatch.setattr(git_process, "background_priority", and_say_so)
    with loop_on_one_cpu():
        async with trio.open_nursery() as nursery:
            done = []

            async def where() -> None:
                done.append(await run_git(["-c", alias, "where"], timeout=30))

            nursery.start_soon(where)
            await _pid_from(pidfile)
            await prioritized.wait()
            go.touch()
    nice, session, git_cpus = done[0].stdout.decode().split()
    assert int(nice) == GIT_NICE
    assert int(session) == os.getsid(0)
    assert cpu_list(git_cpus) == wide
