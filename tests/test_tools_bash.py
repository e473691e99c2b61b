"""The bash tool: a persistent session, timeouts that kill the whole process tree, output cap.

Most tests run twice: as a plain subprocess (``off``) and under bubblewrap (``bwrap``, skipped
with the reason when bubblewrap is not usable on this host).
"""

from __future__ import annotations

import os
import random
import resource
from pathlib import Path

import pytest
import trio

from daemon.agent.tools import Toolbox, ToolSettings, probe_sandbox
from daemon.cpu_pin import loop_on_one_cpu

from .helpers import cpu_list

# Probed once at collection, outside any test's trio run, so that the skip keeps its reason.
SANDBOX = trio.run(probe_sandbox)
needs_bwrap = pytest.mark.skipif(
    not SANDBOX.usable, reason=f"bubblewrap is not usable here: {SANDBOX.reason}"
)


@pytest.fixture(params=["off", pytest.param("bwrap", marks=needs_bwrap)])
async def make_toolbox(request, tmp_path):
    """Factory: ``make_toolbox(**settings)`` -> a Toolbox over a fresh workspace, closed after."""
    made: list[Toolbox] = []

    def make(**kw) -> Toolbox:
        kw.setdefault("sandbox", "off" if request.param == "off" else "required")
        ws = tmp_path / f"ws{len(made)}"
        ws.mkdir()
        made.append(Toolbox(ws, ToolSettings(**kw)))
        return made[-1]

    yield make
    for tb in made:
        await tb.aclose()


async def bash(tb: Toolbox, command: str | None = None, **extra):
    args = dict(extra)
    if command is not None:
        args["command"] = command
    return await tb.run("bash", args)


def marker() -> str:
    """A sleep duration no other process uses, to find our processes in /proc by cmdline."""
    return f"{random.randint(5000, 9000)}.{random.randint(10**5, 10**6)}"


