"""The lean SSE parser of the Messages API stream: alone, through the provider, and side by side
with the SDK's own stream helper (``SdkStreamProvider``, the previous implementation) on the same
bytes, which must give the same ``ModelReply``, the same text deltas and the same errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import httpx2
import pytest

from daemon.agent.anthropic_provider import AnthropicProvider
from daemon.agent.anthropic_stream import (
    MessageAssembler,
    SSEDecoder,
    StreamBroken,
    StreamErrorEvent,
)
from daemon.agent.model import ModelRequest
from daemon.errors import PermanentError, TransientError
from tests.anthropic_sdk_reference import SdkStreamProvider
from tests.fakes.anthropic_api import (
    FakeAnthropicAPI,
    message,
    overloaded,
    rate_limited,
    text,
    tool_use,
)

KEY = "sk-ant-test-stream-0123456789"
REQUEST = ModelRequest(
    system="You fix bugs.",
    tools=[{"name": "bash", "input_schema": {"type": "object"}}],
    messages=[{"role": "user", "content": "hi"}],
    max_tokens=1024,
)


# --- streams in the API's own shape --------------------------------------------------------------


def sse(*events: tuple[str, dict[str, Any]], eol: str = "\n") -> bytes:
    """Events as the API writes them: ``event:`` then ``data:``, a blank line after each."""
    out = "".join(f"event: {name}{eol}data: {json.dumps(data)}{eol}{eol}" for name, data in events)
    return out.encode()


def ev(name: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    return name, {"type": name, **fields}


def start(usage: dict[str, Any] | None = None, model: str = "claude-sonnet-4-5-20250929") -> tuple[str, dict]:
    return ev(
        "message_start",
        message={
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage
            or {
                "input_tokens": 25,
                "output_tokens": 1,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        },
    )


def block_start(i: int, block: dict[str, Any]) -> tuple[str, dict]:
    return ev("content_block_start", index=i, content_block=block)


def delta(i: int, **d: Any) -> tuple[str, dict]:
    return ev("content_block_delta", index=i, delta=d)


def stop(i: int) -> tuple[str, dict]:
    return ev("content_block_stop", index=i)


def end(stop_reason: str = "end_turn", usage: dict[str, Any] | None = None) -> list[tuple[str, dict]]:
    return [
        ev(
            "message_delta",
            delta={"stop_reason": stop_reason, "stop_sequence": None},
            usage=usage or {"output_tokens": 15},
        ),
        ev("message_stop"),
    ]


TEXT_ONLY = [
    start(),
    block_start(0, {"type": "text", "text": ""}),
    ev("ping"),
    delta(0, type="text_delta", text="Hello"),
    delta(0, type="text_delta", text="! Ça va? 🙂"),
    stop(0),
    *end(),
]

TOOL_USE = [
    start(),
    block_start(0, {"type": "text", "text": ""}),
    delta(0, type="text_delta", text="Okay, let's check the weather for San Francisco, CA:"),
    stop(0),
    block_start(
        1, {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "input": {}}
    ),
    delta(1, type="input_json_delta", partial_json=""),
    delta(1, type="input_json_delta", partial_json='{"location":'),
    delta(1, type="input_json_delta", partial_json=' "San Fra'),
    delta(1, type="input_json_delta", partial_json='ncisco, CA", "unit": "fah'),
    delta(1, type="input_json_delta", partial_json='renheit", "days": [1, 2.5], "raw": null}'),
    stop(1),
    *end("tool_use", {"output_tokens": 89}),
]

# A tool_use whose input is empty: no input_json_delta with content, so the input stays {}.
EMPTY_TOOL_INPUT = [
    start(),
    block_start(0, {"type": "tool_use", "id": "toolu_02", "name": "list_files", "input": {}}),
    delta(0, type="input_json_delta", partial_json=""),
    stop(0),
    *end("tool_use"),
]

THINKING = [
    start(),
    block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
    delta(0, type="thinking_delta", thinking="I need to find the GCD of 1071 and 462 "),
    delta(0, type="thinking_delta", thinking="using the Euclidean algorithm."),
    delta(0, type="signature_delta", signature="EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"),
    stop(0),
    block_start(1, {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"}),
    stop(1),
    block_start(2, {"type": "text", "text": ""}),
    delta(2, type="text_delta", text="The greatest common divisor of 1071 and 462 is **21**."),
    stop(2),
    *end(),
]

SERVER_TOOLS = [
    start(
        {
            "input_tokens": 2679,
            "output_tokens": 3,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
    ),
    block_start(0, {"type": "text", "text": ""}),
    delta(0, type="text_delta", text="I'll check the current weather in New York City for you."),
    stop(0),
    block_start(
        1,
        {
            "id": "srvtoolu_014hJH82Qum7Td6UV8gDXThB",
            "type": "server_tool_use",
            "name": "web_search",
            "input": {},
        },
    ),
    delta(1, type="input_json_delta", partial_json=""),
    delta(1, type="input_json_delta", partial_json='{"query'),
    delta(1, type="input_json_delta", partial_json='": "weather NYC today"}'),
    stop(1),
    block_start(
        2,
        {
            "type": "web_search_tool_result",
            "tool_use_id": "srvtoolu_014hJH82Qum7Td6UV8gDXThB",
            "content": [
                {
                    "type": "web_search_result",
                    "title": "Weather in New York City",
                    "url": "https://www.weather.com/nyc",
                    "encrypted_content": "Ev0DCioIAxgCIiQ3",
                    "page_age": "January 29, 2026",
                }
            ],
        },
    ),
    stop(2),
    block_start(3, {"type": "text", "text": "", "citations": None}),
    delta(
        3,
        type="citations_delta",
        citation={
            "type": "web_search_result_location",
            "cited_text": "Partly cloudy, high of 41",
            "url": "https://www.weather.com/nyc",
            "title": "Weather in New York City",
            "encrypted_index": "Eo8BCioIAhgBIiQy",
        },
    ),
    delta(3, type="text_delta", text="It is partly cloudy with a high of 41°F."),
    delta(
        3,
        type="citations_delta",
        citation={
            "type": "web_search_result_location",
            "cited_text": "Winds from the northwest",
            "url": "https://www.weather.com/nyc",
            "title": "Weather in New York City",
            "encrypted_index": "Eo8BCioIAhgBIiQz",
        },
    ),
    stop(3),
    *end(
        "end_turn",
        {
            "input_tokens": 10682,
            "output_tokens": 510,
            "cache_creation_input_tokens": 512,
            "cache_read_input_tokens": 2048,
            "server_tool_use": {"web_search_requests": 1},
        },
    ),
]

PAUSED = [
    start(),
    block_start(0, {"type": "text", "text": ""}),
    delta(0, type="text_delta", text="Searching"),
    stop(0),
    *end("pause_turn"),
]

RECORDED = {
    "text": TEXT_ONLY,
    "tool_use": TOOL_USE,
    "empty_tool_input": EMPTY_TOOL_INPUT,
    "thinking": THINKING,
    "server_tools": SERVER_TOOLS,
    "pause_turn": PAUSED,
}


# --- the decoder alone ---------------------------------------------------------------------------


def decode(body: bytes, size: int) -> list[tuple[str | None, bytes]]:
    decoder = SSEDecoder()
    events = []
    for i in range(0, len(body), size):
        events += decoder.feed(body[i : i + size])
    return events + decoder.close()


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_the_decoder_gives_the_same_events_however_the_bytes_are_cut(eol):
    body = sse(*TOOL_USE, eol=eol)
    whole = decode(body, len(body))
    assert [name for name, _ in whole] == [name for name, _ in TOOL_USE]
    assert [json.loads(data) for _, data in whole] == [data for _, data in TOOL_USE]
    for size in (1, 2, 3, 7, 64):
        assert decode(body, size) == whole


def test_the_decoder_follows_the_event_stream_rules():
    body = (
        b": a comment\n"
        b'id: 7\nretry: 1000\nevent: one\ndata: {"a":\ndata:1}\n\n'  # data lines joined by LF
        b"event: no-data\n\n"  # no data: not dispatched
        b'data:{"b": 2}\n\n'  # no space after the colon; no name
        b"unknown: field\nevent: last\ndata: {}"
    )  # body ends mid-event: dropped
    assert decode(body, 5) == [("one", b'{"a":\n1}'), (None, b'{"b": 2}')]


# --- the assembler alone -------------------------------------------------------------------------


def assemble(events: list[tuple[str, dict]], deltas: list[str] | None = None):
    assembler = MessageAssembler(deltas.append if deltas is not None else None)
    for name, data in decode(sse(*events), 11):
        assembler.event(name, data)
    return assembler.result()


def test_text_blocks_are_joined_and_each_text_delta_is_passed_on():
    deltas: list[str] = []
    message = assemble(TEXT_ONLY, deltas)
    assert message.content == [{"type": "text", "text": "Hello! Ça va? 🙂"}]
    assert deltas == ["Hello", "! Ça va? 🙂"]
    assert (message.stop_reason, message.model) == ("end_turn", "claude-sonnet-4-5-20250929")


def test_tool_input_is_parsed_once_from_its_json_pieces():
    deltas: list[str] = []
    message = assemble(TOOL_USE, deltas)
    assert message.content[1] == {
        "type": "tool_use",
        "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
        "name": "get_weather",
        "input": {"location": "San Francisco, CA", "unit": "fahrenheit", "days": [1, 2.5], "raw": None},
    }
    assert deltas == ["Okay, let's check the weather for San Francisco, CA:"]  # no JSON as text
    assert message.stop_reason == "tool_use"
    assert assemble(EMPTY_TOOL_INPUT).content == [
        {"type": "tool_use", "id": "toolu_02", "name": "list_files", "input": {}}
    ]


def test_thinking_keeps_its_signature_and_is_not_passed_on_as_text():
    deltas: list[str] = []
    message = assemble(THINKING, deltas)
    assert message.content == [
        {
            "type": "thinking",
            "thinking": "I need to find the GCD of 1071 and 462 using the Euclidean algorithm.",
            "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds",
        },
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
        {"type": "text", "text": "The greatest common divisor of 1071 and 462 is **21**."},
    ]
    assert deltas == ["The greatest common divisor of 1071 and 462 is **21**."]


def test_server_tool_blocks_pass_through_and_citations_accumulate():
    message = assemble(SERVER_TOOLS)
    use, result, cited = message.content[1:]
    assert use["input"] == {"query": "weather NYC today"}
    assert result == SERVER_TOOLS[9][1]["content_block"]  # arrived whole, kept whole
    assert cited["text"] == "It is partly cloudy with a high of 41°F."
    assert [c["cited_text"] for c in cited["citations"]] == [
        "Partly cloudy, high of 41",
        "Winds from the northwest",
    ]


def test_usage_in_message_delta_replaces_what_message_start_said_and_keeps_the_rest():
    usage = assemble(SERVER_TOOLS).usage
    assert (usage["input_tokens"], usage["output_tokens"]) == (10682, 510)
    assert (usage["cache_creation_input_tokens"], usage["cache_read_input_tokens"]) == (512, 2048)
    # A delta with only output_tokens leaves the start's input and cache counts alone.
    usage = assemble(TEXT_ONLY).usage
    assert usage == {
        "input_tokens": 25,
        "output_tokens": 15,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def test_unknown_events_deltas_and_blocks_are_ignored_or_passed_through():
    events = [
        start(),
        ev("message_annotation", note="from a newer API"),
        block_start(0, {"type": "text", "text": ""}),
        delta(0, type="text_delta", text="Hi"),
        delta(0, type="sparkle_delta", sparkle="*"),
        stop(0),
        block_start(1, {"type": "hologram", "payload": {"x": 1}, "extra": None}),
        stop(1),
        *end(),
    ]
    assert assemble(events).content == [
        {"type": "text", "text": "Hi"},
        {"type": "hologram", "payload": {"x": 1}},
    ]


def test_an_error_event_is_raised_with_its_body():
    assembler = MessageAssembler()
    assembler.event("message_start", json.dumps(start()[1]).encode())
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(StreamErrorEvent) as caught:
        assembler.event("error", json.dumps(body).encode())
    assert caught.value.body == body
    with pytest.raises(StreamErrorEvent) as caught:
        MessageAssembler().event("error", b"not json")
    assert caught.value.body == "not json"


@pytest.mark.parametrize(
    ("events", "says"),
    [
        ([block_start(0, {"type": "text", "text": ""})], "content_block_start event before message_start"),
        ([start(), start()], "a second message_start"),
        (
            [start(), delta(0, type="text_delta", text="x")],
            "a delta for content block 0, which was never started",
        ),
        ([start(), block_start(1, {"type": "text", "text": ""})], "content block 1 started after 0 blocks"),
        ([start(), ev("content_block_start", index=0)], "without the fields it needs (KeyError"),
        (
            [
                start(),
                block_start(0, {"type": "tool_use", "id": "t", "name": "n", "input": {}}),
                delta(0, type="input_json_delta", partial_json='{"a": '),
                stop(0),
                *end("tool_use"),  # cut short without max_tokens to explain it
            ],
            "the input of tool_use block 't' is not JSON",
        ),
    ],
)
def test_a_malformed_stream_is_refused_with_what_was_wrong(events, says):
    with pytest.raises(StreamBroken, match="the response stream is malformed: .*" + _re(says)):
        assemble(events)


@pytest.mark.parametrize("data", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_event_data_that_is_not_a_json_object_is_malformed(data):
    assembler = MessageAssembler()
    with pytest.raises(StreamBroken, match="malformed: a message_start event whose data is not"):
        assembler.event("message_start", data)


@pytest.mark.parametrize("cut", [0, 1, 3, len(TOOL_USE) - 2, len(TOOL_USE) - 1])
def test_a_stream_that_ends_before_message_stop_is_incomplete(cut):
    with pytest.raises(StreamBroken, match="ended before the message was complete"):
        assemble(TOOL_USE[:cut])


def _re(s: str) -> str:
    import re

    return re.escape(s)


# --- both implementations on the same bytes ------------------------------------------------------


async def _chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


def over(
    body: bytes, *, size: int = 13, status: int = 200, headers: dict[str, str] | None = None
) -> Callable[[type[AnthropicProvider]], AnthropicProvider]:
    """A provider factory whose HTTP client answers every request with ``body`` in ``size`` chunks."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        hdrs = {"content-type": "text/event-stream", "request-id": "req_1", **(headers or {})}
        return httpx2.Response(status, headers=hdrs, content=_chunks(body, size))

    def make(cls: type[AnthropicProvider]) -> AnthropicProvider:
        client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
        return cls(KEY, base_url="http://api.test", max_retries=0, http_client=client)

    return make


