"""The control-socket wire format, without sockets (control.protocol)."""

import dataclasses
import enum
import json
import re
from pathlib import Path

import pytest

from control import cli
from control.protocol import (
    COMMANDS,
    STREAMING_COMMANDS,
    End,
    ErrorReply,
    Event,
    LineBuffer,
    LineTooLong,
    ProtocolError,
    Request,
    Result,
    encode,
    encode_end,
    encode_error,
    encode_event,
    encode_request,
    encode_result,
    parse_reply,
    parse_request,
)
from daemon.control_handlers import make_handlers
from daemon.control_server import is_streaming

README = Path(__file__).resolve().parents[1] / "README.md"


def requests(max_line: int = 1000) -> LineBuffer[Request]:
    return LineBuffer(parse_request, max_line=max_line)


def drain(buffer: LineBuffer) -> list:
    out = []
    while (message := buffer.next_message()) is not None:
        out.append(message)
    return out


def test_each_command_is_served_sent_by_agentctl_and_documented():
    """``COMMANDS`` is the protocol's one list: the daemon's command table serves exactly these
    (the streaming ones, and only they, by an async generator), an agentctl subcommand sends
    each (streaming where the command streams), and each subcommand has its README row."""
    served = make_handlers(None, None)  # the table alone: no handler is called
    assert len(set(COMMANDS)) == len(COMMANDS)
    assert (set(COMMANDS) - set(served), set(served) - set(COMMANDS)) == (set(), set())
    assert {cmd for cmd, handler in served.items() if is_streaming(handler)} == STREAMING_COMMANDS
    sent = {command.cmd: name for name, command in cli.COMMANDS.items()}
    assert (set(COMMANDS) - set(sent), set(sent) - set(COMMANDS)) == (set(), set())
    assert {c.cmd for c in cli.COMMANDS.values() if c.streaming} == STREAMING_COMMANDS
    rows = set(re.findall(r"^\| `agentctl ([a-z-]+)", README.read_text(), re.MULTILINE))
    assert sorted(name for name in sent.values() if name not in rows) == []


def test_a_line_split_across_chunks_is_parsed_once_complete():
    line = encode_request(1, "tasks.list", {"user": "zoë"})  # multi-byte UTF-8, split too
    buffer = requests()
    for i in range(len(line) - 1):
        buffer.feed(line[i : i + 1])
        assert buffer.next_message() is None
    buffer.feed(line[-1:])
    assert buffer.next_message() == Request(1, "tasks.list", {"user": "zoë"})
    assert buffer.pending == 0


def test_several_lines_in_one_chunk_come_out_in_order():
    buffer = requests()
    buffer.feed(encode_request(1, "status") + b"\n  \r\n" + encode_request(2, "gc")[:-1] + b"\r\n")
    assert drain(buffer) == [Request(1, "status", {}), Request(2, "gc", {})]


def test_a_line_of_exactly_max_line_bytes_is_accepted():
    line = encode_request(1, "status", {"pad": ""})
    pad = 100 - len(line) + 1
    line = encode_request(1, "status", {"pad": "x" * pad})
    assert len(line) == 101
    buffer = requests(max_line=100)
    buffer.feed(line)
    assert buffer.next_message().args == {"pad": "x" * pad}


def test_an_oversized_line_is_rejected_before_its_newline_arrives_and_stays_fatal():
    buffer = requests(max_line=100)
    buffer.feed(b'{"id":1,"cmd":"status","args":{"pad":"' + b"x" * 100)
    with pytest.raises(LineTooLong, match="exceeds the 100-byte limit") as info:
        buffer.next_message()
    assert info.value.fatal and info.value.code == "line_too_long"
    buffer.feed(b'"}}\n' + encode_request(2, "status"))
    with pytest.raises(LineTooLong):
        buffer.next_message()


