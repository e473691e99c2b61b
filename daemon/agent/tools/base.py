"""Value types shared by the tools: results, settings, tool definitions, output capping."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

from daemon.errors import ConfigError

BASH_TOOL = "bash"
EDIT_TOOL = "str_replace_based_edit_tool"
ASK_USER_TOOL = "ask_user"

# Anthropic-defined tools are schema-less: Claude knows their inputs natively, so only the
# type (version) and the fixed name are sent. bash_20250124 and text_editor_20250728 are the
# current versions for Claude 4 models (text_editor_20250728 has no undo_edit).
TOOL_DEFINITIONS: list[dict] = [
    {"type": "bash_20250124", "name": BASH_TOOL},
    {"type": "text_editor_20250728", "name": EDIT_TOOL},
    {
        "name": ASK_USER_TOOL,
        "description": (
            "Ask the user (who follows this task on their phone) a question and wait for the "
            "answer. Use it only when you cannot go on without a decision or information that "
            "only the user has; the task pauses until they reply."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "question": {
                    "type": "string",
                    "description": "The question, short and self-contained.",
                }
            },
            "required": ["question"],
            "additionalProperties": False,
        },
    },
]


def tool_definitions() -> list[dict]:
    """A fresh deep copy of ``TOOL_DEFINITIONS``, safe to decorate (e.g. with ``cache_control``)."""
    return copy.deepcopy(TOOL_DEFINITIONS)


@dataclass(frozen=True)
class ToolResult:
    """What goes back to the model in a ``tool_result`` block."""

    output: str
    is_error: bool = False


MIB = 1024 * 1024


@dataclass(frozen=True)
class ToolSettings:
    """Limits for one task's tools.

    ``sandbox``: ``auto`` runs bash under bubblewrap when it works on this host (probed once per
    process), ``required`` refuses to run commands without it, ``off`` runs a plain subprocess.

    Per task (``limits.py`` says which mechanism holds each one on which host):
    ``max_processes`` processes and threads, ``memory_bytes`` of memory, ``cpu_time_s`` seconds
    of CPU per process, ``file_size_bytes`` per file written (the daemon sets it to the
    workspace quota), ``tmp_bytes`` for the sandbox's private ``/tmp``.
    ``uid_base``/``uid_count``: when the daemon is root, each running task's sandbox runs as
    its own uid (and gid) from ``uid_base`` .. ``uid_base + uid_count - 1``; ``uid_count=0``:
    as the daemon's user.
    """

    command_timeout_s: float = 120.0
    output_cap_bytes: int = 30_000
    sandbox: Literal["auto", "required", "off"] = "auto"
    max_processes: int = 512
    memory_bytes: int = 4096 * MIB
    cpu_time_s: int = 600
    file_size_bytes: int = 2000 * MIB
    tmp_bytes: int = 512 * MIB
    uid_base: int = 600_000
    uid_count: int = 65_536

    def __post_init__(self) -> None:
        # Below these a shell, git or a compiler cannot start at all: a typo, not a policy.
        for name, least in (
            ("max_processes", 16),
            ("memory_bytes", 64 * MIB),
            ("cpu_time_s", 1),
            ("file_size_bytes", MIB),
            ("tmp_bytes", MIB),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < least:
                raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
        if not 1 <= self.uid_base or self.uid_count < 0 or self.uid_base + self.uid_count > 2**31:
            raise ConfigError(
                f"uid_base and uid_count must name uids between 1 and 2^31, got {self.uid_base!r} "
                f"and {self.uid_count!r}"
            )
        if not self.command_timeout_s > 0:
            raise ConfigError(f"command_timeout_s must be > 0, got {self.command_timeout_s!r}")
        # Below a few hundred bytes the cut note would be most of the output.
        if self.output_cap_bytes < 256:
            raise ConfigError(f"output_cap_bytes must be >= 256, got {self.output_cap_bytes!r}")
        if self.sandbox not in ("auto", "required", "off"):
            raise ConfigError(f"sandbox must be one of auto, required, off; got {self.sandbox!r}")


class HeadTail:
    """Keeps the first and the last bytes of a stream of any size in about ``cap`` bytes.

    Memory stays bounded whatever is fed (a command printing 1 GB costs ``cap`` plus one chunk).
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._head_cap = cap // 2
        self._tail_cap = cap - self._head_cap
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self._head_cap - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data:
            self._tail += data
            # Trim lazily (at twice the size) so that a stream of small chunks is not O(n^2).
            if len(self._tail) > 2 * self._tail_cap:
                del self._tail[: -self._tail_cap]

    def text(self) -> str:
        head = self._head.decode("utf-8", errors="replace")
        if self.total <= self.cap:
            return head + self._tail.decode("utf-8", errors="replace")
        tail = bytes(self._tail[-self._tail_cap :])
        cut = self.total - len(self._head) - len(tail)
        return head + f"\n[... {cut} bytes cut ...]\n" + tail.decode("utf-8", errors="replace")


def cap_text(text: str, cap: int) -> str:
    """``text`` cut to about ``cap`` UTF-8 bytes, keeping its head and tail."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= cap:
        return text
    buf = HeadTail(cap)
    buf.feed(data)
    return buf.text()
