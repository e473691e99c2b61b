"""Fuzzing the control protocol (design §7): the sans-I/O framing, then the daemon's own server.

- ``LineBuffer`` with ``parse_request`` / ``parse_reply`` over arbitrary bytes, split anywhere:
  only ``ProtocolError`` ever comes out, the split never changes what comes out, a fatal
  (too long) line stays fatal; and every request ``encode_request`` makes parses back the same.
- A real daemon's ControlServer (``make_handlers`` on an in-process Daemon) fed random
  commands with random arguments, and garbage lines: every request gets one reply, ``ok`` or an
  error with a code and a message that is not ``internal`` (a handler crash is a bug, not an
  answer), streams end, and the server keeps serving.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio
from hypothesis import given, strategies as st

from control.protocol import (
    COMMANDS,
    LineBuffer,
    ProtocolError,
    Request,
    encode_request,
    parse_reply,
    parse_request,
)

from .fakes.phone import running_daemon
from .fuzz_support import (
    HUGE_INTS,
    TEXT,
    deep_nesting,
    drive,
    dumps,
    fuzz_settings,
    json_values,
    on_loop,
    seeded,
    tally,
)

# ------------------------------------------------------------------------------- framing

GARBAGE = st.one_of(
    json_values().map(lambda v: (dumps(v) + "\n").encode()),
    deep_nesting().map(lambda s: s.encode() + b"\n"),
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"\n",
            b"\r\n",
            b"   \n",
            b'{"id":1}\n',
            b'{"id":true,"cmd":"x"}\n',
            b'{"id":1,"cmd":"x","args":[]}\n',
            b"9" * 5000 + b"\n",
            b"\xff\xfe\n",
            b'{"id":1,"cmd":"x","args":{"a":NaN}}\n',
            b"x" * 300,
        ]
    ),
)
LINES = st.one_of(
    st.builds(
        encode_request,
        st.integers(0, 2**40),
        TEXT.filter(bool),
        st.dictionaries(TEXT, json_values(4), max_size=3),
    ),
    GARBAGE,
)


def outcomes(buffer: LineBuffer, chunks: list[bytes]) -> list[tuple]:
    """Feed ``chunks`` one by one, taking every message after each; stop at a fatal error."""
    out: list[tuple] = []
    for chunk in chunks:
        buffer.feed(chunk)
        while True:
            try:
                message = buffer.next_message()
            except ProtocolError as exc:
                assert isinstance(exc.message, str) and exc.message and exc.code
                if exc.fatal:
                    return [*out, ("fatal", exc.code)]
                out.append(("error", exc.code, exc.id, exc.message))
                continue
            if message is None:
                break
            out.append(("message", message))
    return out


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@fuzz_settings(300)
@seeded
@given(
    data=st.data(),
    max_line=st.sampled_from([64, 256, 4 * 1024 * 1024]),
    parse=st.sampled_from([parse_request, parse_reply]),
)
def test_line_buffer_gives_the_same_answers_however_the_bytes_are_split(data, max_line, parse):
    stream = b"".join(data.draw(st.lists(LINES, max_size=6), label="lines"))
    chunks = data.draw(split(stream), label="chunks")
    whole = outcomes(LineBuffer(parse, max_line=max_line), [stream])
    pieces = outcomes(LineBuffer(parse, max_line=max_line), chunks)
    assert pieces == whole
    tally("control-framing", parse.__name__, *(o[0] for o in whole[-1:]))


@fuzz_settings(200)
@seeded
@given(
    id=st.integers(-(2**63), 2**63),
    cmd=TEXT.filter(bool),
    args=st.dictionaries(TEXT, json_values(6), max_size=4),
)
def test_every_encoded_request_parses_back_the_same(id, cmd, args):
    assert parse_request(encode_request(id, cmd, args).rstrip(b"\n")) == Request(id, cmd, args)


# ----------------------------------------------------------------- the daemon's own server

ARG_NAMES = ["id", "status", "user", "limit", "after", "n", "login", "operator", "path", "x"]
ODD_ARGS = st.one_of(
    json_values(4),
    HUGE_INTS,
    st.sampled_from(["queued", "succeeded", "nope", "alice", "", "-1", "0", "1", "abc", None, True, 2.5]),
)


def requests(tasks: list[str], backup_dir: Path) -> st.SearchStrategy[bytes]:
    def arg_value(name: str) -> st.SearchStrategy[Any]:
        if name == "id":
            return st.one_of(st.sampled_from(tasks), ODD_ARGS)
        if name == "path":  # never let a fuzzer write backups outside its own directory
            return st.one_of(
                json_values(2).filter(lambda v: not (isinstance(v, str) and v.startswith("/"))),
                TEXT.map(lambda s: str(backup_dir / f"b{abs(hash(s))}.db")),
            )
        return ODD_ARGS

    args = st.lists(st.sampled_from(ARG_NAMES), unique=True, max_size=4).flatmap(
        lambda names: st.fixed_dictionaries({name: arg_value(name) for name in names})
    )
    cmd = st.one_of(st.sampled_from(COMMANDS), st.sampled_from(COMMANDS), TEXT.filter(bool))
    request = st.builds(lambda i, c, a: (i, encode_request(i, c, a)), st.integers(1, 10**6), cmd, args)
    # Garbage, never blank: a blank line is skipped without a reply (for people typing).
    garbage = GARBAGE.filter(lambda line: line.strip()).map(
        lambda line: (None, line.replace(b"\n", b" ").rstrip(b"\r") + b"\n")
    )
    return st.one_of(request, request, request, garbage)


async def read_reply(
    stream: trio.SocketStream, buffer: LineBuffer, id: int | None, tail: dict | None
) -> list[Any]:
    """Replies for request ``id`` until its last one (result, error or end of stream)."""
    got: list[Any] = []
    while True:
        message = buffer.next_message()
        if message is None:
            data = await stream.receive_some()
            assert data, f"the server hung up after {got}"
            buffer.feed(data)
            continue
        got.append(message)
        kind = type(message).__name__
        if kind == "Event" and tail is not None:
            tail["seen"] += 1
            if tail["seen"] >= tail["expect"] and not tail["ends"]:
                return got  # a live stream of an unfinished task: it follows on; we hang up
            continue
        if kind in ("Result", "ErrorReply", "End") and (id is None or message.id == id):
            return got


async def exchange(server: Any, request: tuple[int | None, bytes], store: Any) -> None:
    id, line = request
    cmd = json.loads(line).get("cmd") if id is not None else None
    args = json.loads(line).get("args") if id is not None else None
    tail = None
    if cmd == "tasks.tail" and isinstance(args.get("id"), str) and args["id"]:
        task = await store.get_task(args["id"])
        after = args.get("after") or 0
        if task is not None and isinstance(after, int) and not isinstance(after, bool):
            tail = {
                "seen": 0,
                "expect": max(0, task.last_seq - max(after, 0)),
                "ends": task.status.is_terminal,
            }
            if tail["expect"] == 0 and not tail["ends"]:
                return  # nothing to replay and nothing will end it: no reply to wait for
    stream = await trio.open_unix_socket(str(server.daemon.settings.control_socket_path))
    async with stream:
        await stream.send_all(line)
        with trio.fail_after(5):  # a reply owed and not sent: a hang
            replies = await read_reply(stream, LineBuffer(parse_reply), id, tail)
    last = replies[-1]
    kind = type(last).__name__
    tally("control", cmd if cmd in COMMANDS else "(other)", kind, getattr(last, "code", ""))
    if kind == "ErrorReply":
        assert last.code != "internal", (line[:300], last)
        assert last.message and last.message != "(no message)", last
    status = await read_status(server)
    assert status["phase"], status


async def read_status(server: Any) -> dict[str, Any]:
    stream = await trio.open_unix_socket(str(server.daemon.settings.control_socket_path))
    async with stream:
        await stream.send_all(encode_request(1, "status"))
        (reply,) = await read_reply(stream, LineBuffer(parse_reply), 1, None)
    return reply.value


async def test_the_daemons_control_server_answers_any_request(tmp_path):
    backup_dir = tmp_path / "backups"
    backup_dir.mkdir()
    async with running_daemon(tmp_path) as server:
        _, token = await server.user("alice")
        tasks = []
        async with server.client(token) as http:
            for _ in range(2):
                response = await http.post("/api/tasks", json={"repo_url": "file:///r", "prompt": "p"})
                tasks.append(response.json()["id"])

        @fuzz_settings(150)
        @seeded
        @given(request=requests(tasks, backup_dir))
        def prop(request):
            on_loop(exchange, server, request, server.store)

        await drive(prop)
        assert (await read_status(server))["phase"]
