"""The fake Messages API's wire format: a reply as the API's JSON message and SSE events.

Event by event as Anthropic streams a message (``message_start``, ``ping``, a start, deltas
and a stop per content block, ``message_delta`` with the stop reason, the output usage and
any ``context_management`` report, ``message_stop``); the event name repeats as the data's
``type``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, Protocol

__all__ = ["event", "message_json", "sse_events"]


class Reply(Protocol):
    """What a streamed reply needs of ``anthropic_api.MessageReply``."""

    @property
    def content(self) -> list[dict]: ...
    @property
    def stop_reason(self) -> str: ...
    @property
    def stop_sequence(self) -> str | None: ...


def event(name: str, **fields: Any) -> tuple[str, dict]:
    """One SSE event: the ``event:`` name repeats as the data's ``type``, as the API does."""
    return name, {"type": name, **fields}


def message_json(
    msg_id: str,
    model: str,
    content: list[dict],
    stop_reason: str | None,
    stop_sequence: str | None,
    usage: dict,
) -> dict:
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "output_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            **usage,
        },
    }


def sse_events(
    msg_id: str, model: str, reply: Reply, usage: dict, managed: dict, chunks: Callable[[str], list[str]]
) -> Iterator[tuple[str, dict]]:
    """The SSE events of a streamed ``reply``: each text and tool input in ``chunks``."""
    start = message_json(msg_id, model, [], None, None, {**usage, "output_tokens": 1})
    yield event("message_start", message=start)
    yield event("ping")
    for i, block in enumerate(reply.content):
        kind = block["type"]
        if kind == "text":
            yield event("content_block_start", index=i, content_block={"type": "text", "text": ""})
            for piece in chunks(block["text"]):
                yield event("content_block_delta", index=i, delta={"type": "text_delta", "text": piece})
        elif kind == "tool_use":
            start = {k: v for k, v in block.items() if k != "partial_json"}
            yield event("content_block_start", index=i, content_block={**start, "input": {}})
            sent = block["partial_json"] if "partial_json" in block else json.dumps(block["input"])
            for piece in chunks(sent):
                delta = {"type": "input_json_delta", "partial_json": piece}
                yield event("content_block_delta", index=i, delta=delta)
        elif kind == "compaction":  # the summary comes whole, in one delta
            yield event("content_block_start", index=i, content_block={"type": "compaction", "content": None})
            delta = {"type": "compaction_delta", "content": block["content"]}
            yield event("content_block_delta", index=i, delta=delta)
        elif kind == "thinking":
            empty = {"type": "thinking", "thinking": "", "signature": ""}
            yield event("content_block_start", index=i, content_block=empty)
            delta = {"type": "thinking_delta", "thinking": block["thinking"]}
            yield event("content_block_delta", index=i, delta=delta)
            delta = {"type": "signature_delta", "signature": block.get("signature", "")}
            yield event("content_block_delta", index=i, delta=delta)
        else:  # blocks without deltas (redacted_thinking, server tool results) arrive whole
            yield event("content_block_start", index=i, content_block=block)
        yield event("content_block_stop", index=i)
    delta = {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence}
    final = {k: usage[k] for k in ("output_tokens", "iterations") if k in usage}
    yield event("message_delta", delta=delta, usage=final, **managed)
    yield event("message_stop")
