"""Per-task limits and the sandbox's own uid, through the Toolbox: a fork bomb, a /tmp filler
and a workspace filler each end with a clear reason; the host and other tasks are left alone.

Needs a usable bubblewrap (skipped with the probe's reason otherwise); the tests about the
task's own uid also need root (the daemon gives tasks a uid of their own only then).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import trio

from daemon.agent.tools import TaskSandbox, Toolbox, ToolSettings, probe_sandbox
from daemon.agent.tools.identity import count_tasks
from daemon.errors import PermanentError

MIB = 1024 * 1024

SANDBOX = trio.run(probe_sandbox)
needs_bwrap = pytest.mark.skipif(
    not SANDBOX.usable, reason=f"bubblewrap is not usable here: {SANDBOX.reason}"
)
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="tasks get a uid of their own only when the daemon is root"
)
pytestmark = needs_bwrap

# The classic fork bomb, left running in the background (the command itself returns at once).
FORK_BOMB = ":(){ :|:& };:"


def settings(**kw) -> ToolSettings:
    kw.setdefault("sandbox", "required")
    kw.setdefault("command_timeout_s", 20)
    return ToolSettings(**kw)


@pytest.fixture
def workspace(tmp_path):
    """A fresh workspace per call, under a directory only root may enter (as data dirs are)."""
    made = []

    def make() -> Path:
        ws = tmp_path / f"ws{len(made)}"
        ws.mkdir()
        made.append(ws)
        return ws

    os.chmod(tmp_path, 0o700)
    return make


async def bash(tb: Toolbox, command: str) -> str:
    return (await tb.run("bash", {"command": command})).output


async def limit_error(tb: Toolbox, quota_bytes: int | None = None) -> PermanentError:
    with pytest.raises(PermanentError) as info:
        await tb.check_limits(quota_bytes)
    return info.value


def host_git_status(ws: Path) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": str(ws.parent), "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(
        ["git", "-C", str(ws), "status"], capture_output=True, text=True, env=env, check=False
    )


@pytest.mark.slow
async def test_a_fork_bomb_fails_the_task_with_pids_limit_and_is_killed(workspace):
    with trio.fail_after(30):
        async with Toolbox(workspace(), settings(max_processes=64)) as tb:
            await bash(tb, FORK_BOMB)  # returns at once (maybe with bash's fork retries)
            error = await limit_error(tb)
            owner = tb._sandbox.owner
        assert error.code == "pids_limit"
        assert "(64, sandbox_max_processes)" in error.message and "fork bomb" in error.message
        if owner is not None:  # every process of the task's uid is gone
            assert count_tasks(owner[0]) == 0


@needs_root
@pytest.mark.slow
async def test_one_tasks_fork_bomb_leaves_another_tasks_sandbox_alone(workspace):
    with trio.fail_after(30):
        async with (
            Toolbox(workspace(), settings(max_processes=64)) as bomber,
            Toolbox(workspace(), settings(max_processes=64)) as other,
        ):
            await bash(bomber, FORK_BOMB)
            assert (await limit_error(bomber)).code == "pids_limit"
            # The bomb still runs (until the task ends): the other task forks as usual.
            out = await bash(other, "for i in $(seq 40); do sleep 0.2 & done; wait; echo forked")
            assert out == "forked\n"
            await other.check_limits()
            assert bomber._sandbox.owner != other._sandbox.owner
            assert count_tasks(bomber._sandbox.owner[0]) >= 32


async def test_a_full_tmp_fails_the_task_with_tmp_full(workspace):
    async with Toolbox(workspace(), settings(tmp_bytes=8 * MIB)) as tb:
        out = await bash(tb, "head -c 64M /dev/zero > /tmp/fill; du -m /tmp/fill")
        assert "No space left on device" in out and "\n8\t/tmp/fill" in f"\n{out}"
        error = await limit_error(tb)
    assert error.code == "tmp_full"
    assert "(8 MB, sandbox_tmp_mb)" in error.message


async def test_a_full_tmp_is_seen_even_when_the_command_then_times_out(workspace):
    async with Toolbox(workspace(), settings(tmp_bytes=4 * MIB, command_timeout_s=1)) as tb:
        result = await tb.run("bash", {"command": "cat /dev/zero > /tmp/fill; sleep 30"})
        assert result.is_error and "timed out" in result.output
        assert (await limit_error(tb)).code == "tmp_full"


async def test_tmp_below_its_size_is_fine(workspace):
    async with Toolbox(workspace(), settings(tmp_bytes=8 * MIB)) as tb:
        assert await bash(tb, "head -c 2M /dev/zero > /tmp/f && echo ok") == "ok\n"
        await tb.check_limits()


@pytest.mark.parametrize("mode", ["required", "off"])
async def test_a_workspace_filler_is_capped_per_file_and_fails_with_quota_exceeded(workspace, mode):
    ws = workspace()
    async with Toolbox(ws, settings(sandbox=mode, file_size_bytes=4 * MIB)) as tb:
        # One file cannot grow past the per-file limit (RLIMIT_FSIZE: SIGXFSZ).
        out = await bash(tb, "head -c 100M /dev/zero > big; stat -c %s big")
        assert out.endswith(f"{4 * MIB}\n")
        await tb.check_limits(quota_bytes=6_000_000)  # 4 MiB: under the quota
        await bash(tb, "for i in 1 2 3; do head -c 3M /dev/zero > f$i; done")
        error = await limit_error(tb, quota_bytes=6_000_000)
    assert error.code == "quota_exceeded"
    assert "> 6.0 MB (workspace_quota_mb)" in error.message
    assert "workspace is kept" in error.message
    assert sorted(p.name for p in ws.iterdir()) == ["big", "f1", "f2", "f3"]  # nothing removed


async def test_the_quota_counts_what_the_editor_writes_too(workspace):
    async with Toolbox(workspace(), settings()) as tb:
        result = await tb.run(
            "str_replace_based_edit_tool",
            {"command": "create", "path": "notes.txt", "file_text": "x" * 50_000},
        )
        assert not result.is_error, result.output
        assert (await limit_error(tb, quota_bytes=20_000)).code == "quota_exceeded"


async def test_memory_and_cpu_time_are_limited(workspace):
    async with Toolbox(workspace(), settings(memory_bytes=64 * MIB, cpu_time_s=1)) as tb:
        out = await bash(tb, "python3 -c 'bytearray(256 * 1024 * 1024)'")
        assert "MemoryError" in out
        out = await bash(tb, "bash -c 'while :; do :; done'; echo status $?")
        assert out.endswith("status 152\n")  # 128 + SIGXCPU
        await tb.check_limits()


@needs_root
async def test_tools_run_as_a_uid_of_their_own_and_host_git_refuses_the_workspace(workspace):
    ws = workspace()
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    (ws / "from_clone.txt").write_text("made by the daemon\n")
    assert host_git_status(ws).returncode == 0
    async with TaskSandbox(ws, settings()) as box:
        assert box.owner is not None and box.owner[0] >= box.settings.uid_base
        uid, gid = box.owner
        async with Toolbox(ws, box.settings, sandbox=box) as tb:
            out = await bash(tb, "id -u; id -G; touch made; git status --short; ls -ln from_clone.txt")
            assert out.splitlines()[:2] == [str(uid), str(gid)]
            assert "?? from_clone.txt" in out and f" {uid} {gid} " in out
            await tb.run(
                "str_replace_based_edit_tool",
                {"command": "create", "path": "edited.txt", "file_text": "hi\n"},
            )
            await tb.check_limits()
    for name in (".", ".git", ".git/config", "made", "edited.txt", "from_clone.txt"):
        st = os.lstat(ws / name)
        assert (st.st_uid, st.st_gid) == (uid, gid), name
    refused = host_git_status(ws)
    assert refused.returncode != 0 and "dubious ownership" in refused.stderr


@needs_root
async def test_each_running_task_has_its_own_uid_given_back_at_the_end(workspace):
    async with TaskSandbox(workspace(), settings()) as a, TaskSandbox(workspace(), settings()) as b:
        assert a.owner is not None and b.owner is not None and a.owner != b.owner
        freed = a.owner
    async with TaskSandbox(workspace(), settings()) as c:
        # The lowest free slot again: a's (unless another process here took it meanwhile).
        assert c.owner is not None and c.owner[0] <= max(freed[0], b.owner[0])


@needs_root
async def test_a_uid_held_by_another_daemon_is_skipped(workspace):
    import socket

    async with TaskSandbox(workspace(), settings()) as first:
        held = first.owner[0] + 1
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        squatter.bind(f"\0agentd-sandbox-uid-{held}")
        async with TaskSandbox(workspace(), settings()) as a, TaskSandbox(workspace(), settings()) as b:
            assert held not in (a.owner[0], b.owner[0])
    except OSError:
        pytest.skip("another process holds that uid right now")
    finally:
        squatter.close()


async def test_command_runs_any_program_with_the_tools_confinement(workspace, monkeypatch):
    """What delivery's git uses: the same sandbox, uid, limits and environment."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-secret-in-the-daemon")
    ws = workspace()
    async with TaskSandbox(ws, settings(max_processes=100)) as box:
        argv, options = box.command(["sh", "-c", "pwd; id -u; env; cat /proc/self/limits"])
        done = await trio.run_process(argv, capture_stdout=True, **options)
    out = done.stdout.decode()
    assert box.sandboxed and out.splitlines()[0] == str(ws)
    assert "sk-secret" not in out and "ANTHROPIC" not in out
    assert "Max processes             100" in out
    if box.owner is not None:
        assert out.splitlines()[1] == str(box.owner[0])


