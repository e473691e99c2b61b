"""The provider interface without I/O: usage, prices, cache breakpoints, the scripted model."""

from __future__ import annotations

import copy
import json

import pytest
import trio

from daemon.agent.model import (
    DEFAULT_PRICE,
    ModelRequest,
    Usage,
    cost_of,
    price_for,
    with_cache_breakpoints,
)
from daemon.agent.scripted_provider import FINISHED_TEXT, ScriptedProvider, ScriptError
from daemon.errors import PermanentError

EPH = {"type": "ephemeral"}
TOOLS = [
    {"name": "bash", "input_schema": {"type": "object"}},
    {"name": "edit", "input_schema": {"type": "object"}},
]


def req(messages, system="sys", tools=TOOLS) -> ModelRequest:
    return ModelRequest(system=system, tools=copy.deepcopy(tools), messages=messages, max_tokens=100)


# --- usage and prices --------------------------------------------------------------------------


def test_usage_adds_up_field_by_field():
    total = Usage(1, 2, 3, 4, 0.5) + Usage(10, 20, 30, 40, 0.25)
    assert total == Usage(11, 22, 33, 44, 0.75)
    assert sum([Usage(1), Usage(2)], Usage()) == Usage(3)


@pytest.mark.parametrize(
    ("model", "per_mtok"),
    [
        # (input, output, 5m cache write, cache read), USD per million tokens
        ("claude-opus-4-5-20251101", (5, 25, 6.25, 0.5)),
        ("claude-opus-4-8", (5, 25, 6.25, 0.5)),
        ("claude-opus-4-1-20250805", (15, 75, 18.75, 1.5)),
        ("claude-opus-4-20250514", (15, 75, 18.75, 1.5)),
        ("claude-sonnet-4-5-20250929", (3, 15, 3.75, 0.3)),
        ("claude-sonnet-4-6", (3, 15, 3.75, 0.3)),
        ("claude-haiku-4-5-20251001", (1, 5, 1.25, 0.1)),
        ("claude-sonnet-5-5", (2, 10, 2.5, 0.1)),
        ("claude-sonnet-5", (2, 10, 2.5, 0.2)),
    ],
)
def test_prices_match_by_longest_prefix(model, per_mtok):
    p = price_for(model)
    assert (p.input, p.output, p.cache_write, p.cache_read) == pytest.approx(per_mtok)


def test_an_unknown_model_is_priced_conservatively_high():
    assert price_for("gpt-9") == DEFAULT_PRICE
    assert DEFAULT_PRICE.input >= max(
        price_for(m).input for m in ("claude-opus-4-6", "claude-sonnet-4-5", "claude-haiku-4-5")
    )


def test_cost_counts_every_kind_of_token():
    u = Usage(
        input_tokens=1_000_000,
        output_tokens=1_000_000,
        cache_read_tokens=1_000_000,
        cache_write_tokens=1_000_000,
    )
    # Haiku 4.5: $1 in + $5 out + $0.10 read + $1.25 write
    assert cost_of("claude-haiku-4-5", u) == pytest.approx(7.35)
    assert cost_of("claude-haiku-4-5", Usage()) == 0


def test_a_long_prompt_switches_to_the_long_prompt_rate():
    short, long = (
        Usage(input_tokens=100_000, output_tokens=1000),
        Usage(input_tokens=60_000, cache_read_tokens=40_001, output_tokens=1000),
    )
    assert cost_of("claude-haiku-5-5", short) == pytest.approx((100_000 * 0.1 + 1000 * 0.5) / 1e6)
    assert cost_of("claude-haiku-5-5", long) == pytest.approx(
        (60_000 * 0.5 + 40_001 * 0.05 + 1000 * 2.5) / 1e6
    )


# --- cache breakpoints -------------------------------------------------------------------------