async def both(make: Callable[[type[AnthropicProvider]], AnthropicProvider]) -> list[Any]:
    """(reply or exception, text deltas) from the lean provider, then from the SDK's stream."""
    outcomes = []
    for cls in (AnthropicProvider, SdkStreamProvider):
        provider = make(cls)
        deltas: list[str] = []
        try:
            outcome: Any = await provider.complete(REQUEST, on_text_delta=deltas.append)
        except (TransientError, PermanentError) as err:
            outcome = (type(err), err.message, err.retry_after if isinstance(err, TransientError) else None)
        finally:
            await provider.aclose()
        outcomes.append((outcome, deltas))
    return outcomes


@pytest.mark.parametrize("name", sorted(RECORDED))
@pytest.mark.parametrize("eol", ["\n", "\r\n"])
async def test_recorded_streams_give_the_same_reply_as_the_sdk_stream(name, eol):
    lean, sdk = await both(over(sse(*RECORDED[name], eol=eol), size=7))
    assert lean == sdk
    assert not isinstance(lean[0], tuple), lean  # a reply, not an error


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        (
            [start(), ev("error", error={"type": "overloaded_error", "message": "Overloaded"})],
            (TransientError, "anthropic: overloaded_error during the response stream: Overloaded", None),
        ),
        (
            [start(), ev("error", error={"type": "invalid_request_error", "message": "prompt too long"})],
            (
                PermanentError,
                "anthropic: invalid_request_error during the response stream: prompt too long",
                None,
            ),
        ),
        (
            TEXT_ONLY[:-2],
            (TransientError, "anthropic: the response stream ended before the message was complete", None),
        ),
    ],
)
async def test_stream_errors_map_the_same_as_with_the_sdk_stream(events, expected):
    lean, sdk = await both(over(sse(*events)))
    assert lean == sdk
    assert lean[0] == expected


