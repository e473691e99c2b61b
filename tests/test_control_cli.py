"""agentctl, run as a real subprocess against a real control server (design §3)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from control import cli
from control.protocol import COMMANDS as PROTOCOL_COMMANDS
from daemon.control_server import ControlServer
from daemon.errors import NotFound

TIMEOUT = 20  # a guard against hangs, never a wait for something to happen
_SCRIPT = Path(sys.executable).parent / "agentctl"
AGENTCTL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "control.cli"]
# The source tree under test comes first, whatever the venv's editable install points at.
_ROOT = str(Path(__file__).resolve().parents[1])
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)}

TASKS = [
    {"id": "01J0AAA", "status": "running", "user_id": 1, "attempt": 1,
     "repo_url": "https://github.com/o/r", "prompt": "fix it", "created_at": 1_700_000_000.0},
    {"id": "01J0BBB", "status": "queued", "user_id": 2, "attempt": 0,
     "repo_url": "https://github.com/o/s", "prompt": "add a test", "created_at": 1_700_000_100.0},
]


@pytest.fixture
def workdir():
    directory = tempfile.mkdtemp(prefix="actl-", dir="/tmp")  # unix socket paths are short
    yield Path(directory)
    shutil.rmtree(directory, ignore_errors=True)


class Daemon:
    """Fake handlers for every command; ``seen`` records (cmd, args)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []
        self.tail_forever = False

    def handlers(self) -> dict:
        def plain(cmd, result):
            async def handler(args):
                self.seen.append((cmd, args))
                return result
            return handler

        async def missing(args):
            raise NotFound(f"no task {args['id']}")

        async def tail(args):
            self.seen.append(("tasks.tail", args))
            for seq in range(args["after"] + 1, args["after"] + 4):
                yield {"type": "event", "task_id": args["id"], "seq": seq,
                       "event": "agent.text", "ts": 1_700_000_000.0 + seq,
                       "data": {"text": f"step {seq}\nmore"}}
            if self.tail_forever:
                await trio.sleep_forever()

        return {
            "status": plain("status", {"admitting": True, "concurrency": {"limit": 2,
                                                                           "running": 1}}),
            "tasks.list": plain("tasks.list", {"tasks": TASKS, "next_cursor": None}),
            "tasks.get": missing,
            "tasks.cancel": plain("tasks.cancel", None),
            "tasks.tail": tail,
            "concurrency.set": plain("concurrency.set", {"n": 3}),
            "users.list": plain("users.list", [{"login": "ann", "is_operator": True}]),
            "users.add": plain("users.add", {"login": "bob", "token": "agt_secret123"}),
            "backup": plain("backup", {"path": "/somewhere", "bytes": 4096}),
        }


@pytest.fixture
def daemon():
    return Daemon()


@asynccontextmanager
async def serving(path: Path, daemon: Daemon):
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(path, daemon.handlers()).serve)
        yield
        nursery.cancel_scope.cancel()


async def agentctl(*argv: str, cwd: Path | None = None, env: dict | None = None):
    with trio.fail_after(TIMEOUT):
        return await trio.run_process(
            [*AGENTCTL, *argv], capture_stdout=True, capture_stderr=True, check=False,
            cwd=cwd, env={**ENV, **(env or {})})


@pytest.fixture
async def sock(workdir, daemon):
    path = workdir / "agentd.sock"
    async with serving(path, daemon):
        yield path


pytestmark = pytest.mark.slow


async def test_status_prints_key_value_lines(sock):
    done = await agentctl("--socket", str(sock), "status")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines() == [
        "admitting:           yes",
        "concurrency.limit:   2",
        "concurrency.running: 1",
    ]


