"""The control server and the Trio client, end to end over a real unix socket."""

import grp
import json
import os
import shutil
import socket
import stat
import tempfile
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

import pytest
import trio

from control.client import CommandRefused, ControlClient, DaemonUnreachable
from control.protocol import encode_request
from daemon import control_server
from daemon.control_server import ControlServer, peer_uid, streaming
from daemon.errors import AgentdError, ConfigError, NotFound

TIMEOUT = 10  # a guard against hangs, never a wait for something to happen


@pytest.fixture
def sock_path():
    # pytest's tmp_path can exceed the 108 bytes a unix socket path may have.
    directory = tempfile.mkdtemp(prefix="actl-", dir="/tmp")
    yield Path(directory) / "agentd.sock"
    shutil.rmtree(directory, ignore_errors=True)


class Fakes:
    """Handlers that record what they see."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.gate = trio.Event()
        self.slow_entered = trio.Event()
        self.stream_started = trio.Event()
        self.stream_closed = trio.Event()
        self.stream_saw: BaseException | None = None

    def handlers(self) -> dict:
        return {
            "status": self.status,
            "tasks.get": self.missing,
            "gc": self.crash,
            "drain": self.slow,
            "resume": self.open_gate,
            "backup": self.unencodable,
            "users.list": self.grouped,
            "tasks.tail": self.tail,
            "forever": streaming(self.forever),
            "countdown": streaming(lambda args: Countdown(args["n"])),
        }

    async def status(self, args):
        self.calls.append(("status", args))
        return {"state": "running", "args": args}

    async def missing(self, args):
        raise NotFound(f"no task {args['task_id']}")

    async def crash(self, args):
        raise RuntimeError("kaboom")

    async def slow(self, args):
        self.slow_entered.set()
        await self.gate.wait()
        return "drained"

    async def open_gate(self, args):
        self.gate.set()
        return "resumed"

    async def unencodable(self, args):
        return object()

    async def grouped(self, args):
        async with trio.open_nursery():
            raise AgentdError("store is read-only", code="read_only")

    async def tail(self, args):
        for seq in range(args["after"] + 1, args["after"] + 4):
            yield {"seq": seq, "event": "agent.text", "data": {"text": f"line {seq}"}}

    def forever(self, args):
        return self._forever()

    async def _forever(self):
        try:
            yield {"seq": 1}
            self.stream_started.set()
            await trio.sleep_forever()
        except BaseException as exc:
            self.stream_saw = exc
            raise
        finally:
            self.stream_closed.set()


class Countdown:
    """An async iterator that is not a generator: nothing to aclose()."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.n == 0:
            raise StopAsyncIteration
        self.n -= 1
        return self.n + 1


@asynccontextmanager
async def running(server: ControlServer):
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield server
        nursery.cancel_scope.cancel()


@pytest.fixture
def fakes():
    return Fakes()


@pytest.fixture
async def server(sock_path, fakes):
    async with running(ControlServer(sock_path, fakes.handlers())) as server:
        yield server


async def raw_exchange(path: Path, payload: bytes, replies: int) -> list[dict]:
    """Write ``payload`` on a bare connection and read ``replies`` lines back."""
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        await stream.send_all(payload)
        data = b""
        with trio.fail_after(TIMEOUT):
            while data.count(b"\n") < replies:
                chunk = await stream.receive_some()
                assert chunk, f"connection closed after {data!r}"
                data += chunk
    return [json.loads(line) for line in data.splitlines()]


# ----------------------------------------------------------------------------- requests


async def test_a_call_returns_the_handlers_result(server, fakes):
    async with await ControlClient.connect(server.path) as client:
        assert await client.call("status", verbose=True) == {"state": "running", "args": {"verbose": True}}
    assert fakes.calls == [("status", {"verbose": True})]


async def test_an_agentd_error_becomes_an_error_reply_with_its_code(server):
    async with await ControlClient.connect(server.path) as client:
        with pytest.raises(CommandRefused) as info:
            await client.call("tasks.get", task_id="01ABC")
    assert (info.value.code, info.value.message) == ("not_found", "no task 01ABC")


async def test_a_crash_is_an_internal_error_and_the_connection_stays_up(server, caplog):
    async with await ControlClient.connect(server.path) as client:
        with pytest.raises(CommandRefused) as info:
            await client.call("gc")
        assert info.value.code == "internal"
        assert "RuntimeError: kaboom" in info.value.message
        assert (await client.call("status"))["state"] == "running"
    assert "control command gc failed" in caplog.text


async def test_an_agentd_error_inside_a_handlers_nursery_keeps_its_code(server):
    async with await ControlClient.connect(server.path) as client:
        with pytest.raises(CommandRefused, match="store is read-only") as info:
            await client.call("users.list")
    assert info.value.code == "read_only"


