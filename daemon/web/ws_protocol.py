"""The ``/ws`` protocol (design §6) as pydantic models: what ``session.py`` validates incoming
messages with, and what the README's ``/ws`` section is rendered from (``readme_section``;
``python -m daemon.web.ws_protocol --write-readme`` rewrites it between its markers).

The server's messages are built in ``session.py`` and ``fanout.py`` as JSON text (an event is
framed once for all its subscribers); the models below describe their shapes, and the tests
check that what is sent validates against them.
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

MAX_SEQ = 2**63 - 1  # seq is a 64-bit integer in the store: no event is beyond it
MAX_MESSAGE_CHARS = 64 * 1024
TaskId = Annotated[StrictStr, Field(min_length=1, max_length=64, description="the task's id")]
Seq = Annotated[StrictInt, Field(ge=0, le=MAX_SEQ)]


class ClientMessage(BaseModel):
    """Strict: ``after`` is an integer, not ``true`` nor ``5.0``; unknown fields are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


M = TypeVar("M", bound=ClientMessage)


def parsed(model: type[M], message: dict[str, Any]) -> M | None:
    """``message`` as ``model``, or None if it is not one."""
    try:
        return model.model_validate(message)
    except ValidationError:
        return None


class Auth(ClientMessage):
    """Authenticate, when the upgrade carried no ``Authorization: Bearer`` (or ``Share``)
    header: the first message, within ``ws_auth_timeout_s``, with ``token`` or ``share``.
    Nothing is answered; a bad token closes with 4401. A share link's connection may
    ``subscribe`` to its one task only (any other is ``not_found``), is refused
    ``subscribe_tasks`` (``not_allowed``), and closes with 4401 when the link expires or is
    revoked."""

    type: Literal["auth"]
    token: StrictStr | None = Field(None, description="an API token")
    share: StrictStr | None = Field(None, description="a share link's token, instead of `token`")


class Subscribe(ClientMessage):
    """Every stored event of the task with seq > ``after``, in order, then live ones: no gap and
    no duplicate at the seam. Again for a followed task: starts over from the new ``after``.
    Your own tasks only (an operator: any task); any other is ``not_found``."""

    type: Literal["subscribe"]
    task_id: TaskId
    after: Seq | None = Field(0, description="the last seq you hold (null: 0)")


class Unsubscribe(ClientMessage):
    """Stop following the task (nothing is answered, followed or not)."""

    type: Literal["unsubscribe"]
    task_id: StrictStr = Field(description="the task's id")


class SubscribeTasks(ClientMessage):
    """The ``task.created``, ``task.status`` and ``task.finished`` events of all your tasks
    (an operator: every user's), live only; a followed task's come through its subscription
    only."""

    type: Literal["subscribe_tasks"]


class UnsubscribeTasks(ClientMessage):
    """Stop the ``subscribe_tasks`` feed."""

    type: Literal["unsubscribe_tasks"]


class Ping(ClientMessage):
    """Answered with ``pong``, in order with everything else sent to you."""

    type: Literal["ping"]


ErrorCode = Literal[
    "invalid_message",
    "unknown_type",
    "already_authenticated",
    "not_found",
    "too_many_subscriptions",
    "rate_limited",
    "not_allowed",
]
ERROR_CODES: dict[str, str] = {
    "invalid_message": "not a JSON object with a string `type`, or a `subscribe` with a bad "
    "`task_id` or `after`",
    "unknown_type": "a `type` the server does not know",
    "already_authenticated": "`auth` on an authenticated connection",
    "not_found": "no such task, or not yours: the same answer, so nothing is confirmed",
    "too_many_subscriptions": "more than `ws_max_subscriptions` tasks followed on this connection",
    "rate_limited": "too many `subscribe` / `subscribe_tasks` (`rate_subscribes_per_min`); "
    "`retry_after` says when to try again",
    "not_allowed": "`subscribe_tasks` on a share link's connection (it follows its one task only)",
}


class EventMessage(BaseModel):
    """One event of a task: stored (``seq`` and ``ts`` set) or live-only (``agent.text_delta``,
    coalesced to one per ``ws_delta_interval_s``; ``seq`` and ``ts`` null)."""

    type: Literal["event"]
    task_id: str
    seq: int | None = Field(description="gap-free per task from 1")
    event: str = Field(description="`task.created`, `task.status`, `agent.text`, ...")
    ts: float | None = Field(description="Unix time")
    data: dict[str, Any] = Field(description="the event's fields; status events carry `user_id`")


class Pong(BaseModel):
    """The answer to ``ping``."""

    type: Literal["pong"]


class ErrorMessage(BaseModel):
    """A refused message; the connection stays open."""

    type: Literal["error"]
    code: ErrorCode
    message: str = Field(description="what to do about it")
    task_id: str | None = Field(None, description="the task the refused message named (omitted otherwise)")
    retry_after: int | None = Field(None, description="seconds (`rate_limited` only)")