def test_breakpoints_go_on_last_tool_system_and_newest_block_without_mutating():
    messages = [
        {"role": "user", "content": "Fix it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "bash", "input": {}}]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "ok"},
                {"type": "text", "text": "go on"},
            ],
        },
    ]
    request = req(messages)
    before = copy.deepcopy(request)
    tools, system, msgs = with_cache_breakpoints(request)
    assert request == before
    assert [t.get("cache_control") for t in tools] == [None, EPH]
    assert system == [{"type": "text", "text": "sys", "cache_control": EPH}]
    assert [b.get("cache_control") for b in msgs[-1]["content"]] == [None, EPH]
    assert msgs[:2] == messages[:2]


def test_a_string_message_becomes_a_block_to_carry_the_breakpoint():
    _, _, msgs = with_cache_breakpoints(req([{"role": "user", "content": "hello"}]))
    assert msgs == [{"role": "user", "content": [{"type": "text", "text": "hello", "cache_control": EPH}]}]


def test_no_system_and_no_tools_means_no_blocks_for_them():
    tools, system, msgs = with_cache_breakpoints(
        req([{"role": "user", "content": "hi"}], system="", tools=[])
    )
    assert (tools, system) == ([], [])
    assert msgs[-1]["content"][-1]["cache_control"] == EPH


def test_thinking_blocks_are_skipped_for_the_breakpoint():
    last = {
        "role": "assistant",
        "content": [{"type": "text", "text": "a"}, {"type": "thinking", "thinking": "hm", "signature": "s"}],
    }
    _, _, msgs = with_cache_breakpoints(req([{"role": "user", "content": "q"}, last]))
    assert [b.get("cache_control") for b in msgs[-1]["content"]] == [EPH, None]


def test_existing_breakpoints_count_against_the_limit_of_four():
    marked = [{"type": "text", "text": f"m{i}", "cache_control": EPH} for i in range(2)]
    request = req([{"role": "user", "content": [*marked, {"type": "text", "text": "new"}]}])
    tools, system, msgs = with_cache_breakpoints(request)
    total = sum("cache_control" in b for b in [*tools, *system, *msgs[0]["content"]])
    assert total == 4
    assert msgs[0]["content"][-1]["cache_control"] == EPH  # the newest block wins the room
    assert "cache_control" in system[0] and "cache_control" not in tools[-1]


# --- scripted provider -------------------------------------------------------------------------

SCRIPT = {
    "turns": [
        {
            "content": [
                {"type": "text", "text": "Let me look at the code."},
                {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"command": "cat a.py"}},
            ]
        },
        {"content": [{"type": "text", "text": "Out of room"}], "stop_reason": "max_tokens"},
        {"content": [{"type": "text", "text": "Fixed."}]},
    ]
}


def history(assistant_turns: int) -> list[dict]:
    msgs = [{"role": "user", "content": "fix the bug"}]
    for i in range(assistant_turns):
        msgs += [
            {"role": "assistant", "content": [{"type": "text", "text": f"turn {i}"}]},
            {"role": "user", "content": "next"},
        ]
    return msgs


async def test_the_turn_played_follows_from_the_conversation_alone():
    provider = ScriptedProvider(SCRIPT)
    replies = [await provider.complete(req(history(n))) for n in (0, 1, 2, 3, 7)]
    assert [r.stop_reason for r in replies] == ["tool_use", "max_tokens", "end_turn", "end_turn", "end_turn"]
    assert replies[0].content == SCRIPT["turns"][0]["content"]
    assert replies[2].content == [{"type": "text", "text": "Fixed."}]
    assert replies[3].content == replies[4].content == [{"type": "text", "text": FINISHED_TEXT}]
    # A fresh provider (a restarted daemon) given the same history plays the same turn.
    again = await ScriptedProvider(SCRIPT).complete(req(history(1)))
    assert again == replies[1]


async def test_scripted_replies_stream_text_and_report_synthetic_usage():
    deltas: list[str] = []
    reply = await ScriptedProvider(SCRIPT).complete(req(history(0)), on_text_delta=deltas.append)
    assert len(deltas) > 1 and "".join(deltas) == "Let me look at the code."
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0 and reply.usage.cost_usd == 0
    assert reply.model == "scripted"


