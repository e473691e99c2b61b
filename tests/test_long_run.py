"""Long runs: 300 turns of 20 KB tool outputs stay within the context window and finish.

Through the real anthropic SDK and ``AnthropicProvider`` against the fake Messages API, which
counts each prompt's tokens (JSON / 4, after its own context edits), answers 400 "prompt is too
long" past its window, rejects a tool_result without its tool_use, and accounts the prompt
cache by Anthropic's rules. Both paths: "client" (agentd clears and summarizes) and "api" (the
API's ``clear_tool_uses`` and ``compact`` edits, agentd sends them and the blocks back).
"""

from __future__ import annotations

from typing import Any

import pytest

from daemon.agent.context_summary import is_summary_request
from daemon.agent.context_window import CLEARED, COMPACTED, ContextPolicy
from daemon.agent.conversation import Budget
from daemon.states import TaskStatus

from .agent_env import CLAUDE_KEY, run_with_claude
from .fakes.anthropic_api import FakeAnthropicAPI, RecordedRequest, Reply, message, tool_use
from .fakes.prompt_cache import PromptCache

TURNS = 300
OUTPUT_BYTES = 20_000
WINDOW = 60_000
POLICY = dict(
    window_tokens=WINDOW,
    clear_at_tokens=30_000,
    clear_at_least_tokens=25_000,
    keep_tool_results=3,
    compact_at_tokens=50_000,
)
# 900 lines of 50 bytes: the file each call prints 20 KB of (a few bytes more each time).
BIG_FILE = "".join(f"line {i:05d} {'x' * 38}\n" for i in range(900))
SUMMARY = "Summary: big.txt is being read in steps of 20 KB; keep reading it."
LONG_RUN_BUDGET = Budget(TURNS + 10, 500_000_000, 1000.0)


def reading_replies(turns: int) -> list[Reply]:
    """``turns - 1`` cheap, distinct bash calls that print about 20 KB each, then a last answer."""
    calls = [
        message(
            f"Step {i}.", tool_use(f"toolu_{i}", "bash", {"command": f"head -c {OUTPUT_BYTES + i} big.txt"})
        )
        for i in range(1, turns)
    ]
    return [*calls, message("Done: read it all.")]


def summarizer(rec: RecordedRequest) -> Reply | None:
    """The model's answer to agentd's summary request, wherever it falls in the script."""
    return message(SUMMARY) if is_summary_request(rec.body["messages"]) else None


async def long_run(
    store, hub, tmp_path, mode: str, turns: int = TURNS
) -> tuple[FakeAnthropicAPI, Any, list[Any]]:
    fake = FakeAnthropicAPI(api_key=CLAUDE_KEY, prompt_cache=PromptCache(), context_window=WINDOW)
    fake.answer = summarizer
    fake, task, _ = await run_with_claude(
        store,
        hub,
        tmp_path,
        reading_replies(turns),
        files={"README.md": "# big\n", "big.txt": BIG_FILE},
        prompt="Read big.txt.",
        fake=fake,
        context=ContextPolicy(mode=mode, **POLICY),  # type: ignore[arg-type]
        budget_defaults=LONG_RUN_BUDGET,
        budget_caps=LONG_RUN_BUDGET,
        stuck_repeats=5,
    )
    return fake, task, await store.read_events(task.id, limit=100 * turns)


def cache_breaks(requests: list[RecordedRequest]) -> int:
    """Requests that did not read back the whole prefix the one before cached: the cached
    conversation was edited (cleared, compacted) rather than extended."""
    breaks = 0
    cached_before = 0
    for rec in requests:
        u = rec.usage
        if cached_before and u["cache_read_input_tokens"] < cached_before:
            breaks += 1
        cached_before = u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]
    return breaks


def assert_finished_within_the_window(fake: FakeAnthropicAPI, task: Any) -> list[RecordedRequest]:
    assert task.status is TaskStatus.SUCCEEDED, task.error
    # Every request was answered: none over the window, none with a tool_result missing its
    # tool_use (the fake answers those with a 400, as the API does, and records no usage).
    assert all(rec.usage for rec in fake.requests), [r.body for r in fake.requests if not r.usage][:1]
    assert max(rec.prompt_tokens for rec in fake.requests) <= WINDOW
    turns = [r for r in fake.requests if not is_summary_request(r.body["messages"])]
    assert len(turns) == TURNS
    return turns


