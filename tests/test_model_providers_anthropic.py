"""AnthropicProvider through the real SDK against the fake Messages API on 127.0.0.1."""

from __future__ import annotations

import copy

import anthropic
import pytest
import trio

from daemon.agent.anthropic_provider import DEFAULT_MODEL, AnthropicProvider
from daemon.agent.model import ModelRequest, Usage
from daemon.errors import PermanentError, TransientError
from tests.fakes.anthropic_api import (
    FakeAnthropicAPI,
    bad_request,
    error,
    message,
    overloaded,
    rate_limited,
    server_error,
    text,
    tool_use,
    unauthorized,
)

KEY = "sk-ant-test-0123456789-secret"
BASH = {
    "name": "bash",
    "description": "Run a command",
    "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
}
EDIT = {
    "name": "str_replace_based_edit_tool",
    "description": "Edit files",
    "input_schema": {"type": "object"},
}


@pytest.fixture
async def api(nursery):
    fake = FakeAnthropicAPI()
    await nursery.start(fake.serve)
    return fake


@pytest.fixture
async def make_provider(api):
    made: list[AnthropicProvider] = []

    def make(**kw) -> AnthropicProvider:
        kw.setdefault("api_key", KEY)
        kw.setdefault("base_url", api.url)
        made.append(AnthropicProvider(**kw))
        return made[-1]

    yield make
    for p in made:
        await p.aclose()


def ask(messages: list[dict] | str, *, system: str = "You fix bugs.", tools=(BASH, EDIT)) -> ModelRequest:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return ModelRequest(system=system, tools=list(tools), messages=messages, max_tokens=1024)


async def test_a_tool_session_round_trips_through_the_sdk(api, make_provider):
    api.push(
        message(
            "Let me run the tests.", tool_use("toolu_01", "bash", {"command": "pytest -q", "restart": False})
        ),
        message("All green now."),
    )
    provider = make_provider()
    history = [{"role": "user", "content": "Fix the failing test."}]

    first = await provider.complete(ask(history))
    assert first.stop_reason == "tool_use"
    assert first.content == [
        {"type": "text", "text": "Let me run the tests."},
        {
            "type": "tool_use",
            "id": "toolu_01",
            "name": "bash",
            "input": {"command": "pytest -q", "restart": False},
        },
    ]

    history += [
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "1 passed"}],
        },
    ]
    second = await provider.complete(ask(history))
    assert (second.stop_reason, second.content) == ("end_turn", [{"type": "text", "text": "All green now."}])

    sent = api.requests[1].body
    assert sent["model"] == DEFAULT_MODEL and sent["stream"] is True and sent["max_tokens"] == 1024
    # The assistant turn went back verbatim; the tool_result rode in a user turn.
    assert sent["messages"][1] == {"role": "assistant", "content": first.content}
    assert sent["messages"][2]["role"] == "user"
    assert sent["messages"][2]["content"][0]["tool_use_id"] == "toolu_01"
    assert api.pending == 0


async def test_text_deltas_arrive_in_order_and_add_up_to_the_text(api, make_provider):
    api.push(
        message("The bug is an off-by-one in range(len(xs)).", tool_use("toolu_1", "bash", {"command": "ls"}))
    )
    deltas: list[str] = []
    reply = await make_provider().complete(ask("hi"), on_text_delta=deltas.append)
    assert len(deltas) > 1
    assert "".join(deltas) == reply.content[0]["text"] == "The bug is an off-by-one in range(len(xs))."


async def test_the_server_sees_three_cache_breakpoints_in_the_right_places(api, make_provider):
    api.push(message("ok"))
    history = [
        {"role": "user", "content": "Fix it."},
        {"role": "assistant", "content": [text("Looking."), tool_use("toolu_1", "bash", {"command": "ls"})]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.py"},
                {"type": "text", "text": "Also check b.py"},
            ],
        },
    ]
    request = ask(history)
    before = copy.deepcopy(request)
    await make_provider().complete(request)

    body = api.requests[0].body
    eph = {"type": "ephemeral"}
    assert body["system"] == [{"type": "text", "text": "You fix bugs.", "cache_control": eph}]
    assert [t.get("cache_control") for t in body["tools"]] == [None, eph]
    last = body["messages"][-1]["content"]
    assert [b.get("cache_control") for b in last] == [None, eph]
    assert "cache_control" not in str(body["messages"][:-1])
    assert request == before  # the caller's request was not touched


