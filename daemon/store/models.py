"""The records the store hands out: plain frozen dataclasses, the same for every backend."""

from __future__ import annotations

import enum
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from ..states import TaskStatus

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
# Two digits per table lookup: 13 lookups for an id instead of 26 divisions (twice as fast).
_DIGIT_PAIRS = [high + low for high in _CROCKFORD for low in _CROCKFORD]
_PAIR_SHIFTS = tuple(range(120, -10, -10))
_wire_dumps = json.JSONEncoder(separators=(",", ":")).encode
_json_str = json.encoder.encode_basestring_ascii  # a str as JSON, as json.dumps writes it


def new_task_id(now: float | None = None) -> str:
    """A 26-character, time-ordered, URL-safe id (ULID layout: 48-bit ms time + 80 random bits)."""
    millis = int((time.time() if now is None else now) * 1000)
    value = (millis << 80) | secrets.randbits(80)
    return "".join([_DIGIT_PAIRS[(value >> shift) & 0x3FF] for shift in _PAIR_SHIFTS])


@dataclass(frozen=True)
class Usage:
    """Tokens and money spent by one model call or, summed, by a task.

    ``input_tokens`` excludes the cached parts, as in Anthropic's usage object:
    ``cache_write_tokens`` (cache_creation_input_tokens) and ``cache_read_tokens``
    (cache_read_input_tokens) are billed separately.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            round(self.cost_usd + other.cost_usd, 6),
        )


@dataclass(frozen=True)
class Task:
    id: str
    user_id: int
    repo_url: str
    prompt: str
    base_branch: str | None
    status: TaskStatus
    attempt: int
    created_at: float
    updated_at: float
    due_at: float | None = None
    reason: str | None = None
    error: str | None = None
    budget: dict[str, Any] = field(default_factory=dict)
    usage: Usage = Usage()
    branch: str | None = None
    pr_url: str | None = None
    diff: dict[str, Any] | None = None
    started_at: float | None = None
    finished_at: float | None = None
    last_seq: int = 0
    idempotency_key: str | None = None
    #: The node (daemon) that runs the task, or ran its latest attempt (``agentctl tasks``).
    node_id: str | None = None
    #: The branch of the task's current workspace (set at clone; ``branch`` is set once pushed).
    workspace_branch: str | None = None
    #: Per-task options (schema v13): the model (None: made before v13, the daemon's default),
    #: whether its pull request opens as a draft, and the pull request's title (None: from the
    #: prompt, ``pr_title_of``).
    model: str | None = None
    draft: bool = False
    pr_title: str | None = None
    #: When retention removed its history (events but the last, conversation, tool calls),
    #: keeping this summary (schema v14, daemon/retention.py); None: never.
    compacted_at: float | None = None

    def evolve(self, **changes: Any) -> Task:
        """A copy with ``changes`` applied, like ``dataclasses.replace`` at a tenth of its cost.

        Every status change makes one or two of these on the writer thread; ``replace`` walks
        all 23 fields through ``__init__``. There is no ``__post_init__`` to skip. Unknown
        names raise ``TypeError`` as with ``replace``.
        """
        unknown = changes.keys() - _TASK_FIELDS
        if unknown:
            raise TypeError(f"Task has no field(s) {sorted(unknown)}")
        copy = object.__new__(Task)
        state = copy.__dict__
        state.update(self.__dict__)
        state.update(changes)
        return copy

    def public(self) -> dict[str, Any]:
        """The JSON shape shown to the task's owner and to operators (no secrets here)."""
        return {
            "id": self.id,
            "user_id": self.user_id,
            "repo_url": self.repo_url,
            "prompt": self.prompt,
            "base_branch": self.base_branch,
            "status": self.status.value,
            "attempt": self.attempt,
            "due_at": self.due_at,
            "reason": self.reason,
            "error": self.error,
            "budget": self.budget,
            "usage": self.usage.__dict__,
            "branch": self.branch,
            "pr_url": self.pr_url,
            "diff": self.diff,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "last_seq": self.last_seq,
            "node": self.node_id,
            "model": self.model,
            "draft": self.draft,
            "pr_title": self.pr_title,
            "compacted_at": self.compacted_at,
        }


_TASK_FIELDS = frozenset(Task.__dataclass_fields__)


