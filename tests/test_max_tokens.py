"""A reply cut off by ``max_tokens``: inside a tool call it is asked again with a larger
``max_tokens``, or, at the limit, continued without the unfinished call; its tokens always count.

Whole tasks through the real anthropic SDK against the fake Messages API (real HTTP and SSE), and
the same through the scripted model.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from daemon.agent.anthropic_stream import MessageAssembler, StreamBroken
from daemon.agent.conversation import Budget
from daemon.agent.loop import CONTINUE, CUT_OFF
from daemon.agent.model import ModelRequest
from daemon.agent.scripted_provider import ScriptedProvider, ScriptError
from daemon.states import TaskStatus

from .agent_env import FIX_CALC_EDIT, run_with_claude, text, tool_use
from .fakes.anthropic_api import message, partial_tool_use
from .test_agent_loop import run_task

CUT_EDIT = partial_tool_use(
    "toolu_2", "str_replace_based_edit_tool", '{"command": "str_replace", "path": "ca'
)
RUN_TEST = tool_use("toolu_1", "bash", command="python3 test_calc.py")
DONE = message("Fixed add(); the test passes.")


def usage_events(events) -> list[dict[str, Any]]:
    return [e.data for e in events if e.type == "agent.usage"]


async def test_a_reply_cut_inside_a_tool_call_is_asked_again_with_more_output(store, hub, tmp_path):
    cut = message("Fixing it.", CUT_EDIT, stop_reason="max_tokens", usage={"output_tokens": 8192})
    fake, task, events = await run_with_claude(
        store, hub, tmp_path, [cut, message("Fixing it.", FIX_CALC_EDIT, RUN_TEST), DONE]
    )
    assert task.status is TaskStatus.SUCCEEDED, task.error
    bodies = [r.body for r in fake.requests]
    assert [b["max_tokens"] for b in bodies] == [8192, 16384, 8192]  # doubled for that turn only
    assert bodies[1]["messages"] == bodies[0]["messages"]  # the cut turn was not kept
    # The cut turn's tokens count in the task's usage, and its usage event says what followed.
    spent = usage_events(events)
    assert spent[0]["stop_reason"] == "max_tokens" and spent[0]["retry_max_tokens"] == 16384
    assert task.usage.output_tokens == sum(u["output_tokens"] for u in spent) >= 8192
    assert len(spent) == 3 and len(await store.list_messages(task.id)) == 4


async def test_cut_off_at_the_limit_the_call_is_dropped_and_the_model_told(store, hub, tmp_path):
    cut = message("Fixing it.", RUN_TEST, CUT_EDIT, stop_reason="max_tokens")
    fake, task, _ = await run_with_claude(
        store,
        hub,
        tmp_path,
        [cut, message(FIX_CALC_EDIT, tool_use("toolu_3", "bash", command="python3 test_calc.py")), DONE],
        max_output_tokens=4096,
        max_output_tokens_limit=4096,
    )
    assert task.status is TaskStatus.SUCCEEDED, task.error
    second = fake.requests[1].body
    assert second["max_tokens"] == 4096
    kept, answer = second["messages"][-2:]
    assert [b.get("id") for b in kept["content"]] == [None, "toolu_1"]  # the text and the whole call
    assert answer["content"][0]["tool_use_id"] == "toolu_1"
    assert answer["content"][1]["text"] == CUT_OFF


async def test_text_cut_off_is_continued_not_taken_as_done(store, hub, tmp_path):
    fake, task, _ = await run_with_claude(
        store, hub, tmp_path, [message("Half of my", stop_reason="max_tokens"), DONE]
    )
    assert task.status is TaskStatus.SUCCEEDED, task.error
    assert [b["max_tokens"] for b in (r.body for r in fake.requests)] == [8192, 8192]
    assert fake.requests[1].body["messages"][-1]["content"][0]["text"] == CONTINUE


async def test_the_cut_turns_tokens_count_against_the_budget(store, hub, tmp_path):
    cut = message(CUT_EDIT, stop_reason="max_tokens", usage={"input_tokens": 100, "output_tokens": 8192})
    fake, task, _ = await run_with_claude(
        store, hub, tmp_path, [cut, DONE], budget_defaults=Budget(40, 5000, 10.0)
    )
    assert task.status is TaskStatus.FAILED and task.reason == "budget_exceeded:tokens"
    assert len(fake.requests) == 1  # not asked again past the budget
    assert (task.usage.input_tokens, task.usage.output_tokens) == (100, 8192)


# --- the scripted model ------------------------------------------------------------------------


def request(max_tokens: int) -> ModelRequest:
    return ModelRequest(
        system="", tools=[], messages=[{"role": "user", "content": "go"}], max_tokens=max_tokens
    )


async def test_a_scripted_turn_is_cut_below_its_needs_max_tokens():
    provider = ScriptedProvider(
        {
            "turns": [
                {
                    "content": [text("Writing."), tool_use("t1", "bash", command="ls")],
                    "needs_max_tokens": 9000,
                }
            ]
        }
    )
    cut = await provider.complete(request(8192))
    assert (cut.content, cut.stop_reason, cut.cut_tool_use) == ([text("Writing.")], "max_tokens", True)
    assert cut.usage.output_tokens == 8192
    whole = await provider.complete(request(16384))
    assert (len(whole.content), whole.stop_reason, whole.cut_tool_use) == (2, "tool_use", False)


def test_needs_max_tokens_must_be_a_whole_number():
    with pytest.raises(ScriptError, match=r"turns\[0\]: needs_max_tokens must be a whole number"):
        ScriptedProvider({"turns": [{"content": [text("x")], "needs_max_tokens": "lots"}]})


async def test_scripted_cut_at_the_limit_with_nothing_whole_left(store, hub, tmp_path):
    """Only the cut call in the reply: a placeholder turn keeps the conversation valid."""
    script = {
        "turns": [
            {"content": [tool_use("t1", "bash", command="ls")], "needs_max_tokens": 100_000},
            {"content": [text("Done.")]},
        ]
    }
    _, task, _ = await run_task(store, hub, tmp_path, script, max_output_tokens_limit=16384)
    assert task.status is TaskStatus.SUCCEEDED, task.error
    turns = await store.list_messages(task.id)
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[1]["stop_reason"] == "max_tokens" and turns[2]["content"] == [text(CUT_OFF)]
    assert task.usage.output_tokens >= 8192 + 16384  # both cut calls counted


# --- the stream parser -------------------------------------------------------------------------


def assembled(stop_reason: str):
    events = [
        ("message_start", {"type": "message_start", "message": {"model": "m", "content": [], "usage": {}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": text("")}),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {**tool_use("t", "bash"), "input": {}},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"comm'},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason}, "usage": {}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    assembler = MessageAssembler()
    for name, data in events:
        assembler.event(name, json.dumps(data).encode())
    return assembler.result()


def test_the_stream_drops_a_tool_call_the_output_limit_cut():
    message = assembled("max_tokens")
    assert (message.content, message.cut_tool_use) == ([text("Hi")], True)
    with pytest.raises(StreamBroken, match="is not JSON"):
        assembled("tool_use")