async def test_an_unencodable_result_is_an_internal_error(server):
    async with await ControlClient.connect(server.path) as client:
        with pytest.raises(CommandRefused, match="reply could not be sent") as info:
            await client.call("backup", path="/x")
        assert info.value.code == "internal"
        assert await client.call("resume") == "resumed"


async def test_an_unknown_command_is_refused_by_name(server):
    async with await ControlClient.connect(server.path) as client:
        with pytest.raises(CommandRefused, match="unknown command 'reboot'") as info:
            await client.call("reboot")
    assert info.value.code == "unknown_command"


async def test_a_stream_yields_every_event_then_ends(server):
    async with await ControlClient.connect(server.path) as client:
        events = [e async for e in client.stream("tasks.tail", task_id="t", after=4)]
        assert [e["seq"] for e in events] == [5, 6, 7]
        assert await client.call("resume") == "resumed"  # still usable after the end


async def test_a_stream_ends_with_an_end_line_on_the_wire(server):
    replies = await raw_exchange(server.path, encode_request(9, "tasks.tail", {"after": 0}), 4)
    assert [r.get("event", {}).get("seq") for r in replies[:3]] == [1, 2, 3]
    assert replies[3] == {"id": 9, "ok": True, "end": True}


async def test_pipelined_requests_are_answered_as_each_completes(server):
    # drain blocks until resume runs: in-order processing would deadlock here.
    payload = encode_request(1, "drain") + encode_request(2, "resume")
    replies = await raw_exchange(server.path, payload, 2)
    assert replies == [{"id": 2, "ok": True, "result": "resumed"}, {"id": 1, "ok": True, "result": "drained"}]


async def test_one_client_shared_by_several_tasks_routes_each_reply(server):
    results = {}
    async with await ControlClient.connect(server.path) as client:

        async def call(cmd):
            results[cmd] = await client.call(cmd)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "drain")
            nursery.start_soon(call, "status")
            nursery.start_soon(call, "resume")
    assert results["drain"] == "drained" and results["resume"] == "resumed"
    assert results["status"]["state"] == "running"


async def test_a_cancelled_call_leaves_the_connection_usable(server, fakes):
    async with await ControlClient.connect(server.path) as client:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.call, "drain")
                await fakes.slow_entered.wait()
                scope.cancel()
        fakes.gate.set()  # the late "drained" reply must be dropped, not taken for status's
        assert (await client.call("status"))["state"] == "running"


async def test_closing_the_client_cancels_its_stream_on_the_server(server, fakes):
    client = await ControlClient.connect(server.path)
    async with aclosing(client.stream("forever")) as events:
        assert await events.__anext__() == {"seq": 1}
        await fakes.stream_started.wait()
    await client.aclose()
    with trio.fail_after(TIMEOUT):
        await fakes.stream_closed.wait()
    assert isinstance(fakes.stream_saw, (trio.Cancelled, GeneratorExit))


async def test_bad_lines_and_reused_ids_get_errors_and_the_connection_carries_on(server):
    payload = (
        b"{oops\n"
        + encode_request(1, "status")
        + encode_request(2, "drain")
        + encode_request(2, "status")
        + encode_request(3, "resume")
    )
    replies = await raw_exchange(server.path, payload, 5)
    errors = {r["id"]: r["error"] for r in replies if not r["ok"]}
    results = {r["id"]: r["result"] for r in replies if r["ok"]}
    assert errors[None]["code"] == "bad_request" and "not valid JSON" in errors[None]["message"]
    assert errors[2] == {"code": "bad_request", "message": "request id 2 is already in flight"}
    assert results[1]["state"] == "running"
    assert (results[2], results[3]) == ("drained", "resumed")


async def test_an_oversized_line_gets_an_error_and_the_connection_closes(sock_path, fakes):
    async with running(ControlServer(sock_path, fakes.handlers(), max_line=64)):
        stream = await trio.open_unix_socket(str(sock_path))
        async with stream:
            await stream.send_all(b'{"id":1,"cmd":"status","args":{"pad":"' + b"x" * 100)
            data = b""
            with trio.fail_after(TIMEOUT):
                while chunk := await stream.receive_some():
                    data += chunk
    reply = json.loads(data)
    assert reply["error"]["code"] == "line_too_long"
    assert "64-byte limit" in reply["error"]["message"]


# -------------------------------------------------------------------------- handler kinds


def test_a_streaming_command_needs_a_streaming_handler(sock_path):
    async def plain(args):
        return 1

    async def gen(args):
        yield 1

    with pytest.raises(ValueError, match=r"tasks\.tail is a streaming command"):
        ControlServer(sock_path, {"tasks.tail": plain})
    with pytest.raises(ValueError, match="status replies once"):
        ControlServer(sock_path, {"status": gen})
    # A plain callable that returns the iterator, marked: accepted too.
    ControlServer(sock_path, {"tasks.tail": streaming(lambda args: gen(args))})  # noqa: PLW0108