async def test_the_mechanism_is_logged_once(workspace, monkeypatch, caplog):
    from daemon.agent.tools import task_sandbox

    monkeypatch.setattr(task_sandbox, "_described", False)
    caplog.set_level("INFO", logger="daemon.agent.tools.task_sandbox")
    async with TaskSandbox(workspace(), settings()), TaskSandbox(workspace(), settings()):
        pass
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tool sandbox:")]
    assert len(lines) == 1
    assert "bubblewrap" in lines[0] and "limits: " in lines[0]
    assert ("cgroup v2" in lines[0]) or ("rlimits" in lines[0])


@pytest.mark.slow
def test_agentd_serve_says_at_start_which_sandbox_and_limits_hold(tmp_path):
    """The operator learns it from the log when the daemon starts, not at the first task."""
    from .daemon_process import DaemonProcess

    daemon = DaemonProcess(tmp_path / "data").start()
    try:
        assert daemon.wait_for_log("tool sandbox:")
    finally:
        assert daemon.stop() == 0
    line = next(line for line in daemon.log if "tool sandbox:" in line)
    assert "commands run as" in line and "limits:" in line
    assert not any(p.name.startswith(".probe-") for p in (tmp_path / "data" / "workspaces").iterdir())


async def test_the_sandbox_cannot_change_the_kernels_settings(tmp_path):
    """procfs's sysctls are read-only in there, whoever the task runs as."""
    async with Toolbox(tmp_path, settings()) as toolbox:
        done = await toolbox.run(
            "bash",
            {
                "command": (
                    "echo '|/tmp/x' > /proc/sys/kernel/core_pattern; "
                    "echo 1 > /proc/sys/kernel/sysrq; echo end"
                )
            },
        )
    assert "Read-only file system" in done.output and done.output.count("end") == 1
    assert Path("/proc/sys/kernel/core_pattern").read_text().strip() != "|/tmp/x"


@needs_root
async def test_a_root_daemon_never_runs_a_task_as_root(tmp_path):
    """Without a uid of its own, a task would be root inside a user namespace mapped onto the
    host's root: refused, saying how to fix it."""
    with pytest.raises(PermanentError, match="refusing to run a task as root") as info:
        async with Toolbox(tmp_path, settings(uid_count=0)) as toolbox:
            await toolbox.run("bash", {"command": "id -u"})
    assert info.value.code == "sandbox_unavailable"
    assert "sandbox_uid_count is 0" in str(info.value)