class Resync(BaseModel):
    """Your queue overflowed (a slow reader): the live feed is dropped. One per followed task:
    subscribe again from ``after`` and lose nothing; one with ``task_id`` null for the
    ``subscribe_tasks`` feed: send it again and reload your task list."""

    type: Literal["resync"]
    task_id: str | None = Field(description="the task, or null for the tasks feed")
    after: int | None = Field(description="the last seq the server sent you (null for the tasks feed)")


CLIENT_MESSAGES: tuple[type[ClientMessage], ...] = (
    Auth,
    Subscribe,
    Unsubscribe,
    SubscribeTasks,
    UnsubscribeTasks,
    Ping,
)
SERVER_MESSAGES: tuple[type[BaseModel], ...] = (EventMessage, Pong, ErrorMessage, Resync)


class CloseCode(enum.IntEnum):
    """The close codes the server sends (RFC 6455 and the private 4000-4999 range)."""

    GOING_AWAY = 1001
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011
    AUTH_FAILED = 4401
    NOT_OPERATOR = 4403
    TOO_MANY = 4429


CLOSE_CODES: dict[CloseCode, str] = {
    CloseCode.GOING_AWAY: "the daemon drains or stops (or the connection was lost): reconnect later",
    CloseCode.POLICY: "a binary frame, a message before `auth`, or an `auth` that is not one",
    CloseCode.TOO_BIG: f"a message over {MAX_MESSAGE_CHARS:,} characters",
    CloseCode.INTERNAL: "an error in the server",
    CloseCode.AUTH_FAILED: "no valid token, no `auth` in time, or the token (or share link) was revoked "
    "or expired since",
    CloseCode.NOT_OPERATOR: "an operator's connection whose user is no longer an operator",
    CloseCode.TOO_MANY: "this user has `ws_max_connections_per_user` WebSockets open already",
}


# -- the README section ---------------------------------------------------------------------------

BEGIN, END = "<!-- ws-protocol:begin -->", "<!-- ws-protocol:end -->"
README = Path(__file__).resolve().parents[2] / "README.md"


def _doc(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split()).replace("``", "`")


def _type(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(_type(option) for option in schema["anyOf"])
    if "const" in schema:
        return f'`"{schema["const"]}"`'
    if "enum" in schema:
        return " / ".join(f"`{value}`" for value in schema["enum"])
    kind = {
        "string": "string",
        "integer": "integer",
        "number": "number",
        "object": "object",
        "null": "null",
    }.get(schema.get("type", ""), "any")
    low, high = schema.get("minimum", schema.get("minLength")), schema.get("maximum", schema.get("maxLength"))
    if low is not None or high is not None:
        top = "2^63-1" if high == MAX_SEQ else "" if high is None else str(high)
        kind += f" {low}…{top}" + (" chars" if kind == "string" else "")
    return kind


def _fields(model: type[BaseModel]) -> str:
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    parts = []
    for name, prop in schema["properties"].items():
        if name == "type":
            continue
        text = f"`{name}` {_type(prop)}"
        if name not in required:
            default = prop.get("default")
            text += " (optional" + (f", default {default}" if default is not None else "") + ")"
        if prop.get("description"):
            text += f": {prop['description']}"
        parts.append(text)
    return "; ".join(parts) or "—"


def _table(models: tuple[type[BaseModel], ...]) -> list[str]:
    rows = ["| `type` | fields | meaning |", "|---|---|---|"]
    for model in models:
        (kind,) = get_args(model.model_fields["type"].annotation)
        rows.append(f"| `{kind}` | {_fields(model)} | {_doc(model)} |")
    return rows


def readme_section() -> str:
    """The README's ``/ws`` protocol section, markers included, rendered from the models above."""
    lines = [
        BEGIN,
        "<!-- generated from daemon/web/ws_protocol.py: python -m daemon.web.ws_protocol --write-readme -->",
        "",
        f"JSON text frames of at most {MAX_MESSAGE_CHARS:,} characters. Client to server:",
        "",
        *_table(CLIENT_MESSAGES),
        "",
        "Server to client:",
        "",
        *_table(SERVER_MESSAGES),
        "",
        "| error `code` | when |",
        "|---|---|",
        *(f"| `{code}` | {meaning} |" for code, meaning in ERROR_CODES.items()),
        "",
        "| close code | when |",
        "|---|---|",
        *(f"| {int(code)} | {meaning} |" for code, meaning in CLOSE_CODES.items()),
        END,
    ]
    return "\n".join(lines)


def write_readme(path: Path = README) -> bool:
    """Replace the section between the markers (which must exist); True if it changed."""
    text = path.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    new = text[:start] + readme_section() + text[end:]
    if new != text:
        path.write_text(new)
    return new != text


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-readme"]:
        print("README.md updated" if write_readme() else "README.md already up to date")
    else:
        print(readme_section())
