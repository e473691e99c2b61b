"""The fake Messages API's prompt-cache accounting follows Anthropic's rules, and a long task
through the real loop and provider reads most of its input from the cache."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from daemon.states import TaskStatus

from .fakes.prompt_cache import TTL_S, CacheUsage, PromptCache, block_tokens, min_tokens_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from cache_share import run_cache_task

EPHEMERAL = {"type": "ephemeral"}
BIG = "x" * 8000  # about 2,000 tokens as one block


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def body(*turns: str, system: str = BIG, model: str = "claude-sonnet-5-5") -> dict[str, Any]:
    """A request: a system block and user turns, the breakpoints where agentd puts them (the
    system block and the newest turn)."""
    messages: list[dict[str, Any]] = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": [{"type": "text", "text": t}]}
        for i, t in enumerate(turns)
    ]
    messages[-1]["content"][0]["cache_control"] = EPHEMERAL
    return {
        "model": model,
        "system": [{"type": "text", "text": system, "cache_control": EPHEMERAL}],
        "messages": messages,
    }


def cache() -> tuple[PromptCache, Clock]:
    clock = Clock()
    return PromptCache(clock), clock


def total(usage: CacheUsage | dict[str, int]) -> int:
    """All input tokens of one request: uncached, read and written."""
    u = usage.as_usage() if isinstance(usage, CacheUsage) else usage
    return u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]


def test_the_prefix_up_to_a_breakpoint_is_written_then_read():
    pc, _ = cache()
    first = pc.account(body("hello"))
    assert first.cache_read_input_tokens == 0 and first.input_tokens == 0
    assert first.cache_creation_input_tokens == total(first)
    second = pc.account(body("hello", "hi there", "next question"))
    # The whole first request is read; the two new turns are written up to the new breakpoint.
    assert second.cache_read_input_tokens == total(first)
    assert second.cache_creation_input_tokens == total(second) - total(first)
    assert second.input_tokens == 0


def test_a_moved_breakpoint_does_not_change_the_prefix_and_the_tail_is_uncached():
    pc, _ = cache()
    pc.account(body("hello"))
    request = body("hello", "hi", "more")
    # Breakpoint on the system block only: the turns after it are neither read nor written.
    del request["messages"][-1]["content"][0]["cache_control"]
    usage = pc.account(request)
    system_tokens = block_tokens(request["system"][0])
    assert usage.cache_read_input_tokens == system_tokens
    assert usage.cache_creation_input_tokens == 0
    assert usage.input_tokens == total(usage) - system_tokens


def test_a_changed_earlier_block_misses():
    pc, _ = cache()
    pc.account(body("hello"))
    usage = pc.account(body("hello", "hi", "more", system=BIG.replace("x", "y", 1)))
    assert usage.cache_read_input_tokens == 0
    assert usage.cache_creation_input_tokens == total(usage)


def test_a_prefix_below_the_minimum_is_not_cached():
    assert min_tokens_for("claude-haiku-4-5") == 2048 and min_tokens_for("claude-sonnet-5-5") == 1024
    pc, _ = cache()
    small = "s" * 2000  # about 500 tokens: under Sonnet's 1,024
    first = pc.account(body("hello", system=small))
    assert first.cache_creation_input_tokens == 0 and first.input_tokens == total(first)
    assert pc.account(body("hello", system=small)).cache_read_input_tokens == 0
    # About 2,000 tokens: enough for Sonnet, not for Haiku.
    haiku = pc.account(body("hello", model="claude-haiku-4-5"))
    assert haiku.cache_creation_input_tokens == 0
    assert PromptCache(Clock(), min_tokens=10).account(body("hi", system=small)).input_tokens == 0


def test_an_entry_expires_after_five_minutes_and_a_read_refreshes_it():
    pc, clock = cache()
    pc.account(body("hello"))
    clock.now = TTL_S - 1
    assert pc.account(body("hello")).cache_read_input_tokens > 0  # read: lives 5 more minutes
    clock.now = 2 * TTL_S - 2
    assert pc.account(body("hello")).cache_read_input_tokens > 0  # refreshed, so still there
    clock.now += TTL_S
    expired = pc.account(body("hello"))
    assert expired.cache_read_input_tokens == 0 and expired.cache_creation_input_tokens == total(expired)


def test_the_lookback_from_a_breakpoint_is_about_20_blocks():
    pc, _ = cache()
    pc.account(body("hello"))
    turns = ["hello", *(f"turn {i}" for i in range(1, 24))]
    usage = pc.account(body(*turns))
    # The cached prefix (the system block and "hello") lies 23 blocks before the newest
    # breakpoint; only the system block's own breakpoint still finds its entry.
    assert usage.cache_read_input_tokens == block_tokens(body("hello")["system"][0])


def test_caches_are_per_model():
    pc, _ = cache()
    pc.account(body("hello"))
    assert pc.account(body("hello", model="claude-opus-5")).cache_read_input_tokens == 0


@pytest.mark.slow
async def test_a_long_task_reads_most_of_its_input_from_the_cache(store, hub, tmp_path):
    result = await run_cache_task(tmp_path, store, hub, turns=30)
    assert result["status"] == TaskStatus.SUCCEEDED.value, result["error"]
    usages = result["usages"]
    assert len(usages) == 30
    # Once the prompt passes the minimum, each turn reads the previous turn's whole prompt.
    cached = [i for i, u in enumerate(usages) if u["cache_creation_input_tokens"]]
    for prev, cur in zip(usages[cached[0] :], usages[cached[0] + 1 :], strict=False):
        assert cur["cache_read_input_tokens"] == total(prev)
        assert cur["input_tokens"] == 0
    # The first turns are under the minimum cacheable length and read nothing; the bench row
    # (bench/cache_share.py) reports the figure itself.
    assert result["read_share_turns_2_on"] > 0.85
    assert result["cost_usd"] > 0