async def test_replies_are_copies_the_caller_may_change():
    provider = ScriptedProvider(SCRIPT)
    (await provider.complete(req(history(0)))).content[1]["input"]["command"] = "rm -rf /"
    assert (await provider.complete(req(history(0)))).content[1]["input"] == {"command": "cat a.py"}


async def test_delay_sleeps_on_trios_clock(autojump_clock):
    provider = ScriptedProvider({"turns": [{"content": [{"type": "text", "text": "slow"}], "delay_s": 30}]})
    start = trio.current_time()
    await provider.complete(req(history(0)))
    assert trio.current_time() == start + 30
    with trio.move_on_after(10) as scope:
        await provider.complete(req(history(0)))
    assert scope.cancelled_caught


@pytest.mark.parametrize(
    ("script", "says"),
    [
        ([], "must be a JSON object"),
        ({}, 'missing "turns"'),
        ({"turns": [], "extra": 1}, "unknown key 'extra'"),
        ({"turns": {}}, '"turns" must be a list'),
        ({"turns": ["hi"]}, "turns[0]: must be an object, not a string"),
        ({"turns": [{"content": []}]}, 'turns[0]: "content" must be a non-empty list'),
        (
            {"turns": [{"content": [{"type": "text", "text": "a"}], "stopreason": "x"}]},
            "turns[0]: unknown key 'stopreason'",
        ),
        (
            {"turns": [{"content": [{"text": "a"}]}]},
            'turns[0].content[0]: a content block must be an object with a string "type"',
        ),
        (
            {"turns": [{"content": [{"type": "text", "text": ""}]}]},
            'turns[0].content[0]: text block needs a non-empty string "text"',
        ),
        (
            {
                "turns": [
                    {"content": [{"type": "text", "text": "a"}]},
                    {"content": [{"type": "tool_use", "name": "bash", "input": {}}]},
                ]
            },
            'turns[1].content[0]: tool_use block needs a non-empty string "id"',
        ),
        (
            {"turns": [{"content": [{"type": "tool_use", "id": "t", "name": "bash", "input": "ls"}]}]},
            'turns[0].content[0]: tool_use block needs an object "input"',
        ),
        (
            {
                "turns": [
                    {
                        "content": [
                            {"type": "tool_use", "id": "t", "name": "b", "input": {}},
                            {"type": "tool_use", "id": "t", "name": "b", "input": {}},
                        ]
                    }
                ]
            },
            "turns[0].content[1]: tool_use id 't' is used twice",
        ),
        (
            {"turns": [{"content": [{"type": "text", "text": "a"}], "stop_reason": "done"}]},
            "turns[0]: stop_reason 'done' is not one of",
        ),
        (
            {"turns": [{"content": [{"type": "text", "text": "a"}], "delay_s": -1}]},
            "turns[0]: delay_s must be a number of seconds >= 0",
        ),
        (
            {"turns": [{"content": [{"type": "text", "text": "a"}], "delay_s": "5"}]},
            "turns[0]: delay_s must be a number",
        ),
    ],
)
def test_a_bad_script_is_refused_with_the_place_and_the_problem(script, says):
    with pytest.raises(ScriptError) as caught:
        ScriptedProvider(script)
    assert says in caught.value.message
    assert isinstance(caught.value, PermanentError)


def test_a_script_loads_from_a_file_and_errors_name_the_file(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(SCRIPT))
    assert len(ScriptedProvider.from_file(good)) == 3

    bad = tmp_path / "bad.json"
    bad.write_text('{"turns": [{"content": 3}]}')
    with pytest.raises(ScriptError, match=r"bad\.json: turns\[0\]: \"content\" must be"):
        ScriptedProvider.from_file(bad)
    broken = tmp_path / "broken.json"
    broken.write_text('{"turns": [')
    with pytest.raises(ScriptError, match=r"broken\.json: not valid JSON"):
        ScriptedProvider.from_file(broken)
    with pytest.raises(ScriptError, match=r"missing\.json: cannot read"):
        ScriptedProvider.from_file(tmp_path / "missing.json")
