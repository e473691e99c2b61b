"""The control-socket wire format (design §7), without any I/O.

Newline-delimited JSON, one message per line, shared by ``daemon.control_server`` and
``control.client``::

    request   {"id": 7, "cmd": "tasks.list", "args": {"status": "running"}}
    result    {"id": 7, "ok": true, "result": [...]}
    error     {"id": 7, "ok": false, "error": {"code": "not_found", "message": "..."}}
    event     {"id": 7, "event": {...}}          (streaming commands only, any number)
    end       {"id": 7, "ok": true, "end": true} (closes a stream)

An error about the connection itself rather than one request (a refused peer, an unreadable
line whose id is unknown) carries ``"id": null``. Unknown top-level keys are ignored so that the
format can be extended. ``LineBuffer`` turns received bytes into these messages; the
``encode_*`` functions make the lines.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeGuard, TypeVar

MAX_LINE = 4 * 1024 * 1024
"""Longest accepted line in bytes, newline excluded; a longer one ends the connection."""

COMMANDS: tuple[str, ...] = (
    "status",
    "tasks.list",
    "tasks.create",
    "tasks.get",
    "tasks.cancel",
    "tasks.retry",
    "tasks.review",
    "tasks.tail",
    "drain",
    "resume",
    "concurrency.set",
    "users.list",
    "users.add",
    "users.revoke",
    "users.link",
    "backup",
    "gc",
    "compact",
    "keys.rotate",
    "webhooks.list",
    "webhooks.add",
    "webhooks.remove",
    "webhooks.test",
    "deliveries.list",
    "deliveries.redeliver",
    "shares.create",
    "shares.list",
    "shares.revoke",
)
STREAMING_COMMANDS: frozenset[str] = frozenset({"tasks.tail"})


class ProtocolError(Exception):
    """A line that is not a valid message.

    ``id`` is the request id when it could still be read, so the reply can name it; ``fatal``
    means the byte stream cannot be trusted any more and the connection must close.
    """

    code = "bad_request"
    fatal = False

    def __init__(self, message: str, *, id: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.id = id


class LineTooLong(ProtocolError):
    code = "line_too_long"
    fatal = True


# Request.args, Result.value and Event.event are JSON as it came off the wire (hence ``Any``):
# whoever reads them checks the shape it needs.
@dataclass(frozen=True, slots=True)
class Request:
    id: int
    cmd: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Result:
    id: int
    value: Any


@dataclass(frozen=True, slots=True)
class ErrorReply:
    id: int | None
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    event: Any


@dataclass(frozen=True, slots=True)
class End:
    id: int


Reply = Result | ErrorReply | Event | End
M = TypeVar("M")


# ---------------------------------------------------------------------------------------- encode


def _jsonable(value: object) -> object:
    # Handlers may return store records as they are; these are the types those contain.
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode(message: Mapping[str, object], *, max_line: int = MAX_LINE) -> bytes:
    """One message as a line; raises ``LineTooLong`` rather than send what the peer rejects.

    The values may be JSON types or what store records hold (enums, paths, datetimes,
    dataclasses, sets); anything else raises ``ProtocolError``.
    """
    id = message.get("id")
    known_id = id if _is_int(id) else None
    try:
        text = json.dumps(
            message, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_jsonable
        )
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"cannot encode message as JSON: {exc}", id=known_id) from exc
    line = text.encode()
    if len(line) > max_line:
        raise LineTooLong(f"message of {len(line)} bytes exceeds the {max_line}-byte line limit", id=known_id)
    return line + b"\n"


def encode_request(
    id: int, cmd: str, args: Mapping[str, object] | None = None, *, max_line: int = MAX_LINE
) -> bytes:
    return encode({"id": id, "cmd": cmd, "args": args or {}}, max_line=max_line)


def encode_result(id: int, result: object, *, max_line: int = MAX_LINE) -> bytes:
    return encode({"id": id, "ok": True, "result": result}, max_line=max_line)


def encode_error(id: int | None, code: str, message: str, *, max_line: int = MAX_LINE) -> bytes:
    return encode({"id": id, "ok": False, "error": {"code": code, "message": message}}, max_line=max_line)


def encode_event(id: int, event: object, *, max_line: int = MAX_LINE) -> bytes:
    return encode({"id": id, "event": event}, max_line=max_line)


def encode_end(id: int, *, max_line: int = MAX_LINE) -> bytes:
    return encode({"id": id, "ok": True, "end": True}, max_line=max_line)


# ----------------------------------------------------------------------------------------- parse


def _load_object(line: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:
        # ValueError: bad UTF-8, bad JSON, an integer of more than 4300 digits;
        # RecursionError: nested deeper than the parser goes.
        raise ProtocolError(f"line is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"a message must be a JSON object, not {type(obj).__name__}")
    return obj


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_request(line: bytes) -> Request:
    """A request line as ``Request``; ``ProtocolError`` names what is missing or wrong."""
    obj = _load_object(line)
    if "id" not in obj:
        raise ProtocolError('request has no "id" (an integer chosen by the client)')
    id = obj["id"]
    if not _is_int(id):
        raise ProtocolError(f'request "id" must be an integer, not {json.dumps(id)}')
    cmd = obj.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        raise ProtocolError('request has no "cmd" (a command name such as "status")', id=id)
    args = obj.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolError(f'request "args" must be a JSON object, not {type(args).__name__}', id=id)
    return Request(id, cmd, args)


def parse_reply(line: bytes) -> Reply:
    """A reply line as ``Result``, ``ErrorReply``, ``Event`` or ``End``."""
    obj = _load_object(line)
    id = obj.get("id")
    if id is None and obj.get("ok") is False:
        return _error_reply(None, obj)  # about the connection, not one request
    if not _is_int(id):
        raise ProtocolError(f'reply "id" must be an integer, not {json.dumps(id)}')
    if "event" in obj:
        return Event(id, obj["event"])
    ok = obj.get("ok")
    if ok is True:
        return End(id) if obj.get("end") is True else Result(id, obj.get("result"))
    if ok is False:
        return _error_reply(id, obj)
    raise ProtocolError('reply has neither "ok" nor "event"', id=id)


def _error_reply(id: int | None, obj: dict[str, Any]) -> ErrorReply:
    error = obj.get("error")
    if not isinstance(error, dict):
        raise ProtocolError('error reply has no "error" object', id=id)
    code, message = error.get("code"), error.get("message")
    return ErrorReply(id, str(code or "internal"), str(message or "(no message)"))


# ------------------------------------------------------------------------------------- framing


class LineBuffer(Generic[M]):
    """Collects received bytes and hands back one parsed message per complete line.

    ``feed()`` the bytes as they come, then call ``next_message()`` until it returns ``None``.
    A malformed line raises ``ProtocolError`` from ``next_message()`` and is consumed, so the
    next call carries on with the following line. A line longer than ``max_line`` raises
    ``LineTooLong`` (``fatal``): the buffer stays broken, because where the next message starts
    is no longer known. Blank lines are skipped, so people can type at the socket by hand.
    """

    def __init__(self, parse: Callable[[bytes], M], *, max_line: int = MAX_LINE) -> None:
        self._parse = parse
        self._max_line = max_line
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline: keeps feeding linear
        self._broken: LineTooLong | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def pending(self) -> int:
        """Bytes received that are not yet a complete line."""
        return len(self._buf)

    def next_message(self) -> M | None:
        while True:
            if self._broken is not None:
                raise self._broken
            end = self._buf.find(b"\n", self._scanned)
            if end < 0:
                self._scanned = len(self._buf)
                if len(self._buf) > self._max_line:
                    self._fail(len(self._buf), complete=False)
                return None
            if end > self._max_line:
                self._fail(end, complete=True)
            line = bytes(self._buf[:end]).rstrip(b"\r")
            del self._buf[: end + 1]
            self._scanned = 0
            if line.strip():
                return self._parse(line)

    def _fail(self, size: int, *, complete: bool) -> None:
        more = "" if complete else " and counting"
        self._broken = LineTooLong(f"line of {size} bytes{more} exceeds the {self._max_line}-byte limit")
        self._buf.clear()
        raise self._broken
