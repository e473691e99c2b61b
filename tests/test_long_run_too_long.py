"""A "prompt is too long" answer compacts the conversation and the turn is asked again.

Through the real anthropic SDK against the fake Messages API, which answers 400
``invalid_request_error`` "prompt is too long: N tokens > W maximum" as the API does past the
model's window. Context management is "off" here, so nothing is cleared or summarized before
the API says the prompt is too long.
"""

from __future__ import annotations

from daemon.agent.context_summary import SUMMARY_PROMPT, is_summary_request
from daemon.agent.context_window import COMPACTED, ContextPolicy
from daemon.states import TaskStatus

from .agent_env import CLAUDE_KEY, run_with_claude
from .fakes.anthropic_api import FakeAnthropicAPI, message, tool_use
from .test_long_run import BIG_FILE, SUMMARY, summarizer

FILES = {"README.md": "# big\n", "big.txt": BIG_FILE}


def read(i: int, size: int) -> dict:
    return tool_use(f"toolu_{i}", "bash", {"command": f"head -c {size + i} big.txt"})


async def test_prompt_too_long_is_compacted_and_the_turn_asked_again(store, hub, tmp_path):
    fake = FakeAnthropicAPI(api_key=CLAUDE_KEY, context_window=20_000)
    fake.answer = summarizer
    replies = [message(f"Step {i}.", read(i, 20_000)) for i in range(1, 5)] + [message("Done.")]
    fake, task, events = await run_with_claude(
        store,
        hub,
        tmp_path,
        replies,
        files=FILES,
        prompt="Read it.",
        fake=fake,
        context=ContextPolicy(mode="off"),
    )
    assert task.status is TaskStatus.SUCCEEDED, task.error
    too_long = [r for r in fake.requests if not r.usage]
    assert len(too_long) == 1 and too_long[0].prompt_tokens > 20_000
    # Then: the summary request (the turns before the last exchange), then the same turn again,
    # now from the summary and the last exchange.
    after = fake.requests[fake.requests.index(too_long[0]) + 1 :]
    assert is_summary_request(after[0].body["messages"])
    assert after[0].body["messages"][-1]["content"][-1]["text"] == SUMMARY_PROMPT
    retried = after[1].body["messages"]
    assert SUMMARY in retried[0]["content"][0]["text"]
    assert retried[1]["content"][-1]["id"] == "toolu_4"  # the last call and its result kept
    assert retried[2]["content"][0]["tool_use_id"] == "toolu_4"
    assert after[1].prompt_tokens < 20_000
    stored = await store.list_messages(task.id)
    assert [t["stop_reason"] for t in stored if t.get("stop_reason") == COMPACTED] == [COMPACTED]
    compaction = [e.data for e in events if e.type == "agent.usage" and "compaction" in e.data]
    assert len(compaction) == 1 and compaction[0]["compaction"].startswith("anthropic: 400")
    assert "prompt is too long" in compaction[0]["compaction"]


async def test_a_last_exchange_larger_than_the_window_fails_saying_why(store, hub, tmp_path):
    fake = FakeAnthropicAPI(api_key=CLAUDE_KEY, context_window=4_000)
    fake.answer = summarizer
    fake, task, _ = await run_with_claude(
        store,
        hub,
        tmp_path,
        [message("Reading.", read(1, 20_000)), message("Done.")],
        files=FILES,
        prompt="Read it.",
        fake=fake,
        context=ContextPolicy(mode="off"),
    )
    assert task.status is TaskStatus.FAILED
    assert task.reason == "context_exhausted"
    assert "context window" in task.error and "nothing older is left to summarize" in task.error
    # Bounded: one request too long, no summary request (nothing to summarize), no retry loop.
    assert len(fake.requests) == 2 and not fake.requests[1].usage
