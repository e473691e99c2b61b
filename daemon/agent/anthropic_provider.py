"""Claude through the ``anthropic`` SDK, streaming, under Trio.

The SDK's async client runs on anyio, so it works unchanged inside the daemon's Trio loop. It
makes the request (auth, base URL, headers, retries, status errors); the streamed body is parsed
by ``anthropic_stream``, which costs a fraction of the SDK's stream helper's CPU per turn. The
SDK retries short outages itself (``max_retries``); whatever is left over is mapped onto
agentd's two error classes, which is all the supervisor looks at:

- ``TransientError``: 429 (``retry_after`` from the ``retry-after`` header), 529 overloaded,
  other 5xx, 408/409, connection failures, timeouts, a stream that ends or errors midway;
- ``PermanentError``: every other 4xx (400, 401, 403, 404, 413, ...), with the API's own
  words, e.g. ``anthropic: 401 authentication_error: invalid x-api-key`` (``anthropic_errors``).
  Two of them the agent loop mends: ``PromptTooLong`` (it compacts) and, in mode "api",
  ``ContextManagementRefused``, a 400 refusing the context-management betas for a model, which
  is then sent none for the provider's life (one warning in the log; the loop clears itself).

The API key never appears in a message this module builds (it is redacted if the API were
ever to echo it) and is never logged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
from anthropic import Middleware

from daemon.agent.anthropic_errors import refuses_context_management, retry_after_of, status_error
from daemon.agent.anthropic_stream import (
    MessageAssembler,
    SSEDecoder,
    StreamBroken,
    StreamedMessage,
    StreamErrorEvent,
)
from daemon.agent.context_window import ContextManagementRefused, ContextPolicy, api_edits
from daemon.agent.model import (
    ModelReply,
    ModelRequest,
    Usage,
    cost_of,
    with_cache_breakpoints,
)
from daemon.agent.reply_gate import DEFAULT_SLOTS, ReplyGate, gated_http_clients
from daemon.errors import PermanentError, TransientError
from daemon.thirdparty.anthropic_sdk import post_unread, preset_platform

__all__ = ["DEFAULT_MODEL", "AnthropicProvider", "request_body"]

log = logging.getLogger(__name__)

# The current Sonnet: the speed / intelligence / price balance a coding agent wants.
DEFAULT_MODEL = "claude-sonnet-5-5"

# Connection pools (one SDK client each) and how many requests one carries before the next is
# used. A pool's bookkeeping walks all its connections, probing each idle one's socket, whenever a
# request starts or ends: O(connections) per request, so O(tasks²) CPU with hundreds of tasks on
# one pool (about 2 ms per model turn at 500 tasks, ``bench/agent_load.py``). Filling the first
# pool first keeps a small daemon on one pool, its connections kept alive and reused.
DEFAULT_POOLS = 16
POOL_REQUESTS = 32

# The betas of mode "api": tool-result clearing and compaction.
CONTEXT_BETAS = "context-management-2025-06-27,compact-2026-01-12"


class AnthropicProvider:
    """A ``ModelProvider`` backed by the Anthropic Messages API.

    ``timeout`` (seconds) bounds each network wait, including the silence between two chunks
    of the response stream (the API sends ``ping`` events while it thinks, so a long silence
    means a dead connection); connecting is bounded by at most 10 s.

    ``max_sdk_retry_wait``: the SDK sleeps for as long as a ``retry-after`` header says before
    its own retry. Longer waits than this are not left to the SDK but surface at once as a
    ``TransientError`` carrying ``retry_after``, so the supervisor can park the task and free
    its concurrency slot instead of holding it while asleep.

    ``pools``: how many SDK clients (each with its own HTTP connection pool) may share the
    requests, ``POOL_REQUESTS`` at a time each before the next pool is used (see
    ``DEFAULT_POOLS``). ``reply_slots``: how many tasks at a time may build a request or parse
    the replies that have arrived (``reply_gate``; 0: no gate). ``http_client``: one client of
    your own instead (a test transport, a proxy setup); it is the only pool then, and not gated.
    ``ssl_context``: the pools' TLS context (default: httpx's, with its CA store).
    """

    name = "anthropic"

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        model: str = DEFAULT_MODEL,
        max_retries: int = 2,
        timeout: float = 300.0,
        max_sdk_retry_wait: float = 30.0,
        pools: int = DEFAULT_POOLS,
        reply_slots: int = DEFAULT_SLOTS,
        http_client: httpx2.AsyncClient | None = None,
        ssl_context: Any = None,
        context: ContextPolicy | None = None,
    ) -> None:
        if not api_key:
            raise PermanentError("anthropic: no API key configured (set ANTHROPIC_API_KEY)")
        self.model = model
        self._api_key = api_key  # kept only to redact it from error messages
        # Mode "api": the API clears old tool results and compacts (its betas, on every request),
        # except for the models it refused them for (``_refused``, kept for the provider's life).
        api = context is not None and context.mode == "api"
        self._context = context if api else None
        self._edits: dict[str, dict[str, Any]] = {}  # per model: its window's thresholds
        self._refused: set[str] = set()
        self._gate = ReplyGate(reply_slots) if reply_slots and http_client is None else None
        if http_client is None:
            # One CA store for all pools, not one each.
            tls = ssl_context if ssl_context is not None else httpx2.create_ssl_context()
            http_clients = self._new_http_clients(tls, max(1, pools))
        else:
            http_clients = [http_client]
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            max_retries=max_retries,
            timeout=httpx2.Timeout(timeout, connect=min(timeout, 10.0)),
            middleware=[_LongWaitsToCaller(max_sdk_retry_wait)],
            http_client=http_clients[0],
        )
        # The same configuration (key, base URL, retries, timeout, middleware) on every pool;
        # in mode "api" each pool's client once more with the betas' header (same connections).
        self._clients = [self._client] + [self._client.with_options(http_client=c) for c in http_clients[1:]]
        betas = {"anthropic-beta": CONTEXT_BETAS}
        self._beta_clients = [c.with_options(default_headers=betas) for c in self._clients] if api else []
        self._in_flight = [0] * len(self._clients)
        # The SDK finds the platform for its headers at a client's first request, in a worker
        # thread from Trio's default limiter, which the daemon's file work shares: found here
        # (on the thread that builds the provider), that request waits for no thread with the
        # gate's slot held.
        preset_platform([*self._clients, *self._beta_clients])

    def _new_http_clients(self, tls: Any, count: int) -> list[httpx2.AsyncClient]:
        """Clients whose replies pass the gate; the SDK's own, and no gate, if the environment
        names a proxy (``gated_http_clients``): a gate no transport gives back would be held
        from a call's start to its end."""
        if self._gate is not None:
            gated = gated_http_clients(self._gate, count, ssl_context=tls)
            if gated is not None:
                return gated
            self._gate = None
        return [anthropic.DefaultAsyncHttpxClient(verify=tls) for _ in range(count)]

    def __repr__(self) -> str:
        return f"AnthropicProvider(model={self.model!r}, base_url={str(self._client.base_url)!r})"

    async def aclose(self) -> None:
        """Close the pooled HTTP connections."""
        for client in self._clients:
            await client.close()

    async def complete(
        self, request: ModelRequest, on_text_delta: Callable[[str], None] | None = None
    ) -> ModelReply:
        """Stream one assistant turn; ``on_text_delta`` gets each text delta as it arrives.

        Cancellation: the HTTP response stream is closed (its connection is dropped, which
        ends generation on Anthropic's side) and nothing is returned; tokens already generated
        may still be billed. The partial turn is lost, so the caller simply sends the same
        request again when it resumes.
        """
        model = request.model or self.model  # the task's model, if it names one
        managed = self._context_management(model) if model not in self._refused else None
        body = request_body(model, request, managed)
        try:
            message = await self._stream(body, on_text_delta, managed is not None)
        except anthropic.APIStatusError as err:
            error = self._status_error(err)
            if managed is not None and refuses_context_management(err):
                raise self._refused_for(model, error.message) from err
            raise error from err
        except anthropic.APIConnectionError as err:  # includes APITimeoutError
            raise TransientError(self._redact(f"anthropic: {_describe(err)}")) from err
        except (httpx2.TransportError, httpx2.DecodingError) as err:
            # Failures while reading the stream body are raised by httpx2 itself, unwrapped.
            raise TransientError(self._redact(f"anthropic: response stream broke: {_describe(err)}")) from err
        except StreamBroken as err:
            # E.g. the body ended without message_stop: a cut connection, not an answer.
            raise TransientError(self._redact(f"anthropic: {err}")) from err

        model = message.model or model
        u = message.usage
        # A compaction step's tokens are billed but left out of the totals: added here.
        steps = [
            u,
            *(i for i in u.get("iterations") or () if isinstance(i, dict) and i.get("type") == "compaction"),
        ]
        usage = Usage(
            input_tokens=sum(step.get("input_tokens") or 0 for step in steps),
            output_tokens=sum(step.get("output_tokens") or 0 for step in steps),
            cache_read_tokens=sum(step.get("cache_read_input_tokens") or 0 for step in steps),
            cache_write_tokens=sum(step.get("cache_creation_input_tokens") or 0 for step in steps),
        )
        usage = dataclasses.replace(usage, cost_usd=cost_of(model, usage))
        applied = (message.context_management or {}).get("applied_edits") or ()
        return ModelReply(
            content=message.content,
            stop_reason=message.stop_reason,
            usage=usage,
            model=model,
            cut_tool_use=message.cut_tool_use,
            context_edits=tuple(e for e in applied if isinstance(e, dict)),
        )

    def _context_management(self, model: str) -> dict[str, Any] | None:
        """Mode "api"'s edits for ``model``, with the thresholds of its window (None: not "api")."""
        if self._context is None:
            return None
        edits = self._edits.get(model)
        if edits is None:
            edits = self._edits[model] = api_edits(self._context.for_model(model))
        return edits

    def _refused_for(self, model: str, message: str) -> ContextManagementRefused:
        """Send ``model`` no context management any more (said once, in the log: requests already
        under way may be refused too), and say so."""
        if model in self._refused:
            return ContextManagementRefused(message, model)
        self._refused.add(model)
        log.warning(
            "the API refused context management for model %s (%s): agentd clears and compacts "
            "that model's conversations itself (the client path) from now on",
            model,
            message,
        )
        return ContextManagementRefused(message, model)

    async def _stream(
        self, body: bytes, on_text_delta: Callable[[str], None] | None, betas: bool = False
    ) -> StreamedMessage:
        """POST ``body`` (``stream: true``) through the SDK, and parse the SSE body ourselves.

        The SDK still makes the request: auth, base URL, headers, timeouts, its retries and
        the middleware, and its status errors for a non-2xx answer. It is handed the JSON
        already encoded (``client.post(content=...)``, what ``messages.create`` ends in) so
        that it does not walk and copy the whole conversation on every turn first. The body
        is read here, raw, by ``anthropic_stream`` rather than by the SDK's stream helper,
        which builds a pydantic object per event and re-accumulates a message snapshot at
        each. An ``error`` event becomes the ``APIStatusError`` the SDK would raise. What
        ``create`` does beyond this: an OpenTelemetry span (recorded only under an OpenTelemetry
        SDK, which agentd does not set up) and a warning for a deprecated model id.

        Cancellation: the response is closed on the way out, which drops the connection
        mid-body. ``betas``: with mode "api"'s beta header.
        """
        pool = self._pick_pool()
        self._in_flight[pool] += 1
        try:
            if self._gate is not None:  # building the request (the SDK, httpx) takes a slot
                await self._gate.acquire()
            clients = self._beta_clients if betas else self._clients
            return await self._stream_on(clients[pool], body, on_text_delta)
        finally:
            self._in_flight[pool] -= 1
            if self._gate is not None:  # whatever path the call took, its slot is free again
                self._gate.release()

    def _pick_pool(self) -> int:
        """The first pool with room, else the least busy one."""
        in_flight = self._in_flight
        for pool, n in enumerate(in_flight):
            if n < POOL_REQUESTS:
                return pool
        return in_flight.index(min(in_flight))

    async def _stream_on(
        self,
        client: anthropic.AsyncAnthropic,
        body: bytes,
        on_text_delta: Callable[[str], None] | None,
    ) -> StreamedMessage:
        http = await post_unread(client, "/v1/messages", body)
        try:
            decoder = SSEDecoder()
            assembler = MessageAssembler(on_text_delta)
            try:
                async for chunk in http.aiter_bytes():
                    for name, data in decoder.feed(chunk):
                        assembler.event(name, data)
                for name, data in decoder.close():
                    assembler.event(name, data)
            except StreamErrorEvent as err:
                raise anthropic.APIStatusError(str(err.body), response=http, body=err.body) from None
        finally:
            await http.aclose()
        return assembler.result()

    def _status_error(self, err: anthropic.APIStatusError) -> TransientError | PermanentError:
        return status_error(err, self._redact)

    def _redact(self, message: str) -> str:
        return message.replace(self._api_key, "[redacted]")