def sleepers(duration: str) -> list[int]:
    """Host pids of live (non-zombie) processes running ``sleep <duration>``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            args = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        state = stat[stat.rfind(b")") + 2 :].split()[0]
        is_sleep = len(args) >= 2 and args[0].endswith(b"sleep") and args[1] == duration.encode()
        if is_sleep and state not in (b"Z", b"X"):
            found.append(int(name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def zombie_children() -> list[int]:
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            if fields[0] == b"Z" and int(fields[1]) == me:
                found.append(int(name))
    return found


async def test_runs_a_command_in_the_workspace(make_toolbox):
    tb = make_toolbox()
    result = await bash(tb, "echo hello; pwd")
    assert result.output == f"hello\n{tb.workspace}\n"
    assert not result.is_error


async def test_stdout_and_stderr_are_interleaved_in_order(make_toolbox):
    tb = make_toolbox()
    result = await bash(tb, "echo one; echo two >&2; echo three")
    assert result.output == "one\ntwo\nthree\n"


async def test_non_zero_exit_code_is_reported(make_toolbox):
    tb = make_toolbox()
    result = await bash(tb, "echo oops; exit_code() { return 3; }; exit_code")
    assert result.output == "oops\n[exit code 3]"
    assert not result.is_error  # the command ran; the model reads the code


async def test_empty_output_says_so(make_toolbox):
    assert (await bash(make_toolbox(), "true")).output == "(no output)"


async def test_commands_get_no_stdin(make_toolbox):
    tb = make_toolbox(command_timeout_s=5)
    result = await bash(tb, "cat; read -r line; echo read=$?")
    assert result.output == "read=1\n"


async def test_cd_and_export_persist_between_calls(make_toolbox):
    tb = make_toolbox()
    await bash(tb, "mkdir -p sub/dir && cd sub/dir && export FOO=bar && BAZ=qux")
    result = await bash(tb, 'pwd; echo "$FOO $BAZ"')
    assert result.output == f"{tb.workspace}/sub/dir\nbar qux\n"


async def test_restart_gives_a_fresh_shell(make_toolbox):
    tb = make_toolbox()
    await bash(tb, "cd /; export FOO=bar")
    restarted = await bash(tb, restart=True)
    assert "restarted" in restarted.output and not restarted.is_error
    result = await bash(tb, 'pwd; echo "[$FOO]"')
    assert result.output == f"{tb.workspace}\n[]\n"


async def test_restart_with_a_command_runs_it_in_the_new_shell(make_toolbox):
    tb = make_toolbox()
    await bash(tb, "export FOO=bar")
    result = await bash(tb, 'echo "[$FOO]"', restart=True)
    assert result.output == "[]\n"


async def test_shell_exiting_is_an_error_and_the_next_command_gets_a_new_one(make_toolbox):
    tb = make_toolbox()
    result = await bash(tb, "echo bye; exit 4")
    assert result.is_error
    assert result.output.startswith("bye\n") and "exited (status 4)" in result.output
    assert (await bash(tb, "echo back")).output == "back\n"


async def test_syntax_error_does_not_kill_the_session(make_toolbox):
    tb = make_toolbox()
    await bash(tb, "export KEEP=1")
    result = await bash(tb, "if then fi (")
    assert "syntax error" in result.output and "[exit code 2]" in result.output
    assert (await bash(tb, "echo $KEEP")).output == "1\n"


@pytest.mark.parametrize(
    "args, message",
    [
        ({}, "command is required"),
        ({"command": "   "}, "command is required"),
        ({"command": 42}, "command must be a string"),
        ({"command": "ls", "restart": "yes"}, "restart must be true or false"),
        ({"command": "echo \x00"}, "NUL"),
    ],
)
async def test_bad_input_is_a_tool_error(make_toolbox, args, message):
    result = await make_toolbox().run("bash", args)
    assert result.is_error and message in result.output


async def test_environment_has_no_daemon_secrets(make_toolbox, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-very-secret")
    monkeypatch.setenv("AGENTD_GITHUB_TOKEN", "ghp_secret")
    tb = make_toolbox()
    result = await bash(tb, "env; touch $HOME/writable && echo home-ok")
    assert "sk-ant-very-secret" not in result.output
    assert "ANTHROPIC" not in result.output and "AGENTD_" not in result.output
    assert "ghp_secret" not in result.output
    assert "home-ok" in result.output
    env = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
    assert env["HOME"] != os.environ.get("HOME")
    assert not env["HOME"].startswith(str(tb.workspace))  # dotfiles stay out of the diff
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


async def test_output_is_capped_keeping_head_and_tail(make_toolbox):
    tb = make_toolbox(output_cap_bytes=1000)
    result = await bash(tb, "seq 1 100000")
    total = sum(len(f"{i}\n") for i in range(1, 100001))
    assert result.output.startswith("1\n2\n3\n")
    assert result.output.endswith("99999\n100000\n")
    assert f"\n[... {total - 1000} bytes cut ...]\n" in result.output
    assert len(result.output) < 1100


async def test_huge_output_is_not_buffered_in_memory(make_toolbox):
    tb = make_toolbox(output_cap_bytes=2000, command_timeout_s=30)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = await bash(tb, "head -c 200000000 /dev/zero | tr '\\0' x; echo; echo end")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert result.output.startswith("x" * 1000) and result.output.endswith("x\nend\n")
    assert "bytes cut" in result.output
    assert grown_mib < 50, f"peak memory grew by {grown_mib:.0f} MiB for 200 MB of output"


async def test_timeout_kills_children_and_grandchildren(make_toolbox):
    tb = make_toolbox(command_timeout_s=0.5)
    m = marker()
    # A background child, a nested bash with its own child, and one that left the group.
    started = await bash(
        tb, f"sleep {m} & bash -c 'sleep {m} & sleep {m}; true' & setsid sleep {m} & echo $!"
    )
    assert not started.is_error
    assert len(await wait_for_sleepers(m, 4)) == 4
    result = await bash(tb, "echo before; sleep 1000")
    assert result.is_error
    assert result.output.startswith("before\n")
    assert "timed out after 0.5 s" in result.output
    assert sleepers(m) == []
    if not tb.sandboxed:  # host pids: check the one bash printed, by pid
        assert not alive(int(started.output.split()[0]))
    # The session was restarted: a fresh shell in the workspace.
    assert (await bash(tb, "pwd")).output == f"{tb.workspace}\n"


async def wait_for_sleepers(m: str, n: int) -> list[int]:
    # `&` returns before the children have exec'd sleep; wait on that, bounded.
    with trio.fail_after(5):
        while len(found := sleepers(m)) < n:  # noqa: ASYNC110 - an exec has no event to wait on
            await trio.sleep(0.01)
    return found


async def test_cancellation_kills_the_process_group_and_reaps_it(make_toolbox):
    tb = make_toolbox(command_timeout_s=60)
    m = marker()
    await bash(tb, f"sleep {m} & bash -c 'sleep {m}; true' &")
    await wait_for_sleepers(m, 2)
    shell_pid = tb._bash.pid
    with trio.move_on_after(0.5) as scope:
        await bash(tb, f"sleep {m}")
    assert scope.cancelled_caught
    assert sleepers(m) == []
    assert not alive(shell_pid)
    assert zombie_children() == []
    assert (await bash(tb, "echo fresh")).output == "fresh\n"


@pytest.mark.parametrize("from_a_cancelled_task", [False, True])
async def test_aclose_kills_background_jobs(make_toolbox, from_a_cancelled_task):
    tb = make_toolbox()
    m = marker()
    await bash(tb, f"sleep {m} &")
    await wait_for_sleepers(m, 1)
    with trio.CancelScope() as scope:
        if from_a_cancelled_task:  # as in the cleanup of a cancelled attempt
            scope.cancel()
        await tb.aclose()
    assert sleepers(m) == []
    assert zombie_children() == []
    with pytest.raises(trio.ClosedResourceError):
        await bash(tb, "echo no")


async def test_background_job_holding_the_pipe_does_not_block_the_call(make_toolbox):
    tb = make_toolbox(command_timeout_s=5)
    with trio.fail_after(3):
        result = await bash(tb, "sleep 30 & echo started")
    assert result.output == "started\n"


async def test_output_without_final_newline_and_xtrace(make_toolbox):
    tb = make_toolbox()
    assert (await bash(tb, "printf abc")).output == "abc"
    # xtrace echoes the end-marker printf too; its pieces are split so it is not taken as one.
    traced = await bash(tb, "set -x; echo hi")
    assert traced.output.startswith("++ echo hi\nhi\n") and not traced.is_error
    assert (await bash(tb, "set +x; echo still")).output.endswith("still\n")


async def test_concurrent_calls_are_serialised(make_toolbox):
    tb = make_toolbox()
    results = {}

    async def call(n: int) -> None:
        results[n] = await bash(tb, f"echo start{n}; sleep 0.05; echo end{n}")

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(call, n)
    assert all(results[n].output == f"start{n}\nend{n}\n" for n in range(3))


async def test_multi_line_commands_and_heredocs(make_toolbox):
    tb = make_toolbox()
    command = "cat > notes.txt <<'EOF'\nit's $HOME \"quoted\"\nEOF\nfor i in 1 2; do\n  echo $i\ndone"
    assert (await bash(tb, command)).output == "1\n2\n"
    assert (tb.workspace / "notes.txt").read_text() == 'it\'s $HOME "quoted"\n'


async def test_the_shell_gets_every_cpu_while_the_loop_is_pinned(make_toolbox):
    wide = os.sched_getaffinity(0)
    with loop_on_one_cpu():
        tb = make_toolbox()
        out = await bash(tb, "sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status")
    assert cpu_list(out.output.strip()) == wide


async def test_a_cancel_as_the_shell_starts_with_the_loop_pinned_still_kills_it(make_toolbox, monkeypatch):
    # The cancellation arrives just as the new shell exists, before the call guards it (while
    # its processes get every CPU back): the shell must not outlive the call.
    real_open, started = trio.lowlevel.open_process, []
    scope = trio.CancelScope()

    async def open_then_cancel(*args, **kwargs):
        process = await real_open(*args, **kwargs)
        started.append(process.pid)
        scope.cancel()
        return process

    monkeypatch.setattr(trio.lowlevel, "open_process", open_then_cancel)
    tb = make_toolbox()
    with loop_on_one_cpu(), scope:
        await bash(tb, "echo never")
    assert scope.cancelled_caught
    assert not alive(started[0])