async def test_any_async_iterator_can_stream_when_marked(server):
    async with await ControlClient.connect(server.path) as client:
        assert [e async for e in client.stream("countdown", n=3)] == [3, 2, 1]


# --------------------------------------------------------------------------- socket file


async def test_the_socket_is_private_and_removed_on_shutdown(sock_path, fakes):
    async with running(ControlServer(sock_path, fakes.handlers())):
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
    assert not sock_path.exists()


async def test_with_a_group_the_socket_is_group_writable(sock_path, fakes):
    group = grp.getgrgid(os.getegid()).gr_name
    async with running(ControlServer(sock_path, fakes.handlers(), group=group)):
        st = os.stat(sock_path)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getegid()


async def test_an_unknown_group_is_a_config_error(sock_path, fakes):
    with pytest.raises(ConfigError, match="group 'no-such-group-x' does not exist"):
        await ControlServer(sock_path, fakes.handlers(), group="no-such-group-x").serve()
    assert not sock_path.exists()


async def test_a_stale_socket_from_a_dead_daemon_is_replaced(sock_path, fakes):
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(sock_path))
    dead.close()  # the file stays, nobody listens: what a killed daemon leaves
    async with running(ControlServer(sock_path, fakes.handlers())):
        async with await ControlClient.connect(sock_path) as client:
            assert (await client.call("status"))["state"] == "running"


async def test_a_live_socket_is_not_taken_over(server, fakes):
    second = ControlServer(server.path, fakes.handlers())
    with pytest.raises(AgentdError, match=f"another agentd is serving on {server.path}$"):
        await second.serve()
    async with await ControlClient.connect(server.path) as client:
        assert (await client.call("status"))["state"] == "running"


async def test_a_file_that_is_not_a_socket_is_left_alone(sock_path, fakes):
    sock_path.write_text("precious")
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        await ControlServer(sock_path, fakes.handlers()).serve()
    assert sock_path.read_text() == "precious"


async def test_a_path_too_long_for_a_unix_socket_is_a_config_error(sock_path, fakes):
    long_path = sock_path.parent / ("d" * 120) / "agentd.sock"
    with pytest.raises(ConfigError, match="longer than the 107 a unix socket allows"):
        await ControlServer(long_path, fakes.handlers()).serve()


async def test_shutting_the_server_down_ends_open_connections(sock_path, fakes):
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(ControlServer(sock_path, fakes.handlers()).serve)
            async with await ControlClient.connect(sock_path) as client:
                async with aclosing(client.stream("forever")) as events:
                    await events.__anext__()
                    nursery.cancel_scope.cancel()  # takes effect at our next checkpoint...
                    with trio.CancelScope(shield=True):  # ...so read the outcome shielded
                        with pytest.raises(DaemonUnreachable, match="closed the connection"):
                            await events.__anext__()
    assert fakes.stream_closed.is_set() and not sock_path.exists()


# -------------------------------------------------------------------------- peer checks


async def test_the_peer_uid_is_read_from_the_socket(sock_path):
    a, b = trio.socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert peer_uid(a) == os.geteuid()


async def test_a_peer_with_another_uid_is_refused_with_one_error_line(sock_path, fakes, monkeypatch):
    monkeypatch.setattr(control_server, "peer_uid", lambda sock: 4242)
    async with running(ControlServer(sock_path, fakes.handlers())):
        async with await ControlClient.connect(sock_path) as client:
            with pytest.raises(DaemonUnreachable, match="uid 4242 may not use the agentd control socket"):
                await client.call("status")
        stream = await trio.open_unix_socket(str(sock_path))
        async with stream:
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
        assert json.loads(data)["error"]["code"] == "forbidden"
    assert fakes.calls == []


async def test_allowed_uids_are_admitted(sock_path, fakes, monkeypatch):
    monkeypatch.setattr(control_server, "peer_uid", lambda sock: 4242)
    async with running(ControlServer(sock_path, fakes.handlers(), allowed_uids={4242})):
        async with await ControlClient.connect(sock_path) as client:
            assert (await client.call("status"))["state"] == "running"


# ------------------------------------------------------------------------ unreachable


async def test_a_missing_socket_is_unreachable_and_named(sock_path):
    with pytest.raises(DaemonUnreachable, match=f"at {sock_path}: no socket there") as info:
        await ControlClient.connect(sock_path)
    assert info.value.path == sock_path


async def test_a_stale_socket_is_unreachable_with_refused(sock_path):
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(sock_path))
    dead.close()
    with pytest.raises(DaemonUnreachable, match=f"at {sock_path}: connection refused"):
        await ControlClient.connect(sock_path)


async def test_permission_denied_is_unreachable_and_named(sock_path, monkeypatch):
    # Tests may run as root, who is never denied: make the OS say it.
    async def denied(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(trio, "open_unix_socket", denied)
    with pytest.raises(DaemonUnreachable, match=f"at {sock_path}: permission denied"):
        await ControlClient.connect(sock_path)