@pytest.mark.slow
async def test_client_path_300_turns_of_20kb_outputs_fit_the_window(store, hub, tmp_path):
    fake, task, events = await long_run(store, hub, tmp_path, "client")
    turns = assert_finished_within_the_window(fake, task)
    # Old results were cleared (the note says how to get them back) and the turns before the
    # last exchange summarized, a few times over 300 turns.
    summaries = [r for r in fake.requests if is_summary_request(r.body["messages"])]
    stored = await store.list_messages(task.id)
    compactions = [t for t in stored if t.get("stop_reason") == COMPACTED]
    assert 1 <= len(compactions) == len(summaries) <= 10
    assert SUMMARY in compactions[-1]["content"][0]["text"]
    last = turns[-1].body["messages"]
    assert SUMMARY in last[0]["content"][0]["text"]
    cleared = [
        b for m in last for b in m["content"] if b.get("type") == "tool_result" and b["content"] == CLEARED
    ]
    assert cleared
    # In batches: the conversation already sent changed (cache invalidated) once per batch of
    # at least 25,000 tokens (five outputs), or per summary; not every turn.
    breaks = cache_breaks(turns)
    assert len(compactions) < breaks <= TURNS // 4
    # The tokens of the summary calls count in the task's usage like any turn's.
    usage = [e.data for e in events if e.type == "agent.usage"]
    assert sum(1 for u in usage if "compaction" in u) == len(compactions)
    assert task.usage.input_tokens == sum(u["input_tokens"] for u in usage)


@pytest.mark.slow
async def test_api_path_300_turns_the_api_clears_and_compacts(store, hub, tmp_path):
    fake, task, events = await long_run(store, hub, tmp_path, "api")
    turns = assert_finished_within_the_window(fake, task)
    first = turns[0]
    assert set(first.headers["anthropic-beta"].split(",")) >= {
        "context-management-2025-06-27",
        "compact-2026-01-12",
    }
    edits = first.body["context_management"]["edits"]
    assert [e["type"] for e in edits] == ["clear_tool_uses_20250919", "compact_20260112"]
    assert edits[0]["clear_at_least"] == {"type": "input_tokens", "value": 25_000}
    assert edits[0]["exclude_tools"] == ["ask_user"]
    # agentd did neither itself: no summary requests, nothing cleared in what it sent.
    assert not any(is_summary_request(r.body["messages"]) for r in fake.requests)
    assert not any(
        b.get("content") == CLEARED for r in fake.requests for m in r.body["messages"] for b in m["content"]
    )
    # The API cleared (reported in the usage events) and compacted; each compaction block was
    # sent back first, the turns before it no longer sent.
    applied = [e for ev in events if ev.type == "agent.usage" for e in ev.data.get("context_edits", [])]
    assert any(e["type"] == "clear_tool_uses_20250919" and e["cleared_tool_uses"] >= 5 for e in applied)
    compacted = [i for i, r in enumerate(turns) if r.compacted]
    assert 1 <= len(compacted) < TURNS // 4
    after = turns[compacted[0] + 1].body["messages"]
    assert after[0]["role"] == "assistant" and after[0]["content"][0]["type"] == "compaction"
    stored = await store.list_messages(task.id)
    assert sum(1 for t in stored if t["content"][0].get("type") == "compaction") == len(compacted)
    # A compacting turn's usage adds its summary step (an ``iterations`` entry, not in the totals).
    spent = [e.data for e in events if e.type == "agent.usage"]
    assert len(spent) == len(turns)
    step = turns[compacted[0]].usage["iterations"][0]
    assert step["type"] == "compaction"
    expected = turns[compacted[0]].usage["input_tokens"] + step["input_tokens"]
    assert spent[compacted[0]]["input_tokens"] == expected
    # What agentd sends stays bounded too: never more than the compaction trigger plus a turn.
    assert max(len(r.raw_body) for r in turns) < 4 * (50_000 + 10_000)
    # In batches: edits of the cached prefix (clearing, compaction) far fewer than turns.
    assert cache_breaks(turns) <= TURNS // 4
