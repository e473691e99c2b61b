"""A fake Anthropic Messages API on 127.0.0.1, for tests that go through the real SDK.

Usage::

    fake = FakeAnthropicAPI()
    base_url = await nursery.start(fake.serve)        # listens on a free port
    fake.push(message(text("Let me look."), tool_use("toolu_1", "bash", {"command": "ls"})))
    fake.push(rate_limited(retry_after=7))
    ...                                                # point ANTHROPIC_BASE_URL / base_url at it
    fake.requests[0].body["messages"]                  # what the client sent

``POST /v1/messages`` pops the next scripted reply (``message(...)`` or an error helper) and
serves it as an SSE stream when the request asks for ``stream: true``, else as JSON. With the
queue empty it answers 500 ``api_error`` saying so, which fails the test loudly. Requests that
the real API would reject (more than 4 cache_control blocks, empty text, a tool_result not
answering the previous assistant turn's tool_use) get a 400 without consuming a reply, so that
whole-daemon tests catch conversation bugs here rather than against Claude.

``FakeAnthropicAPI(prompt_cache=PromptCache())`` turns on prompt-cache accounting by
Anthropic's rules (``tests/fakes/prompt_cache.py``): the usage then splits the input into
``cache_read_input_tokens``, ``cache_creation_input_tokens`` and the uncached ``input_tokens``.
Without it, ``input_tokens`` is the request's JSON size / 4 and nothing is cached.

Context management (``tests/fakes/context_edits.py``): a ``compaction`` block sent back starts the
prompt, ``context_management`` edits are applied (clearing, compaction) and reported in the
``message_delta``; cache accounting and the window check see the edited prompt.
``FakeAnthropicAPI(context_window=N)`` answers 400 "prompt is too long" when that prompt is
over N tokens, as the API does past the model's window (no reply is consumed).
``FakeAnthropicAPI(refuse_context_management="beta" | "model")`` refuses context management
with a 400 ``invalid_request_error`` as the API does for a beta it does not know, or for
edits the model does not support (``context_edits.edit``).

Served by Hypercorn's trio worker around a bare ASGI callable, so SSE chunks leave as sent
and a client disconnect is observable (``RecordedRequest.disconnected``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from .anthropic_checks import validate_request
from .anthropic_sse import event, message_json, sse_events
from .context_edits import Edited, Refusal, edit
from .prompt_cache import PromptCache

# --- replies -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageReply:
    """A successful assistant message.

    ``usage`` entries override the synthetic counts (input from the request size, output from
    the content size). ``stall_after_events``: send that many SSE events, then hold the stream
    open until the client goes away. ``cut_after_events``: end the body after that many events,
    as a dropped connection would, without ``message_stop``.
    """

    content: list[dict]
    stop_reason: str
    usage: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    stop_sequence: str | None = None
    stall_after_events: int | None = None
    cut_after_events: int | None = None


@dataclass(frozen=True)
class ErrorReply:
    """An API error in Anthropic's shape; ``in_stream`` sends it as an SSE ``error`` event
    after a 200 and ``message_start`` (the API does this when overloaded mid-response)."""

    status: int
    error_type: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    in_stream: bool = False


Reply = MessageReply | ErrorReply


def text(s: str) -> dict:
    return {"type": "text", "text": s}


def tool_use(id: str, name: str, input: dict) -> dict:
    return {"type": "tool_use", "id": id, "name": name, "input": input}


def partial_tool_use(id: str, name: str, partial_json: str) -> dict:
    """A tool_use block the output limit cut off: its input streams as ``partial_json`` only
    (streamed replies only; pair it with ``stop_reason="max_tokens"``)."""
    return {"type": "tool_use", "id": id, "name": name, "partial_json": partial_json}


def message(*content: dict | str, stop_reason: str | None = None, **kw: Any) -> MessageReply:
    """A reply; strings become text blocks. Ends ``tool_use`` if it has any, else ``end_turn``."""
    blocks = [text(c) if isinstance(c, str) else c for c in content]
    if stop_reason is None:
        stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
    return MessageReply(content=blocks, stop_reason=stop_reason, **kw)


def error(status: int, error_type: str, message: str, **kw: Any) -> ErrorReply:
    return ErrorReply(status, error_type, message, **kw)


RATE_LIMIT_MESSAGE = "Number of request tokens has exceeded your per-minute rate limit"


def rate_limited(retry_after: float = 1, message: str = RATE_LIMIT_MESSAGE) -> ErrorReply:
    return ErrorReply(429, "rate_limit_error", message, headers={"retry-after": _num(retry_after)})


def overloaded(**kw: Any) -> ErrorReply:
    return ErrorReply(529, "overloaded_error", "Overloaded", **kw)


def server_error() -> ErrorReply:
    return ErrorReply(500, "api_error", "Internal server error")


def unauthorized() -> ErrorReply:
    return ErrorReply(401, "authentication_error", "invalid x-api-key")


def bad_request(message: str = "messages: field required") -> ErrorReply:
    return ErrorReply(400, "invalid_request_error", message)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# --- the server --------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names; a repeated header keeps its last value
    body: Any  # parsed JSON, or the raw text when it was not JSON
    # Set when the client closed the connection before the response was complete.
    disconnected: trio.Event = field(default_factory=trio.Event)
    raw_body: bytes = b""  # as sent, for byte-for-byte comparisons
    usage: dict[str, Any] = field(default_factory=dict)  # what the reply reported, if one was sent
    prompt_tokens: int = 0  # tokens of the prompt the model read, after context management
    applied_edits: list[dict[str, Any]] = field(default_factory=list)
    compacted: bool = False  # the API's compaction edit fired on this request


class FakeAnthropicAPI:
    """Scripted replies in, recorded requests out. ``api_key``, when given, is enforced the
    way the real API does (401 ``authentication_error`` for any other key). ``prompt_cache``,
    when given, accounts each served request's input against it (see the module docstring)."""

    def __init__(
        self,
        *replies: Reply,
        api_key: str | None = None,
        prompt_cache: PromptCache | None = None,
        context_window: int | None = None,
        refuse_context_management: Refusal | None = None,
    ) -> None:
        self.requests: list[RecordedRequest] = []
        self.api_key = api_key
        self.prompt_cache = prompt_cache
        self.context_window = context_window
        self.refuse_context_management = refuse_context_management
        # Consulted before the queue: a reply for this request, or None for the next queued one
        # (e.g. a summary whenever one is asked for, wherever that falls in the script).
        self.answer: Callable[[RecordedRequest], Reply | None] | None = None
        self._replies: deque[Reply] = deque(replies)
        self._ids = itertools.count(1)
        self.url: str | None = None  # the base URL, once serving

    def push(self, *replies: Reply) -> None:
        self._replies.extend(replies)

    @property
    def pending(self) -> int:
        """Scripted replies not served yet."""
        return len(self._replies)

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on a free 127.0.0.1 port; ``task_status.started`` gets the base URL.

        Cancellation: the listener and every open connection are closed.
        """
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.loglevel = "WARNING"
        config.graceful_timeout = 0

        fake = self

        class _Started:  # hypercorn reports its binds; callers want just the base URL
            def started(self, binds: list[str]) -> None:
                fake.url = binds[0]
                task_status.started(binds[0])

        await hypercorn_serve(
            self._asgi,
            config,
            mode="asgi",
            task_status=_Started(),  # type: ignore[arg-type]
        )

    # --- ASGI ---

    async def _asgi(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                return
            raw += event.get("body", b"")
            if not event.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        rec = RecordedRequest(scope["method"], scope["path"], headers, body, raw_body=raw)
        self.requests.append(rec)
        await self._respond(rec, receive, send)

    async def _respond(self, rec: RecordedRequest, receive: Any, send: Any) -> None:
        if rec.method != "POST" or rec.path != "/v1/messages":
            where = f"{rec.method} {rec.path}"
            return await self._send_error(send, error(404, "not_found_error", f"Not found: {where}"))
        if self.api_key is not None and _sent_key(rec.headers) != self.api_key:
            return await self._send_error(send, unauthorized())
        problem = validate_request(rec.body)
        if problem:
            return await self._send_error(send, bad_request(problem))
        betas = {b.strip() for b in rec.headers.get("anthropic-beta", "").split(",") if b.strip()}
        edited = edit(rec.body, betas, self.refuse_context_management)
        if isinstance(edited, str):
            return await self._send_error(send, bad_request(edited))
        rec.prompt_tokens = read = edited.tokens_read
        rec.applied_edits, rec.compacted = edited.applied, edited.compaction is not None
        if self.context_window is not None and read > self.context_window:
            too_long = f"prompt is too long: {read} tokens > {self.context_window} maximum"
            return await self._send_error(send, bad_request(too_long))
        reply = self.answer(rec) if self.answer is not None else None
        if reply is None:
            if not self._replies:
                return await self._send_error(send, error(500, "api_error", "fake: no scripted reply left"))
            reply = self._replies.popleft()
        if isinstance(reply, ErrorReply) and not reply.in_stream:
            return await self._send_error(send, reply)
        msg_id = f"msg_fake_{next(self._ids)}"
        if isinstance(reply, ErrorReply):
            start = message_json(msg_id, rec.body["model"], [], None, None, {"input_tokens": 1})
            events = [
                event("message_start", message=start),
                event("error", error={"type": reply.error_type, "message": reply.message}),
            ]
            return await self._send_sse(rec, receive, send, events)
        reply, usage, managed = self._edited_reply(reply, edited)
        rec.usage = usage
        model = reply.model or rec.body["model"]
        if not rec.body.get("stream"):
            body = message_json(msg_id, model, reply.content, reply.stop_reason, reply.stop_sequence, usage)
            return await self._send_json(send, 200, {**body, **managed}, {})
        events = list(sse_events(msg_id, model, reply, usage, managed, _chunks))
        if reply.cut_after_events is not None:
            events = events[: reply.cut_after_events]
        await self._send_sse(rec, receive, send, events, stall_after=reply.stall_after_events)

    def _edited_reply(
        self, reply: MessageReply, edited: Edited
    ) -> tuple[MessageReply, dict[str, Any], dict[str, Any]]:
        """The reply as sent (a compaction block first, if one was made), its usage (cache
        accounted on the edited prompt) and the ``context_management`` report, if asked for."""
        cached = self.prompt_cache.account(edited.body).as_usage() if self.prompt_cache else {}
        usage: dict[str, Any] = {
            "input_tokens": len(json.dumps(edited.body)) // 4,
            **cached,
            "output_tokens": len(json.dumps(reply.content)) // 4,
            **reply.usage,
        }
        if edited.compaction is not None:
            reply = dataclasses.replace(reply, content=[edited.compaction, *reply.content])
            usage["iterations"] = [edited.compaction_usage, {"type": "message", **usage}]
        managed = {"context_management": {"applied_edits": edited.applied}} if edited.managed else {}
        return reply, usage, managed

    def _request_id(self) -> tuple[bytes, bytes]:
        return b"request-id", f"req_fake_{next(self._ids)}".encode()

    async def _send_error(self, send: Any, reply: ErrorReply) -> None:
        body = {
            "type": "error",
            "error": {"type": reply.error_type, "message": reply.message},
            "request_id": f"req_fake_{next(self._ids)}",
        }
        await self._send_json(send, reply.status, body, reply.headers)

    async def _send_json(self, send: Any, status: int, body: dict, headers: dict) -> None:
        hdrs = [(b"content-type", b"application/json"), self._request_id()]
        hdrs += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    async def _send_sse(
        self,
        rec: RecordedRequest,
        receive: Any,
        send: Any,
        events: list[tuple[str, dict]],
        stall_after: int | None = None,
    ) -> None:
        hdrs = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": [*hdrs, self._request_id()]})
        for i, (name, data) in enumerate(events):
            if stall_after is not None and i == stall_after:
                break
            chunk = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if stall_after is not None:
            # Hold the response open; the only way out is the client hanging up.
            while (await receive())["type"] != "http.disconnect":
                pass
            rec.disconnected.set()
            return
        await send({"type": "http.response.body", "body": b""})


# The pieces a streamed text or tool input is cut into (``bench/model_turn_cpu.py`` swaps this).
def _chunks(s: str, n: int = 3) -> list[str]:
    """``s`` in up to ``n`` pieces, so clients must really accumulate deltas."""
    size = max(1, -(-len(s) // n))
    return [s[i : i + size] for i in range(0, len(s), size)] or [""]


def _sent_key(headers: dict[str, str]) -> str | None:
    # The API takes the key as x-api-key; SDK 2.x sends it as a bearer token instead.
    auth = headers.get("authorization", "")
    return headers.get("x-api-key") or (auth[7:] if auth.startswith("Bearer ") else None)