@dataclass(frozen=True)
class Event:
    """One durable step of a task; ``seq`` is gap-free per task, starting at 1.

    ``data_json``: ``data`` as the store wrote it (JSON text), when the store has it at hand;
    ``wire_json`` reuses it instead of encoding ``data`` again. Not part of equality.
    """

    task_id: str
    seq: int
    ts: float
    type: str
    data: dict[str, Any]
    data_json: str | None = field(default=None, compare=False, repr=False)

    def wire(self) -> dict[str, Any]:
        """The WebSocket / control-socket shape (design §6)."""
        return {
            "type": "event",
            "task_id": self.task_id,
            "seq": self.seq,
            "event": self.type,
            "ts": self.ts,
            "data": self.data,
        }

    def wire_json(self) -> str:
        """``wire()`` as compact JSON text, the same value as ``json.dumps(self.wire())``.

        With ``data_json`` the text around it is put together here (the data is not encoded
        again); non-ASCII characters of the data then stay as they are rather than escaped.
        """
        data, ts = self.data_json, self.ts
        # A finite float's repr is its JSON; anything unusual goes the long way.
        if data is None or type(ts) is not float or ts - ts != 0 or type(self.seq) is not int:
            return _wire_dumps(self.wire())
        return (
            f'{{"type":"event","task_id":{_json_str(self.task_id)},"seq":{self.seq},'
            f'"event":{_json_str(self.type)},"ts":{ts!r},"data":{data}}}'
        )


@dataclass(frozen=True)
class User:
    id: int
    login: str
    created_at: float
    github_id: int | None = None
    name: str | None = None
    is_operator: bool = False
    disabled: bool = False


@dataclass(frozen=True)
class NewTask:
    """A task to insert, queued, with its first events (``task.created``, ``task.status``).

    ``idempotency_key``: per user; a second insert with a known key returns the first task.
    """

    id: str
    user_id: int
    repo_url: str
    prompt: str
    base_branch: str | None = None
    budget: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    model: str | None = None
    draft: bool = False
    pr_title: str | None = None


@dataclass(frozen=True)
class NewEvent:
    """An event to append; the store gives it its ``seq`` and ``ts``."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)


class NodeState(enum.StrEnum):
    """A node's state as the store keeps it (the same strings in the ``nodes`` table)."""

    UP = "up"
    DRAINING = "draining"
    STOPPED = "stopped"  # left in order
    LOST = "lost"  # its lease ran out and its running tasks were taken over


class ToolCallStatus(enum.StrEnum):
    """A tool call as the store keeps it (the same strings in the ``tool_calls`` table)."""

    STARTED = "started"  # recorded before it runs; no result yet
    DONE = "done"  # its result is recorded


@dataclass(frozen=True)
class Node:
    """One daemon sharing the store, as its last heartbeat left it (``agentctl status``)."""

    id: str
    name: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    state: NodeState
    concurrency: int
    running: int
    http: str | None = None

    def public(self, now: float) -> dict[str, Any]:
        return {**self.__dict__, "heartbeat_age_s": round(max(0.0, now - self.heartbeat_at), 3)}


@dataclass(frozen=True)
class RemoteNotice:
    """Another daemon committed events ``first..last`` of a task (``flags``: see
    ``postgres_queries.notice_flags``)."""

    node: str
    task_id: str
    first: int
    last: int
    flags: str

    @classmethod
    def parse(cls, payload: str) -> RemoteNotice | None:
        parts = payload.split(" ")
        if len(parts) != 5 or not parts[2].isdigit() or not parts[3].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]), int(parts[3]), parts[4])


#: What a revocation cuts (``Revoked.kind``).
RevokedKind = Literal["share", "token", "user"]
_REVOKED_KINDS: tuple[RevokedKind, ...] = ("share", "token", "user")


@dataclass(frozen=True)
class Revoked:
    """Access just cut on some daemon, to close what it opened at once: a share link (``kind``
    "share", ``key`` its id, ``user_id`` its maker), one API token ("token": its hash, its
    user), or a user with every token and link of theirs ("user": ``key`` is ``user_id``).

    Other daemons sharing the store hear it as a notice of its own on the event channel
    (``postgres_listen``): "<node> revoked <kind> <user_id> <key>", which no task event notice
    parses as (its third word is no seq)."""

    kind: RevokedKind
    key: str
    user_id: int

    @property
    def notice(self) -> str:
        """The notice without its node (the store adds the sender's)."""
        return f"revoked {self.kind} {self.user_id} {self.key}"

    @classmethod
    def parse(cls, payload: str) -> tuple[str, Revoked] | None:
        """The sending node and the revocation of a notice, or None for any other notice."""
        parts = payload.split(" ")
        if len(parts) != 5 or parts[1] != "revoked" or not parts[3].isdigit():
            return None
        for kind in _REVOKED_KINDS:
            if parts[2] == kind:
                return parts[0], cls(kind, parts[4], int(parts[3]))
        return None