async def test_http_errors_map_the_same_as_with_the_sdk_stream():
    body = json.dumps(
        {"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"}}
    ).encode()
    lean, sdk = await both(
        over(body, status=429, headers={"content-type": "application/json", "retry-after": "7"})
    )
    assert lean == sdk == ((TransientError, "anthropic: 429 rate_limit_error: Slow down", 7.0), [])


@pytest.mark.parametrize(
    "body",
    [
        b"event: message_start\ndata: {nope\n\n",
        sse(ev("content_block_start", index=0, content_block={"type": "text"})),
    ],
)
async def test_a_malformed_stream_is_transient_through_the_provider(body):
    provider = over(body)(AnthropicProvider)
    try:
        with pytest.raises(TransientError, match=r"^anthropic: the response stream is malformed: "):
            await provider.complete(REQUEST)
    finally:
        await provider.aclose()


FAKE_REPLIES = {
    "tool_session": message(
        "Let me run the tests.", tool_use("toolu_01", "bash", {"command": "pytest -q", "restart": False})
    ),
    "nested_input": message(
        tool_use(
            "toolu_02",
            "str_replace_based_edit_tool",
            {
                "command": "create",
                "path": "a b/ü.py",
                "file_text": 'print("hi")\n\t"quoted"\n' * 20,
                "opts": {"n": [1, 2.5, None, True], "s": ""},
            },
        )
    ),
    "empty_input": message(tool_use("toolu_03", "bash", {})),
    "unicode_text": message("Ça marche — 完成 🙂 " * 10),
    "thinking": message({"type": "thinking", "thinking": "Off by one?", "signature": "c2ln"}, "It is."),
    "redacted": message({"type": "redacted_thinking", "data": "EmwKAhgB"}, "Done."),
    "server_tool": message(
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "trio"}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
        "Found it.",
    ),
    "cache_usage": message(
        "ok",
        model="claude-haiku-4-5",
        usage={
            "input_tokens": 1000,
            "output_tokens": 500,
            "cache_creation_input_tokens": 2000,
            "cache_read_input_tokens": 10000,
        },
    ),
    "max_tokens": message("partial", stop_reason="max_tokens"),
    "stop_sequence": message("until", stop_reason="stop_sequence", stop_sequence="###"),
    "refusal": message("no", stop_reason="refusal"),
}