async def test_usage_and_cost_include_the_cache_tokens(api, make_provider):
    api.push(
        message(
            "ok",
            model="claude-sonnet-4-5-20250929",
            usage={
                "input_tokens": 1000,
                "output_tokens": 500,
                "cache_creation_input_tokens": 2000,
                "cache_read_input_tokens": 10000,
            },
        )
    )
    reply = await make_provider().complete(ask("hi"))
    # Priced as the model that answered, not the alias that was asked for.
    assert reply.model == "claude-sonnet-4-5-20250929"
    # $3/M in, $15/M out, writes 1.25x in, reads 0.1x in
    expected = (1000 * 3 + 500 * 15 + 2000 * 3.75 + 10000 * 0.3) / 1e6
    assert reply.usage == Usage(
        1000, 500, cache_read_tokens=10000, cache_write_tokens=2000, cost_usd=pytest.approx(expected)
    )


@pytest.mark.parametrize("stop_reason", ["max_tokens", "pause_turn", "refusal", "stop_sequence"])
async def test_other_stop_reasons_are_passed_through(api, make_provider, stop_reason):
    api.push(message("partial", stop_reason=stop_reason))
    reply = await make_provider().complete(ask("hi"))
    assert reply.stop_reason == stop_reason


async def test_a_429_becomes_transient_with_retry_after_once_retries_are_spent(api, make_provider):
    api.push(rate_limited(retry_after=7))
    with pytest.raises(TransientError) as caught:
        await make_provider(max_retries=0).complete(ask("hi"))
    assert caught.value.retry_after == 7
    assert caught.value.message.startswith("anthropic: 429 rate_limit_error: Number of request tokens")
    assert len(api.requests) == 1


@pytest.mark.parametrize(
    "first", [rate_limited(retry_after=0.01), overloaded(headers={"retry-after": "0.01"})]
)
async def test_the_sdk_retries_one_429_or_529_itself(api, make_provider, first):
    api.push(first, message("recovered"))
    reply = await make_provider(max_retries=2).complete(ask("hi"))
    assert reply.content == [text("recovered")]
    assert [r.headers["x-stainless-retry-count"] for r in api.requests] == ["0", "1"]


async def test_a_long_retry_after_is_left_to_the_supervisor_not_slept_in_the_sdk(api, make_provider):
    api.push(rate_limited(retry_after=120), message("never served"))
    with pytest.raises(TransientError) as caught:
        with trio.fail_after(10):
            await make_provider(max_retries=2, max_sdk_retry_wait=30).complete(ask("hi"))
    assert caught.value.retry_after == 120
    assert len(api.requests) == 1


async def test_a_401_is_permanent_with_the_api_message_and_no_key(api, make_provider):
    api.api_key = "sk-ant-the-right-key"
    with pytest.raises(PermanentError) as caught:
        await make_provider(max_retries=2).complete(ask("hi"))
    err = caught.value
    assert err.message == "anthropic: 401 authentication_error: invalid x-api-key"
    assert KEY not in str(err) and KEY not in repr(err) and KEY not in str(err.__cause__)
    assert len(api.requests) == 1  # 4xx are not retried


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            bad_request("max_tokens: must be at most 64000"),
            "anthropic: 400 invalid_request_error: max_tokens: must be at most 64000",
        ),
        (
            error(403, "permission_error", "Your API key does not have permission"),
            "anthropic: 403 permission_error: Your API key does not have permission",
        ),
        (
            error(404, "not_found_error", "model: claude-nope"),
            "anthropic: 404 not_found_error: model: claude-nope",
        ),
        (unauthorized(), "anthropic: 401 authentication_error: invalid x-api-key"),
    ],
)
async def test_client_errors_are_permanent(api, make_provider, reply, expected):
    api.push(reply)
    with pytest.raises(PermanentError) as caught:
        await make_provider().complete(ask("hi"))
    assert not isinstance(caught.value, TransientError)
    assert caught.value.message == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (overloaded(), "anthropic: 529 overloaded_error: Overloaded"),
        (server_error(), "anthropic: 500 api_error: Internal server error"),
        (overloaded(in_stream=True), "anthropic: overloaded_error during the response stream: Overloaded"),
    ],
)
async def test_overload_and_server_errors_are_transient(api, make_provider, reply, expected):
    api.push(reply)
    with pytest.raises(TransientError) as caught:
        await make_provider(max_retries=0).complete(ask("hi"))
    assert caught.value.message == expected
    assert caught.value.retry_after is None