def test_an_oversized_complete_line_is_rejected():
    buffer = requests(max_line=20)
    buffer.feed(encode_request(1, "status", {"pad": "y" * 30}))
    with pytest.raises(LineTooLong, match=r"^line of 71 bytes exceeds the 20-byte limit$"):
        buffer.next_message()


def test_a_bad_line_is_reported_and_the_next_one_still_parsed():
    buffer = requests()
    buffer.feed(b"{not json\n" + encode_request(3, "status"))
    with pytest.raises(ProtocolError, match="not valid JSON") as info:
        buffer.next_message()
    assert info.value.id is None and not info.value.fatal
    assert buffer.next_message() == Request(3, "status", {})


@pytest.mark.parametrize(
    ("line", "message", "id"),
    [
        (b"[1, 2]", "must be a JSON object, not list", None),
        (b'{"cmd": "status"}', 'no "id"', None),
        (b'{"id": "7", "cmd": "status"}', '"id" must be an integer, not "7"', None),
        (b'{"id": true, "cmd": "status"}', '"id" must be an integer, not true', None),
        (b'{"id": 7}', 'no "cmd"', 7),
        (b'{"id": 7, "cmd": ""}', 'no "cmd"', 7),
        (b'{"id": 7, "cmd": "status", "args": [1]}', '"args" must be a JSON object', 7),
        (b"\xff\xfe", "not valid JSON", None),
    ],
)
def test_malformed_requests_say_what_is_wrong(line, message, id):
    with pytest.raises(ProtocolError, match=message) as info:
        parse_request(line)
    assert info.value.id == id
    assert info.value.code == "bad_request"


def test_args_default_to_an_empty_object_and_unknown_keys_are_ignored():
    assert parse_request(b'{"id": 1, "cmd": "gc", "args": null, "v": 2}') == Request(1, "gc", {})


def test_every_reply_shape_round_trips():
    assert parse_reply(encode_result(1, {"a": [1]})) == Result(1, {"a": [1]})
    assert parse_reply(encode_result(1, None)) == Result(1, None)
    assert parse_reply(encode_error(2, "not_found", "no task 9")) == ErrorReply(2, "not_found", "no task 9")
    assert parse_reply(encode_error(None, "forbidden", "go")) == ErrorReply(None, "forbidden", "go")
    assert parse_reply(encode_event(3, {"seq": 1})) == Event(3, {"seq": 1})
    assert parse_reply(encode_end(3)) == End(3)
    assert json.loads(encode_end(3)) == {"id": 3, "ok": True, "end": True}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"ok": true, "result": 1}', '"id" must be an integer'),
        (b'{"id": 1}', 'neither "ok" nor "event"'),
        (b'{"id": 1, "ok": false}', 'no "error" object'),
    ],
)
def test_malformed_replies_are_protocol_errors(line, message):
    with pytest.raises(ProtocolError, match=message):
        parse_reply(line)


def test_encoded_messages_are_single_lines_even_with_newlines_inside():
    line = encode_result(1, {"text": "a\nb"})
    assert line.count(b"\n") == 1 and line.endswith(b"\n")


def test_store_records_encode_as_plain_json():
    class Colour(enum.Enum):
        RED = "red"

    @dataclasses.dataclass
    class Rec:
        colour: Colour
        where: Path

    assert json.loads(encode_result(1, Rec(Colour.RED, Path("/x")))) == {
        "id": 1,
        "ok": True,
        "result": {"colour": "red", "where": "/x"},
    }


def test_unencodable_and_oversized_messages_raise_before_sending():
    with pytest.raises(ProtocolError, match="cannot encode") as info:
        encode_result(4, object())
    assert info.value.id == 4
    with pytest.raises(ProtocolError, match="cannot encode"):
        encode_result(4, float("nan"))
    with pytest.raises(LineTooLong, match="exceeds the 50-byte line limit"):
        encode({"id": 5, "ok": True, "result": "z" * 60}, max_line=50)