@pytest.mark.parametrize("name", sorted(FAKE_REPLIES))
async def test_the_fake_servers_streams_give_the_same_reply_as_the_sdk_stream(nursery, name):
    fake = FakeAnthropicAPI()
    url = await nursery.start(fake.serve)
    outcomes = []
    for cls in (AnthropicProvider, SdkStreamProvider):
        fake.push(FAKE_REPLIES[name])
        provider = cls(KEY, base_url=url, max_retries=0)
        deltas: list[str] = []
        try:
            outcomes.append((await provider.complete(REQUEST, on_text_delta=deltas.append), deltas))
        finally:
            await provider.aclose()
    assert outcomes[0] == outcomes[1]
    reply = outcomes[0][0]
    assert reply.content == [text(b) if isinstance(b, str) else b for b in FAKE_REPLIES[name].content]
    # The same request went out both times (same body; headers but for the SDK helper's own).
    first, second = fake.requests
    assert first.body == second.body and first.body["stream"] is True
    helper = {"x-stainless-helper-method", "x-stainless-stream-helper", "x-stainless-raw-response"}
    varying = {
        "x-stainless-retry-count",
        "idempotency-key",
        "x-stainless-read-timeout",
        "x-stainless-timeout",
    }
    assert {k: v for k, v in first.headers.items() if k not in varying | helper} == {
        k: v for k, v in second.headers.items() if k not in varying | helper
    }


