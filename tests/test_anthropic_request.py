"""The request ``AnthropicProvider`` sends is the one ``messages.create(stream=True)`` sent.

The provider hands the SDK its JSON already encoded (``client.post(content=...)``) instead of
the parameters ``messages.create`` would walk and copy; the fake Messages API records what
arrives, so both can be compared byte for byte: body, path and headers.
"""

from __future__ import annotations

import pytest

from daemon.agent.anthropic_provider import AnthropicProvider, request_body
from daemon.agent.model import ModelRequest
from daemon.agent.tools import tool_definitions
from tests.anthropic_sdk_reference import complete_then_sdk_create
from tests.fakes.anthropic_api import (
    FakeAnthropicAPI,
    message,
    overloaded,
    text,
    tool_use,
)

KEY = "sk-ant-test-0123456789-secret"


@pytest.fixture
async def api(nursery):
    fake = FakeAnthropicAPI()
    await nursery.start(fake.serve)
    return fake


def conversation() -> ModelRequest:
    """Every kind of block the loop sends, non-ASCII text, and a breakpoint already placed."""
    messages = [
        {"role": "user", "content": [{"type": "text", "text": 'Réparez le test ✓ — "quoted"\n\ttab'}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Je regarde."},
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "bash",
                    "input": {"command": "ls -la", "n": 1.5},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01",
                    "content": "a.py\nb.py\n",
                    "is_error": False,
                },
                {"type": "text", "text": "older note", "cache_control": {"type": "ephemeral"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_02",
                    "name": "str_replace_based_edit_tool",
                    "input": {"command": "view", "path": "a.py", "view_range": [1, -1]},
                },
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_02", "content": "x = 1\n"}],
        },
    ]
    return ModelRequest(
        system="You fix bugs in /tmp/ws (branch agentd/x).",
        tools=tool_definitions(),
        messages=messages,
        max_tokens=8192,
    )


async def test_body_and_headers_are_those_of_messages_create(api):
    api.push(message(text("first")), message(text("second")))
    provider = AnthropicProvider(KEY, base_url=api.url, max_retries=0, pools=1)
    request = conversation()
    # What the provider sent before: the SDK's own `create` with the same parameters.
    await complete_then_sdk_create(provider, request)

    ours, sdks = api.requests
    assert (ours.method, ours.path) == (sdks.method, sdks.path) == ("POST", "/v1/messages")
    assert ours.raw_body == sdks.raw_body
    assert ours.raw_body == request_body(provider.model, request)
    assert ours.headers == sdks.headers
    assert ours.headers["content-type"] == "application/json"
    assert ours.headers["x-stainless-raw-response"] == "stream"


def test_request_body_keeps_the_sdks_key_order_and_leaves_out_what_is_empty():
    body = request_body(
        "claude-x",
        ModelRequest(system="", tools=[], max_tokens=5, messages=[{"role": "user", "content": "hi"}]),
    )
    assert body == (
        b'{"max_tokens":5,"messages":[{"role":"user","content":[{"type":"text","text":"hi",'
        b'"cache_control":{"type":"ephemeral"}}]}],"model":"claude-x","stream":true}'
    )


def test_request_body_refuses_what_json_cannot_carry():
    nan = ModelRequest(
        system="s",
        tools=[],
        max_tokens=5,
        messages=[
            {
                "role": "user",
                "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {"x": float("nan")}}],
            }
        ],
    )
    with pytest.raises(ValueError):
        request_body("claude-x", nan)


async def test_a_retried_request_sends_the_same_bytes_again(api):
    api.push(overloaded(), message(tool_use("toolu_9", "bash", {"command": "true"})))
    provider = AnthropicProvider(KEY, base_url=api.url, max_retries=1, pools=1)
    try:
        reply = await provider.complete(conversation())
    finally:
        await provider.aclose()
    assert reply.stop_reason == "tool_use"
    first, retry = api.requests
    assert first.raw_body == retry.raw_body
    assert (first.headers["x-stainless-retry-count"], retry.headers["x-stainless-retry-count"]) == ("0", "1")
