"""Structured logging: JSON lines for machines, readable lines for people, never a secret.

The daemon's modules (and Hypercorn, and every library) log through the standard ``logging``
module; ``configure`` puts one handler on the root logger whose formatter is structlog's
``ProcessorFormatter``. So nothing else has to change how it logs, and every record, ours or a
library's, goes through the same chain: context variables (``task_id``), level, logger name,
UTC timestamp, exception text, redaction, then JSON (not a terminal: journald, Fly, Docker) or
console rendering (a terminal).

Why structlog and not a hand-made JSON formatter: its ``contextvars`` binding is exactly the
per-Trio-task context we want (each Trio task runs in its own copy of the context), and its
console renderer, exception formatting and processor chain would otherwise be rewritten here.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, Literal, TextIO

import structlog
from structlog.types import EventDict, Processor

LogFormat = Literal["auto", "json", "console"]

# Tokens that must never reach a log line, by their well-known prefixes.
_SECRET_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"agentd_[A-Za-z0-9_-]{32,}"), "agentd_[REDACTED]"),  # our API tokens
    (re.compile(r"sk-ant-[A-Za-z0-9_-]{8,}"), "sk-ant-[REDACTED]"),  # Anthropic API keys
    (re.compile(r"github_pat_[A-Za-z0-9_]{20,}"), "github_pat_[REDACTED]"),
    (re.compile(r"\b(gh[pousr])_[A-Za-z0-9]{20,}"), r"\1_[REDACTED]"),  # GitHub tokens
    (re.compile(r"\b(Bearer|token)\s+[A-Za-z0-9._~+/=-]{16,}", re.IGNORECASE), r"\1 [REDACTED]"),
]
# Fields whose whole value is secret, whatever it looks like.
_SECRET_KEYS = frozenset(
    {
        "authorization",
        "api_key",
        "anthropic_api_key",
        "token",
        "access_token",
        "password",
        "secret",
        "client_secret",
        "github_client_secret",
        "secret_keys",
    }
)
_MAX_DEPTH = 4
_HEAD = ("timestamp", "level", "logger", "message", "task_id")

_installed: logging.Handler | None = None


def redact_text(text: str) -> str:
    """``text`` with anything that looks like a token replaced by its prefix and [REDACTED]."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, dict):
        return {
            k: "[REDACTED]" if str(k).lower() in _SECRET_KEYS else _redact_value(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(v, depth + 1) for v in value)
    return value


def redact(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact secret-looking strings and secret-named fields."""
    for key, value in event_dict.items():
        if key.startswith("_"):
            continue  # structlog's own bookkeeping (_record, _from_structlog)
        event_dict[key] = "[REDACTED]" if key.lower() in _SECRET_KEYS else _redact_value(value)
    return event_dict


def _first_keys(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """Put when, how bad, who and what first: a person reading raw JSON lines sees them first."""
    head = {key: event_dict.pop(key) for key in _HEAD if key in event_dict}
    return {**head, **event_dict}


def bind_task(task_id: str) -> None:
    """Put ``task_id`` on every log line of the current Trio task and the tasks it spawns.

    Trio runs each task in its own copy of the context (taken when it was spawned), so the
    binding ends with the task: nothing to unbind, no leak into siblings.
    """
    structlog.contextvars.bind_contextvars(task_id=task_id)


def configure(
    level: str | int = "INFO", fmt: LogFormat = "auto", stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) as JSON lines or console lines.

    ``fmt="auto"`` picks console lines on a terminal and JSON otherwise. Python warnings go
    the same way (logger ``py.warnings``). Calling it again replaces the previous setup (tests
    do). Returns the installed handler.
    """
    global _installed
    stream = sys.stderr if stream is None else stream
    as_json = fmt == "json" or (fmt == "auto" and not _isatty(stream))
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: list[Processor] = (
        [
            structlog.processors.EventRenamer("message"),
            _first_keys,
            structlog.processors.JSONRenderer(default=str),
        ]
        if as_json
        else [structlog.dev.ConsoleRenderer(colors=_isatty(stream))]
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Exceptions become text before redaction, so a token in a traceback is caught too.
            structlog.processors.format_exc_info,
            redact,
            *renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    _installed = handler
    # Python's warnings (a library's DeprecationWarning...) as log records too: never a raw
    # line among the JSON ones.
    logging.captureWarnings(True)
    # structlog's own loggers (structlog.get_logger()) end in the same handler.
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    return handler


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False
