"""The Messages API's streamed response, parsed without I/O and without a model object per event.

``SSEDecoder`` turns the body's bytes into server-sent events; ``MessageAssembler`` turns the
events into the finished message (content blocks as plain JSON dicts, ``stop_reason``, usage,
model), calling ``on_text_delta`` for each text delta on the way. ``AnthropicProvider`` feeds
them from the SDK's raw response; everything here is plain data in, plain data out.

The result is the one the SDK's ``messages.stream()`` / ``get_final_message()`` builds
(``tests/test_anthropic_stream.py`` checks that on the same streams), at a fraction of the CPU:
one ``json.loads`` per event, text and tool input joined once per block instead of re-parsed
or re-concatenated per delta.

Strict where it matters: an event that breaks the protocol (no ``message_start`` first, a delta
for a block that was never started, data that is not a JSON object, tool input that is not
JSON once complete) and a stream that ends before ``message_stop`` raise ``StreamBroken``.
A reply the output limit cut off inside a tool call's input (``stop_reason: "max_tokens"``, the
last block's input JSON unfinished) is not malformed: that block is dropped and the message says
so (``cut_tool_use``), for the agent loop to retry or continue. Forward compatible where it can
be: unknown event types, unknown delta types and unknown fields are ignored; unknown content
blocks are passed through as they arrived.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["MessageAssembler", "SSEDecoder", "StreamBroken", "StreamErrorEvent", "StreamedMessage"]

# Usage counts a ``message_delta`` may carry: cumulative totals, so they replace the
# ``message_start`` values; one that is absent or null leaves the earlier value.
# ``iterations``: the per-step usage of a turn the API compacted (its compaction step is billed
# but not in the totals).
_USAGE_KEYS = (
    "output_tokens",
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "iterations",
)


class StreamBroken(Exception):
    """The response stream does not make a complete, well-formed message (message says how)."""


def _malformed(detail: str) -> StreamBroken:
    return StreamBroken(f"the response stream is malformed: {detail}")


class StreamErrorEvent(Exception):
    """The API sent an ``error`` event; ``body`` is its data (JSON, else the raw text)."""

    def __init__(self, body: object) -> None:
        super().__init__(str(body))
        self.body = body


@dataclass(frozen=True)
class StreamedMessage:
    """What the stream said, as JSON: ``usage`` has the API's keys (``input_tokens``, ...).

    ``cut_tool_use``: the output limit cut the last block off inside its tool input; that block
    is not in ``content``. ``context_management``: what the ``message_delta`` said of it.
    """

    content: list[dict[str, Any]]
    stop_reason: str
    model: str | None
    usage: dict[str, Any]
    cut_tool_use: bool = False
    context_management: dict[str, Any] | None = None  # the API's applied edits, if it made any


class SSEDecoder:
    """Bytes in, ``(event name, data)`` out, by the WHATWG event-stream rules.

    Lines end in LF, CRLF or CR; ``data:`` lines of one event are joined with LF; comments
    (``:...``) and ``id:`` / ``retry:`` are dropped (a response is never resumed); an event
    without data is not dispatched, and neither is a last event the body ends in the middle of.
    ``data`` stays bytes: ``json.loads`` takes UTF-8 bytes as they are.
    """

    def __init__(self) -> None:
        self._tail: list[bytes] = []  # the current, unfinished line, in pieces
        self._event: str | None = None
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        """The events completed by ``chunk``, in order."""
        if b"\r" in chunk or (self._tail and self._tail[-1].endswith(b"\r")):
            return self._feed_with_cr(chunk)
        if b"\n" not in chunk:
            if chunk:
                self._tail.append(chunk)
            return []
        if self._tail:
            self._tail.append(chunk)
            chunk = b"".join(self._tail)
            self._tail.clear()
        lines = chunk.split(b"\n")
        rest = lines.pop()
        if rest:
            self._tail.append(rest)
        return self._lines(lines)

    def _feed_with_cr(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        # Rare (the API ends lines in LF): normalise, keeping a trailing CR back until the next
        # chunk says whether an LF follows it.
        chunk = b"".join(self._tail) + chunk
        self._tail.clear()
        held = b""
        if chunk.endswith(b"\r"):
            chunk, held = chunk[:-1], b"\r"
        chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        rest = lines.pop() + held
        if rest:
            self._tail.append(rest)
        return self._lines(lines)

    def close(self) -> list[tuple[str | None, bytes]]:
        """The body ended: a held CR still ends its line (an unterminated event is dropped)."""
        if self._tail and self._tail[-1].endswith(b"\r"):
            return self.feed(b"\n")
        return []

    def _lines(self, lines: list[bytes]) -> list[tuple[str | None, bytes]]:
        events: list[tuple[str | None, bytes]] = []
        for line in lines:
            if not line:
                if self._data:
                    data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                    events.append((self._event, data))
                    self._data = []
                self._event = None
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
            elif line.startswith(b"event:"):
                value = line[6:]
                self._event = (value[1:] if value.startswith(b" ") else value).decode("utf-8", "replace")
            # Anything else: a comment, id:, retry: or an unknown field, all ignored.
        return events


class MessageAssembler:
    """Events in (``event(name, data)``), the finished message out (``result()``).

    ``on_text_delta`` is called with each ``text_delta`` of a text block, in order.
    """

    def __init__(self, on_text_delta: Callable[[str], None] | None = None) -> None:
        self._on_text_delta = on_text_delta
        self._message: dict[str, Any] | None = None
        self._blocks: list[dict[str, Any]] = []
        # Per block: the pieces of its text / thinking / tool input JSON, joined at the end.
        self._pieces: list[list[str]] = []
        self._stop_reason: str | None = None
        self._stopped = False

    def event(self, name: str | None, data: bytes) -> None:
        """One SSE event. Raises ``StreamErrorEvent`` for ``error``, ``StreamBroken`` if malformed."""
        if name is None or name == "ping":
            return
        if name == "error":
            try:
                body: object = json.loads(data)
            except ValueError:
                body = data.decode("utf-8", "replace")
            raise StreamErrorEvent(body)
        try:
            payload = json.loads(data)
        except ValueError as err:
            raise _malformed(f"a {name} event whose data is not JSON ({err})") from None
        if not isinstance(payload, dict):
            raise _malformed(f"a {name} event whose data is not a JSON object")
        kind = payload.get("type")
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            return  # an event type newer than this code: nothing it needs
        if self._message is None and handler is not MessageAssembler._message_start:
            raise _malformed(f"a {payload.get('type')} event before message_start")
        try:
            handler(self, payload)
        except (KeyError, IndexError, TypeError, AttributeError) as err:
            raise _malformed(
                f"a {payload.get('type')} event without the fields it needs ({type(err).__name__}: {err})"
            ) from None

    def result(self) -> StreamedMessage:
        """The finished message; ``StreamBroken`` if the stream stopped short of ``message_stop``."""
        if self._message is None or not self._stopped or self._stop_reason is None:
            raise StreamBroken("the response stream ended before the message was complete")
        content = []
        cut = False
        last = len(self._blocks) - 1
        for i, (block, pieces) in enumerate(zip(self._blocks, self._pieces, strict=True)):
            try:
                whole = _joined(block, pieces) if pieces else block
            except StreamBroken:
                if i == last and self._stop_reason == "max_tokens":
                    cut = True  # the output limit, not a broken stream: the caller decides
                    break
                raise
            # Only the fields the API sent, minus nulls (e.g. "citations": null), so that the
            # blocks can be sent back verbatim as the assistant turn of the next request.
            content.append({k: v for k, v in whole.items() if v is not None})
        m = self._message
        return StreamedMessage(
            content=content,
            stop_reason=self._stop_reason,
            model=m.get("model"),
            usage=m.get("usage") or {},
            cut_tool_use=cut,
            context_management=m.get("context_management"),
        )

    # --- handlers, by the data's "type" ---

    def _message_start(self, event: dict[str, Any]) -> None:
        if self._message is not None:
            raise _malformed("a second message_start")
        message = event["message"]
        if not isinstance(message, dict):
            raise TypeError("message is not an object")
        usage = message.get("usage")
        message["usage"] = dict(usage) if isinstance(usage, dict) else {}
        self._message = message
        self._blocks = [dict(b) for b in message.get("content") or []]
        self._pieces = [[] for _ in self._blocks]

    def _block_start(self, event: dict[str, Any]) -> None:
        index, block = event["index"], event["content_block"]
        if index != len(self._blocks):
            raise _malformed(f"content block {index} started after {len(self._blocks)} blocks")
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise TypeError("content_block is not an object with a type")
        self._blocks.append(block)
        self._pieces.append([])

    def _block_delta(self, event: dict[str, Any]) -> None:
        index, delta = event["index"], event["delta"]
        if not 0 <= index < len(self._blocks):
            raise _malformed(f"a delta for content block {index}, which was never started")
        kind = delta["type"]
        block = self._blocks[index]
        if kind == "text_delta":
            if block["type"] == "text":
                text = delta["text"]
                self._pieces[index].append(text)
                if self._on_text_delta is not None:
                    self._on_text_delta(text)
        elif kind == "input_json_delta":
            if "input" in block:  # tool_use, server_tool_use and their kin
                self._pieces[index].append(delta["partial_json"])
        elif kind == "thinking_delta":
            if block["type"] == "thinking":
                self._pieces[index].append(delta["thinking"])
        elif kind == "signature_delta":
            if block["type"] == "thinking":
                block["signature"] = delta["signature"]
        elif kind == "compaction_delta":
            if block["type"] == "compaction":  # the summary arrives whole, in one delta
                block["content"] = delta.get("content")
                if delta.get("encrypted_content") is not None:
                    block["encrypted_content"] = delta["encrypted_content"]
        elif kind == "citations_delta" and block["type"] == "text":
            citations = block.get("citations")
            if citations:
                citations.append(delta["citation"])
            else:
                block["citations"] = [delta["citation"]]
        # Other delta types: newer than this code, ignored.

    def _block_stop(self, event: dict[str, Any]) -> None:
        index = event["index"]
        if not 0 <= index < len(self._blocks):
            raise _malformed(f"content_block_stop for block {index}, which was never started")
        pieces = self._pieces[index]
        if pieces:
            try:
                self._blocks[index] = _joined(self._blocks[index], pieces)
            except StreamBroken:
                return  # input JSON cut short: result() knows whether max_tokens explains it
            self._pieces[index] = []

    def _message_delta(self, event: dict[str, Any]) -> None:
        assert self._message is not None
        delta = event["delta"]
        self._stop_reason = delta.get("stop_reason")
        self._message["stop_sequence"] = delta.get("stop_sequence")
        if isinstance(event.get("context_management"), dict):
            self._message["context_management"] = event["context_management"]
        usage = event.get("usage") or {}
        totals = self._message["usage"]
        for key in _USAGE_KEYS:
            value = usage.get(key)
            if value is not None:
                totals[key] = value

    def _message_stop(self, event: dict[str, Any]) -> None:
        self._stopped = True


_HANDLERS: dict[str, Callable[[MessageAssembler, dict[str, Any]], None]] = {
    "message_start": MessageAssembler._message_start,
    "content_block_start": MessageAssembler._block_start,
    "content_block_delta": MessageAssembler._block_delta,
    "content_block_stop": MessageAssembler._block_stop,
    "message_delta": MessageAssembler._message_delta,
    "message_stop": MessageAssembler._message_stop,
}


def _joined(block: dict[str, Any], pieces: list[str]) -> dict[str, Any]:
    """``block`` with its accumulated pieces in place: text, thinking, or the parsed tool input."""
    kind = block["type"]
    joined = "".join(pieces)
    if kind == "text":
        return {**block, "text": (block.get("text") or "") + joined}
    if kind == "thinking":
        return {**block, "thinking": (block.get("thinking") or "") + joined}
    if not joined:
        return block  # no input JSON after all: the input stays as the block started
    try:
        tool_input = json.loads(joined)
    except ValueError as err:
        raise _malformed(f"the input of {kind} block {block.get('id')!r} is not JSON ({err})") from None
    return {**block, "input": tool_input}