class _LongWaitsToCaller(Middleware):
    """Stops the SDK from retrying a response whose ``retry-after`` exceeds ``max_wait``.

    The SDK obeys an ``x-should-retry: false`` response header; setting it on such a response
    makes the SDK raise at once (see ``AnthropicProvider``, ``max_sdk_retry_wait``).
    """

    def __init__(self, max_wait: float) -> None:
        self.max_wait = max_wait

    async def handle_async(self, request: Any, call_next: Any) -> Any:
        response = await call_next(request)
        http = response.http_response
        wait = retry_after_of(http.headers) if not http.is_success else None
        if wait is not None and wait > self.max_wait:
            http.headers["x-should-retry"] = "false"
        return response


def request_body(
    model: str, request: ModelRequest, context_management: dict[str, Any] | None = None
) -> bytes:
    """The JSON of a streamed Messages API call for ``request``, with prompt-cache breakpoints.

    Byte for byte what ``messages.create(..., stream=True)`` sends for the same arguments
    (``beta.messages.create`` with ``context_management``): its keys in its order, encoded as
    the SDK's encoder does (compact, UTF-8, no NaN).
    """
    tools, system, messages = with_cache_breakpoints(request)
    params: dict[str, Any] = {"max_tokens": request.max_tokens, "messages": messages, "model": model}
    if context_management is not None:
        params["context_management"] = context_management
    params["stream"] = True
    if system:
        params["system"] = system
    if tools:
        params["tools"] = tools
    return _ENCODER.encode(params).encode()


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _describe(err: BaseException) -> str:
    if isinstance(err, (anthropic.APITimeoutError, httpx2.TimeoutException)):
        return "timed out"
    # The SDK's APIConnectionError says only "Connection error."; the httpx2 cause says why.
    cause: BaseException | None = err
    if isinstance(err, anthropic.APIConnectionError):
        cause = err.__cause__ or err.__context__
    if cause is None:
        return "connection error"
    name = type(cause).__name__
    return f"connection error ({name}: {cause})" if str(cause) else f"connection error ({name})"