async def test_a_stream_cut_short_is_transient(api, make_provider):
    api.push(message("Half a thought", cut_after_events=4))
    with pytest.raises(TransientError, match="ended before the message was complete"):
        await make_provider(max_retries=0).complete(ask("hi"))


async def test_a_silent_stream_times_out_as_transient(api, make_provider):
    api.push(message("Hello there", stall_after_events=3))
    with pytest.raises(TransientError, match="timed out"):
        await make_provider(max_retries=0, timeout=0.2).complete(ask("hi"))


async def test_an_unreachable_server_is_transient():
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there any more
    provider = AnthropicProvider(api_key=KEY, base_url=f"http://127.0.0.1:{port}", max_retries=0)
    try:
        with pytest.raises(TransientError, match="connection error") as caught:
            await provider.complete(ask("hi"))
        assert KEY not in str(caught.value)
    finally:
        await provider.aclose()


async def test_cancelling_a_call_closes_the_http_stream(api, make_provider):
    api.push(message("Thinking about it", stall_after_events=4))
    provider = make_provider()
    with trio.CancelScope() as scope:
        # The first text delta proves the stream is open; cancel right there.
        await provider.complete(ask("hi"), on_text_delta=lambda _: scope.cancel())
    assert scope.cancelled_caught
    with trio.fail_after(5):
        await api.requests[0].disconnected.wait()


async def test_an_empty_api_key_is_refused_up_front():
    with pytest.raises(PermanentError, match="ANTHROPIC_API_KEY"):
        AnthropicProvider(api_key="")


async def test_thinking_blocks_come_back_whole_and_are_not_streamed_as_text(api, make_provider):
    api.push(message({"type": "thinking", "thinking": "Off by one?", "signature": "c2ln"}, "It is."))
    deltas: list[str] = []
    reply = await make_provider().complete(ask("hi"), on_text_delta=deltas.append)
    assert reply.content == [
        {"type": "thinking", "thinking": "Off by one?", "signature": "c2ln"},
        text("It is."),
    ]
    assert "".join(deltas) == "It is."


async def test_the_fake_refuses_a_conversation_the_real_api_would_refuse(api, make_provider):
    api.push(message("unused"))
    history = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [tool_use("toolu_9", "bash", {"command": "ls"})]},
        {"role": "user", "content": "forgot the tool_result"},
    ]
    with pytest.raises(
        PermanentError,
        match="400 invalid_request_error: messages.2: tool_use ids were found without tool_result",
    ):
        await make_provider().complete(ask(history))
    assert api.pending == 1  # the scripted reply is still there for the next, valid request


async def test_the_fake_answers_non_streaming_requests_with_json(api):
    api.push(message("plain JSON", usage={"input_tokens": 3}))
    async with anthropic.AsyncAnthropic(api_key=KEY, base_url=api.url, max_retries=0) as client:
        reply = await client.messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert (reply.content[0].text, reply.stop_reason, reply.usage.input_tokens) == (
        "plain JSON",
        "end_turn",
        3,
    )
    assert "stream" not in api.requests[0].body
