"""agentctl, run as a real subprocess against a real control server (design §3)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from control import cli
from control.protocol import COMMANDS as PROTOCOL_COMMANDS
from control.render import event_line, is_waiting_for_input
from daemon import __version__
from daemon.control_server import ControlServer
from daemon.errors import NotFound

TIMEOUT = 20  # a guard against hangs, never a wait for something to happen
_SCRIPT = Path(sys.executable).parent / "agentctl"
AGENTCTL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "control.cli"]
# The source tree under test comes first, whatever the venv's editable install points at.
_ROOT = str(Path(__file__).resolve().parents[1])
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)}

TASKS = [
    {
        "id": "01J0AAA",
        "status": "running",
        "user_id": 1,
        "user_login": "ann",
        "attempt": 1,
        "repo_url": "https://github.com/o/r",
        "prompt": "fix it",
        "created_at": 1_700_000_000.0,
    },
    {
        "id": "01J0BBB",
        "status": "queued",
        "user_id": 2,
        "user_login": "bob",
        "attempt": 0,
        "repo_url": "https://github.com/o/s",
        "prompt": "add a test",
        "created_at": 1_700_000_100.0,
    },
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
        self.wait_at: int | None = None  # tail: this seq is a task.status waiting_input
        self.task: dict | None = None  # tasks.get's answer (None: not found)

    def handlers(self) -> dict:
        def plain(cmd, result):
            async def handler(args):
                self.seen.append((cmd, args))
                return result

            return handler

        async def get(args):
            if self.task is None:
                raise NotFound(f"no task {args['id']}")
            self.seen.append(("tasks.get", args))
            return self.task

        async def tail(args):
            self.seen.append(("tasks.tail", args))
            for seq in range(args["after"] + 1, args["after"] + 4):
                if seq == self.wait_at:
                    kind, data = "task.status", {"status": "waiting_input", "reason": "which?"}
                else:
                    kind, data = "agent.text", {"text": f"step {seq}\nmore"}
                yield {
                    "type": "event",
                    "task_id": args["id"],
                    "seq": seq,
                    "event": kind,
                    "ts": 1_700_000_000.0 + seq,
                    "data": data,
                }
            if self.tail_forever:
                await trio.sleep_forever()

        return {
            "status": plain("status", {"admitting": True, "concurrency": {"limit": 2, "running": 1}}),
            "tasks.list": plain("tasks.list", {"tasks": TASKS, "next_cursor": None}),
            "tasks.create": plain("tasks.create", {**TASKS[1], "id": "01j0ccc", "status": "running"}),
            "tasks.get": get,
            "tasks.cancel": plain("tasks.cancel", None),
            "tasks.review": plain("tasks.review", None),
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
            [*AGENTCTL, *argv],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=cwd,
            env={**ENV, **(env or {})},
        )


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
    assert json.loads(done.stdout) == {"admitting": True, "concurrency": {"limit": 2, "running": 1}}


async def test_tasks_prints_a_table_and_sends_the_filters(sock, daemon):
    done = await agentctl("--socket", str(sock), "tasks", "--status", "running")
    assert done.returncode == 0, done.stderr
    header, first, second = done.stdout.decode().splitlines()
    assert header.split() == ["ID", "STATUS", "USER", "ATTEMPT", "REPO", "CREATED"]
    assert first.split()[:5] == ["01J0AAA", "running", "ann", "1", "https://github.com/o/r"]
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
    done = await agentctl("status", cwd=workdir, env={"AGENTD_CONTROL_SOCKET": "", "AGENTD_DATA_DIR": "data"})
    assert done.returncode == 2
    assert f"at {workdir}/data/agentd.sock:" in done.stderr.decode()


async def test_tail_follows_until_the_stream_ends(sock, daemon):
    done = await agentctl("--socket", str(sock), "tail", "01J0AAA", "--after", "4")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert [line.split()[0] for line in lines] == ["5", "6", "7"]
    assert lines[0].split(None, 2)[2] == "agent.text         step 5 more"
    assert daemon.seen == [("tasks.tail", {"id": "01J0AAA", "after": 4})]


async def test_tail_stops_where_the_task_waits_for_input(sock, daemon):
    daemon.wait_at, daemon.tail_forever = 2, True
    daemon.task = {"id": "01J0AAA", "status": "waiting_input", "last_seq": 2}
    done = await agentctl("--socket", str(sock), "tail", "01J0AAA")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert [line.split()[0] for line in lines] == ["1", "2"]
    assert lines[1].split(None, 2)[2] == "task.status        waiting_input: which?"
    assert done.stderr.decode() == (
        "agentctl: task 01J0AAA waits for input: answer it with POST /api/tasks/01J0AAA/messages;"
        " tail --follow keeps following\n"
    )


@pytest.mark.parametrize(
    ("argv", "task"),
    [
        (["--follow"], {"status": "waiting_input", "last_seq": 2}),
        ([], {"status": "running", "last_seq": 9}),  # a wait answered since: replayed, not stopped at
    ],
)
async def test_tail_goes_past_a_wait_with_follow_or_once_answered(sock, daemon, argv, task):
    daemon.wait_at, daemon.task = 2, task
    done = await agentctl("--socket", str(sock), "tail", "01J0AAA", *argv)
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.decode().splitlines()] == ["1", "2", "3"]
    assert done.stderr == b""


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
    restore_sigint = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
        " from control.cli import main; sys.exit(main())"
    )
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", restore_sigint, "--socket", str(sock), "tail", "T"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
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
    for argv in (["cancel", "01J0AAA"], ["review", "01J0AAB"], ["concurrency", "3"], ["users"]):
        done = await agentctl("--socket", str(sock), *argv)
        assert done.returncode == 0, done.stderr
    done = await agentctl("--socket", str(sock), "backup", "snap.db", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert daemon.seen == [
        ("tasks.cancel", {"id": "01J0AAA"}),
        ("tasks.review", {"id": "01J0AAB"}),
        ("concurrency.set", {"n": 3}),
        ("users.list", {}),
        ("backup", {"path": f"{workdir}/snap.db"}),
    ]


async def test_create_prints_the_new_id_alone_on_stdout_and_how_to_follow_it(sock, daemon):
    argv = ["create", "https://github.com/o/s", "add a test", "--user", "bob", "--base", "dev"]
    done = await agentctl("--socket", str(sock), *argv, "--max-usd", "2.5", "--max-turns", "30")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"01j0ccc\n"
    assert done.stderr.decode() == "task for bob, running; follow it: agentctl tail 01j0ccc\n"
    assert daemon.seen == [
        (
            "tasks.create",
            {
                "repo_url": "https://github.com/o/s",
                "prompt": "add a test",
                "base_branch": "dev",
                "user": "bob",
                "budget": {"max_turns": 30, "max_usd": 2.5},
            },
        )
    ]


async def test_create_reads_a_prompt_of_dash_from_stdin(sock, daemon):
    with trio.fail_after(TIMEOUT):
        done = await trio.run_process(
            [*AGENTCTL, "--socket", str(sock), "create", "file:///r", "-"],
            stdin=b"line one\nline two\n",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=ENV,
        )
    assert done.returncode == 0, done.stderr
    assert daemon.seen[0][1]["prompt"] == "line one\nline two\n"
    assert daemon.seen[0][1]["user"] is None and daemon.seen[0][1]["budget"] == {}


async def test_the_shell_completes_commands_and_options(workdir):
    said = workdir / "completions"
    for line, expected in (
        ("agentctl c", {"create", "cancel", "concurrency", "compact"}),
        ("agentctl create --max-t", {"--max-turns", "--max-tokens"}),
    ):
        env = {
            "_ARGCOMPLETE": "1",
            "COMP_LINE": line,
            "COMP_POINT": str(len(line)),
            "_ARGCOMPLETE_IFS": "\n",
            "_ARGCOMPLETE_STDOUT_FILENAME": str(said),
        }
        done = await agentctl(env=env)
        assert done.returncode == 0, done.stderr
        assert set(said.read_text().split("\n")) == expected


async def test_a_usage_error_is_not_mistaken_for_an_unreachable_daemon():
    done = await agentctl("concurrency", "many")
    assert done.returncode == 64
    assert "'many' is not a whole number" in done.stderr.decode()


# ------------------------------------------------------------------ in-process, no daemon


def test_every_command_of_the_design_exists_and_maps_to_a_protocol_command():
    assert set(cli.COMMANDS) == {
        "status",
        "tasks",
        "create",
        "task",
        "cancel",
        "retry",
        "review",
        "tail",
        "drain",
        "resume",
        "concurrency",
        "users",
        "user-add",
        "revoke",
        "user-link",
        "backup",
        "gc",
        "compact",
        "rotate-keys",
        "webhooks",
        "webhook-add",
        "webhook-remove",
        "webhook-test",
        "deliveries",
        "redeliver",
        "share",
        "shares",
        "unshare",
    }
    assert {c.cmd for c in cli.COMMANDS.values()} == set(PROTOCOL_COMMANDS)


def test_the_socket_comes_from_the_environment_else_from_where_agentd_puts_it():
    assert cli.socket_candidates({"AGENTD_CONTROL_SOCKET": "/run/a.sock", "AGENTD_DATA_DIR": "/d"}) == [
        Path("/run/a.sock")
    ]
    assert cli.socket_candidates({"AGENTD_DATA_DIR": "/d"}) == [Path("/d/agentd.sock")]
    assert cli.socket_candidates({}) == [Path("/run/agentd/agentd.sock"), Path("agentd-data/agentd.sock")]


def test_the_systemd_socket_is_the_one_the_unit_makes():
    unit = (Path(_ROOT) / "deploy" / "agentd.service").read_text()
    assert "RuntimeDirectory=agentd\n" in unit  # $RUNTIME_DIRECTORY: /run/agentd
    assert cli.SYSTEMD_SOCKET == Path("/run/agentd/agentd.sock")


def test_find_socket_takes_the_first_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    systemd = tmp_path / "run" / "agentd.sock"
    monkeypatch.setattr(cli, "SYSTEMD_SOCKET", systemd)
    local = tmp_path / "agentd-data" / "agentd.sock"
    with pytest.raises(cli.NoSocket) as caught:
        cli.find_socket({})
    assert str(caught.value) == (
        f"no agentd control socket found: looked at {systemd} and {local} (is agentd running? "
        "give --socket PATH or set AGENTD_CONTROL_SOCKET)"
    )
    local.parent.mkdir()
    local.touch()
    assert cli.find_socket({}) == local
    systemd.parent.mkdir()
    systemd.touch()
    assert cli.find_socket({}) == systemd
    # One place given is taken as it is: connecting says it is not there.
    assert cli.find_socket({"AGENTD_DATA_DIR": "elsewhere"}) == tmp_path / "elsewhere/agentd.sock"


def test_without_a_socket_agentctl_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "SYSTEMD_SOCKET", tmp_path / "run" / "agentd.sock")
    for name in ("AGENTD_CONTROL_SOCKET", "AGENTD_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["status"]) == cli.EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert err.startswith("agentctl: no agentd control socket found: looked at ") and err.count("\n") == 1
    assert f"{tmp_path}/agentd-data/agentd.sock" in err


async def test_agentctl_version():
    done = await agentctl("--version")
    assert (done.returncode, done.stdout.decode()) == (0, f"agentctl {__version__}\n")


def test_rendering_for_people():
    assert cli.render(None) == "ok"
    assert cli.render([]) == "(none)"
    assert cli.render({"tasks": []}, cli.TASK_COLUMNS, "(no tasks)") == "(no tasks)"
    assert cli.render({"a": 1, "prompt": "two\nlines"}) == "a:      1\nprompt: two\n        lines"
    assert cli.render([{"login": "ann", "n": 2}, {"login": "bo"}]) == ("LOGIN  N\nann    2\nbo     -")


def test_event_lines_for_people():
    at = time.mktime((2024, 1, 2, 10, 0, 1, 0, 0, -1))
    assert event_line(
        {
            "seq": 12,
            "ts": at,
            "event": "git.pushed",
            "data": {"branch": "b", "commit": "0123456789abc", "files_changed": ["x", "y"]},
        }
    ) == ("  12  10:00:01  git.pushed         b at 0123456789: x, y")
    assert event_line(
        {
            "seq": 3,
            "event": "agent.tool_call",
            "data": {
                "name": "str_replace_based_edit_tool",
                "input": {"command": "create", "path": "a.md", "file_text": "one\ntwo\n"},
            },
        }
    ) == ("   3  --:--:--  agent.tool_call    str_replace_based_edit_tool create a.md (2 lines)")
    results = [
        event_line({"seq": 4, "event": "agent.tool_result", "data": {"output": text}})
        for text in ("", "a", "a\nb", "a\nb\nc")
    ]
    assert [line.split(None, 3)[3] for line in results] == ["(no output)", "a", "a (+1 line)", "a (+2 lines)"]
    # An event type this agentctl does not know is shown, as JSON; the agent's words whole.
    assert event_line({"seq": None, "event": "new.kind", "data": {"a": 1}}) == (
        '   -  --:--:--  new.kind           {"a":1}'
    )
    long = "word " * 100
    assert event_line({"seq": 1, "event": "agent.text", "data": {"text": long}}).endswith(long.strip())
    assert len(event_line({"seq": 1, "event": "other", "data": {"text": long}})) < 200
    assert is_waiting_for_input({"event": "task.status", "data": {"status": "waiting_input"}})
    assert not is_waiting_for_input({"event": "task.status", "data": {"status": "queued"}})