@pytest.mark.parametrize(
    "reply",
    [
        overloaded(in_stream=True),
        overloaded(),
        rate_limited(retry_after=3),
        message("Half a thought", cut_after_events=4),
    ],
)
async def test_the_fake_servers_errors_map_the_same_as_with_the_sdk_stream(nursery, reply):
    fake = FakeAnthropicAPI()
    url = await nursery.start(fake.serve)
    messages = []
    for cls in (AnthropicProvider, SdkStreamProvider):
        fake.push(reply)
        provider = cls(KEY, base_url=url, max_retries=0)
        try:
            with pytest.raises(TransientError) as caught:
                await provider.complete(REQUEST)
        finally:
            await provider.aclose()
        messages.append((caught.value.message, caught.value.retry_after))
    assert messages[0] == messages[1]


async def test_the_lean_provider_still_uses_the_sdk_client_and_its_errors(nursery):
    """Auth, base URL and the SDK's typed status error underneath the mapped one."""
    fake = FakeAnthropicAPI(api_key="sk-ant-other")
    url = await nursery.start(fake.serve)
    provider = AnthropicProvider(KEY, base_url=url, max_retries=0)
    try:
        with pytest.raises(PermanentError) as caught:
            await provider.complete(REQUEST)
    finally:
        await provider.aclose()
    assert isinstance(caught.value.__cause__, anthropic.AuthenticationError)
    assert fake.requests[0].path == "/v1/messages"
    assert KEY not in caught.value.message


async def test_requests_fill_the_first_connection_pool_before_using_the_next(monkeypatch):
    import daemon.agent.anthropic_provider as module

    monkeypatch.setattr(module, "POOL_REQUESTS", 2)
    provider = AnthropicProvider(KEY, base_url="http://api.test", pools=3)
    try:
        assert len(provider._clients) == 3
        picks = []
        for _ in range(7):  # requests that stay in flight
            pool = provider._pick_pool()
            provider._in_flight[pool] += 1
            picks.append(pool)
        assert picks == [0, 0, 1, 1, 2, 2, 0]  # then the least busy
        provider._in_flight[:] = [0, 0, 0]
        assert provider._pick_pool() == 0  # a small daemon stays on one pool, its connections reused
    finally:
        await provider.aclose()