async def test_json_prints_the_raw_result_and_the_socket_can_come_from_the_env(sock):
    done = await agentctl("status", "--json", env={"AGENTD_CONTROL_SOCKET": str(sock)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"admitting": True,
                                       "concurrency": {"limit": 2, "running": 1}}


async def test_tasks_prints_a_table_and_sends_the_filters(sock, daemon):
    done = await agentctl("--socket", str(sock), "tasks", "--status", "running")
    assert done.returncode == 0, done.stderr
    header, first, second = done.stdout.decode().splitlines()
    assert header.split() == ["ID", "STATUS", "USER", "ATTEMPT", "REPO", "CREATED"]
    assert first.split()[:5] == ["01J0AAA", "running", "1", "1", "https://github.com/o/r"]
    assert second.startswith("01J0BBB  queued ")
    assert daemon.seen == [("tasks.list", {"status": "running", "user": None})]


async def test_a_refused_command_exits_1_with_the_message_on_stderr(sock):
    done = await agentctl("--socket", str(sock), "task", "01J0ZZZ")
    assert done.returncode == 1
    assert done.stdout == b""
    assert done.stderr.decode() == "agentctl: task: no task 01J0ZZZ (not_found)\n"


async def test_an_unknown_command_on_the_daemon_is_a_refusal(sock):
    done = await agentctl("--socket", str(sock), "drain")
    assert done.returncode == 1
    assert "unknown command 'drain' (unknown_command)" in done.stderr.decode()


async def test_an_unreachable_daemon_exits_2_naming_the_socket(workdir):
    missing = workdir / "nobody.sock"
    done = await agentctl("status", env={"AGENTD_CONTROL_SOCKET": str(missing)})
    assert done.returncode == 2
    assert f"cannot reach agentd at {missing}: no socket there" in done.stderr.decode()


async def test_the_default_socket_is_under_the_data_dir_named_absolutely(workdir):
    done = await agentctl("status", cwd=workdir, env={"AGENTD_CONTROL_SOCKET": "",
                                                      "AGENTD_DATA_DIR": "data"})
    assert done.returncode == 2
    assert f"at {workdir}/data/agentd.sock:" in done.stderr.decode()


async def test_tail_follows_until_the_stream_ends(sock, daemon):
    done = await agentctl("--socket", str(sock), "tail", "01J0AAA", "--after", "4")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert [line.split()[0] for line in lines] == ["5", "6", "7"]
    assert lines[0].split(None, 2)[2] == "agent.text          step 5 more"
    assert daemon.seen == [("tasks.tail", {"id": "01J0AAA", "after": 4})]


async def test_tail_json_prints_one_event_per_line(sock):
    done = await agentctl("--socket", str(sock), "--json", "tail", "01J0AAA")
    assert [json.loads(line)["seq"] for line in done.stdout.splitlines()] == [1, 2, 3]


async def _drain(stream) -> None:
    while await stream.receive_some():
        pass


async def test_ctrl_c_stops_tail_with_130(sock, daemon):
    daemon.tail_forever = True
    # A shell's background job inherits SIGINT ignored (CI may run us so): give the child
    # Python's default handler back, as a terminal would have it.
    restore_sigint = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
                      " from control.cli import main; sys.exit(main())")
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", restore_sigint, "--socket", str(sock), "tail", "T"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        with trio.fail_after(TIMEOUT):
            seen = b""
            while seen.count(b"\n") < 3:
                chunk = await proc.stdout.receive_some()
                assert chunk, await proc.stderr.receive_some()
                seen += chunk
            proc.send_signal(signal.SIGINT)
            # Keep reading: a tail blocked on a full stdout pipe could not see the signal.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drain, proc.stdout)
                assert await proc.wait() == 130
            assert await proc.stderr.receive_some() == b""
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
            await proc.stdout.aclose()
            await proc.stderr.aclose()


async def test_user_add_prints_only_the_token_on_stdout(sock, daemon):
    done = await agentctl("--socket", str(sock), "user-add", "bob")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"agt_secret123\n"
    assert "API token for bob" in done.stderr.decode()
    assert daemon.seen == [("users.add", {"login": "bob"})]


async def test_commands_send_their_arguments(sock, daemon, workdir):
    for argv in (["cancel", "01J0AAA"], ["concurrency", "3"], ["users"]):
        done = await agentctl("--socket", str(sock), *argv)
        assert done.returncode == 0, done.stderr
    done = await agentctl("--socket", str(sock), "backup", "snap.db", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert daemon.seen == [
        ("tasks.cancel", {"id": "01J0AAA"}),
        ("concurrency.set", {"n": 3}),
        ("users.list", {}),
        ("backup", {"path": f"{workdir}/snap.db"}),
    ]


async def test_a_usage_error_is_not_mistaken_for_an_unreachable_daemon():
    done = await agentctl("concurrency", "many")
    assert done.returncode == 64
    assert "'many' is not a whole number" in done.stderr.decode()


# ------------------------------------------------------------------ in-process, no daemon


def test_every_command_of_the_design_exists_and_maps_to_a_protocol_command():
    assert set(cli.COMMANDS) == {
        "status", "tasks", "task", "cancel", "retry", "tail", "drain", "resume", "concurrency",
        "users", "user-add", "revoke", "user-link", "backup", "gc"}
    assert {c.cmd for c in cli.COMMANDS.values()} == set(PROTOCOL_COMMANDS)


def test_the_default_socket_follows_the_environment():
    assert cli.default_socket({"AGENTD_CONTROL_SOCKET": "/run/a.sock",
                               "AGENTD_DATA_DIR": "/d"}) == Path("/run/a.sock")
    assert cli.default_socket({"AGENTD_DATA_DIR": "/d"}) == Path("/d/agentd.sock")
    assert cli.default_socket({}) == Path("agentd-data/agentd.sock")


def test_rendering_for_people():
    assert cli.render(None) == "ok"
    assert cli.render([]) == "(none)"
    assert cli.render({"tasks": []}, cli.TASK_COLUMNS, "(no tasks)") == "(no tasks)"
    assert cli.render({"a": 1, "prompt": "two\nlines"}) == "a:      1\nprompt: two\n        lines"
    assert cli.render([{"login": "ann", "n": 2}, {"login": "bo"}]) == (
        "LOGIN  N\nann    2\nbo     -")
    assert cli.event_line({"seq": 12, "event": "git.pushed", "data": {"branch": "b"}}) == (
        '   12  -  git.pushed          {"branch":"b"}')
