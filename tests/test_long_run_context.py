"""The context window's pure functions (``daemon/agent/context_window.py``), and the scripted
model through a long run on the client path."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from daemon.agent.context_keeper import ContextKeeper
from daemon.agent.context_summary import compaction_split, covered_turns, summary_content
from daemon.agent.context_window import (
    CLEARED,
    COMPACTED,
    ContextPolicy,
    TokenCounter,
    api_edits,
    clear_old_results,
    policy_for,
    visible_turns,
)
from daemon.agent.conversation import Budget, for_model
from daemon.agent.model import ModelReply, ModelRequest, with_cache_breakpoints
from daemon.agent.scripted_provider import ScriptedProvider
from daemon.agent.tools import tool_definitions
from daemon.config import Settings
from daemon.errors import ConfigError
from daemon.states import TaskStatus

from .agent_env import agent_supervisor, bare_repo
from .fakes.anthropic_api import validate_request
from .fakes.context_edits import CONTEXT_BETA, PLACEHOLDER, edit, prompt_tokens
from .fakes.prompt_cache import PromptCache, block_tokens, prompt_blocks
from .helpers import wait_status
from .test_long_run import BIG_FILE

POLICY = ContextPolicy(
    window_tokens=20_000,
    clear_at_tokens=8_000,
    clear_at_least_tokens=3_000,
    keep_tool_results=2,
    compact_at_tokens=15_000,
)


def exchange(i: int, output: str, name: str = "bash") -> list[dict[str, Any]]:
    call = {"type": "tool_use", "id": f"t{i}", "name": name, "input": {"command": f"step {i}"}}
    result = {"type": "tool_result", "tool_use_id": f"t{i}", "content": output}
    return [
        {"role": "assistant", "content": [{"type": "text", "text": f"Step {i}."}, call]},
        {"role": "user", "content": [result]},
    ]


def conversation(n: int, size: int = 4_000, name=lambda i: "bash") -> list[dict[str, Any]]:
    turns = [{"role": "user", "content": [{"type": "text", "text": "Do the task."}]}]
    for i in range(1, n + 1):
        turns += exchange(i, f"{i} " + "o" * size, name(i))
    return turns


def cleared_ids(messages: list[dict[str, Any]]) -> list[str]:
    return [
        b["tool_use_id"]
        for m in messages
        for b in m["content"]
        if b.get("type") == "tool_result" and b["content"] == CLEARED
    ]


def test_the_estimate_is_the_fake_apis_block_by_block():
    tools, turns = tool_definitions(), conversation(3)
    body = {"system": "You fix bugs.", "tools": tools, "messages": turns}
    fake = sum(block_tokens(block) for block, _ in prompt_blocks(body))
    assert TokenCounter().request("You fix bugs.", tools, turns) == fake


def test_results_are_cleared_in_batches_that_only_ever_grow_so_the_prefix_changes_rarely():
    counter, seen, changes = TokenCounter(), [], 0
    for n in range(1, 40):  # beyond, the cleared stubs alone pass the trigger: compaction's turn
        turns = conversation(n)
        total = counter.request("", [], turns)
        sent, saved = clear_old_results(turns, counter, total, POLICY)
        assert validate_request({"model": "m", "max_tokens": 1, "messages": sent}) is None  # pairing kept
        assert turns == conversation(n)  # the input is not changed
        now = cleared_ids(sent)
        if now != (seen[-1] if seen else []):
            changes += 1
            assert set(now) > set(seen[-1] if seen else [])  # the same ones, and more
        seen.append(now)
        if total > POLICY.clear_at_tokens and saved:
            assert total - saved <= POLICY.clear_at_tokens
        assert f"t{n}" not in now and f"t{n - 1}" not in now  # the last two kept
    assert seen[-1] and changes <= 39 // 3  # each batch is three results or more: 3,000 tokens


def test_the_newest_candidates_are_cleared_and_what_precedes_them_is_read_from_the_cache():
    """The turn that clears a batch reads back from the prompt cache every block before it (a
    breakpoint sits just before the batch) and writes only from there on."""
    counter, cache = TokenCounter(), PromptCache(clock=lambda: 0.0, min_tokens=1)
    tools, before, kept = tool_definitions(), [], []
    growing = conversation(0)  # outputs that grow, as in bench/cache_share.py
    for i in range(1, 25):
        growing += exchange(i, "o" * 400 * i)
    for n in range(1, 25):  # beyond, the stubs and the kept results alone pass the trigger
        turns = growing[: 2 * n + 1]
        total = counter.request("S", tools, turns)
        sent, _ = clear_old_results(turns, counter, total, POLICY)
        t, s, m = with_cache_breakpoints(ModelRequest(system="S", tools=tools, messages=sent, max_tokens=1))
        body = {"model": "m", "max_tokens": 1, "tools": t, "system": s, "messages": m}
        assert validate_request(body) is None  # 4 breakpoints at most
        usage = cache.account(body)
        now = cleared_ids(sent)
        new = [i for i in now if i not in before]
        if new:
            assert int(new[-1][1:]) == n - POLICY.keep_tool_results  # the newest candidate back
            first = next(i for i, m in enumerate(sent) if m["content"][0].get("tool_use_id") == new[0])
            unchanged = prompt_tokens({"system": s, "tools": t, "messages": sent[: first - 1]})
            if new[0] != "t1":  # before the first result only the task, in no cached prefix
                assert usage.cache_read_input_tokens >= unchanged
            kept.append(unchanged / total)
        before = now
    # Oldest first, every batch would read back the system prompt and the task alone.
    assert len(kept) >= 2 and max(kept) > 0.25


def test_nothing_is_cleared_under_the_trigger_nor_excluded_tools_nor_a_short_batch():
    counter = TokenCounter()
    turns = conversation(3)
    assert clear_old_results(turns, counter, 100, POLICY) == (turns, 0)
    asked = conversation(12, name=lambda i: "ask_user" if i % 2 else "bash")
    sent, _ = clear_old_results(asked, counter, 50_000, POLICY)
    assert cleared_ids(sent) and all(int(i[1:]) % 2 == 0 for i in cleared_ids(sent))
    # Three results are not a whole batch of 30,000 tokens: left as they are.
    big_batch = ContextPolicy(**{**POLICY.__dict__, "clear_at_least_tokens": 14_000})
    assert clear_old_results(conversation(5), counter, 50_000, big_batch)[1] == 0
    # Every result kept: nothing to clear, whatever the batch size.
    all_kept = ContextPolicy(**{**POLICY.__dict__, "clear_at_least_tokens": 0, "keep_tool_results": 9})
    assert clear_old_results(conversation(5), counter, 50_000, all_kept) == (conversation(5), 0)


def test_a_summary_starts_what_the_model_sees_then_the_exchange_it_kept():
    turns = conversation(4)
    summary = {"role": "user", "content": summary_content("So far: four steps.", 3), "stop_reason": COMPACTED}
    stored = [*turns, summary, *exchange(5, "five")]
    shown = for_model(visible_turns(stored))
    assert shown[0]["content"][0]["text"].endswith("So far: four steps.")
    assert [b.get("id") for b in shown[1]["content"]] == [None, "t4"]
    assert shown[2]["content"][0]["tool_use_id"] == "t4"
    assert [b.get("id") for b in shown[3]["content"]] == [None, "t5"]
    assert validate_request({"model": "m", "max_tokens": 1, "messages": shown}) is None
    assert covered_turns(shown) == 3
    assert compaction_split(shown) == 3  # the last exchange; the summary and t4 before it
    assert compaction_split(shown[:3]) is None  # only a summary before the last exchange


def test_an_api_compaction_block_starts_the_conversation_sent():
    turns = conversation(3)
    turns[3] = {**turns[3], "content": [{"type": "compaction", "content": "sum"}, *turns[3]["content"]]}
    assert visible_turns(turns) == turns[3:]


def test_off_mode_api_a_compaction_block_is_sent_as_the_summary_user_turn():
    turns = conversation(3)
    turns[3] = {**turns[3], "content": [{"type": "compaction", "content": "sum"}, *turns[3]["content"]]}
    provider = ScriptedProvider({"turns": []})
    api = ContextKeeper(replace(POLICY, mode="api"), provider, "m")
    assert api.prepare("", [], turns).messages[0]["content"][0] == {"type": "compaction", "content": "sum"}
    api.fall_back("m")  # the API refused the betas: the client path, without the block
    for keeper in (api, ContextKeeper(POLICY, provider)):
        first = keeper.prepare("", [], turns).messages
        assert first[0] == {"role": "user", "content": summary_content("sum", 1)}
        assert first[1] == {"role": "assistant", "content": turns[3]["content"][1:]}
        assert first[2:] == for_model(turns[4:])
        assert validate_request({"model": "m", "max_tokens": 1, "messages": first}) is None
        assert covered_turns(first) == 1 and compaction_split(first) == 3
        again = keeper.prepare("", [], [*turns, *exchange(4, "x")]).messages
        # The same blocks every turn: each estimated once, and the prefix (so the cache) unchanged.
        assert again[0]["content"] is first[0]["content"] and again[1]["content"] is first[1]["content"]


def test_api_edits_and_the_auto_mode():
    edits = api_edits(ContextPolicy(mode="api"))["edits"]
    assert edits[0] == {
        "type": "clear_tool_uses_20250919",
        "trigger": {"type": "input_tokens", "value": 100_000},
        "keep": {"type": "tool_uses", "value": 3},
        "clear_at_least": {"type": "input_tokens", "value": 40_000},
        "exclude_tools": ["ask_user"],
    }
    assert edits[1] == {"type": "compact_20260112", "trigger": {"type": "input_tokens", "value": 150_000}}
    claude = Settings(anthropic_api_key="k", model="anthropic")
    assert policy_for(claude).mode == "api"
    elsewhere = Settings(anthropic_api_key="k", model="anthropic", anthropic_base_url="https://llm.example")
    assert policy_for(elsewhere).mode == "client"
    assert policy_for(Settings(model="scripted", script="x.json")).mode == "client"
    assert policy_for(Settings(model="scripted", script="x.json", context_management="off")).mode == "off"
    with pytest.raises(ConfigError, match="context_clear_at_tokens < context_compact_at_tokens"):
        policy_for(Settings(model="scripted", script="x.json", context_compact_at_tokens=90_000))


class Recording:
    """The scripted model, each request's estimate kept (the window check it has no server for)."""

    name = "scripted"

    def __init__(self, inner: ScriptedProvider) -> None:
        self.inner = inner
        self.estimates: list[int] = []
        self.counter = TokenCounter()

    async def complete(self, request: ModelRequest, on_text_delta=None) -> ModelReply:
        self.estimates.append(self.counter.request(request.system, request.tools, request.messages))
        assert validate_request({"model": "m", "max_tokens": 1, "messages": request.messages}) is None
        return await self.inner.complete(request, on_text_delta)


@pytest.mark.slow
async def test_the_scripted_model_runs_150_turns_on_the_client_path(store, hub, tmp_path):
    turns = 150
    calls = [
        {
            "content": [
                {
                    "type": "tool_use",
                    "id": f"t{i}",
                    "name": "bash",
                    "input": {"command": f"head -c {10_000 + i} big.txt"},
                }
            ]
        }
        for i in range(1, turns)
    ]
    script = {"turns": [*calls, {"content": [{"type": "text", "text": "Read it all."}]}]}
    provider = Recording(ScriptedProvider(script))
    budget = Budget(turns + 10, 500_000_000, 1000.0)
    repo = bare_repo(tmp_path, {"README.md": "# big\n", "big.txt": BIG_FILE})
    async with agent_supervisor(
        store,
        hub,
        tmp_path,
        provider,
        context=POLICY,
        budget_defaults=budget,
        budget_caps=budget,
        stuck_repeats=5,
    ) as sup:
        alice = await store.upsert_user("alice")
        task, _ = await sup.submit(user_id=alice.id, repo_url=str(repo), prompt="Read big.txt.")
        await wait_status(hub, task.id, TaskStatus.SUCCEEDED, TaskStatus.FAILED)
    done = await store.get_task(task.id)
    assert done.status is TaskStatus.SUCCEEDED, done.error
    stored = await store.list_messages(task.id)
    # Every turn of the script played once (the summaries count the turns they replaced) ...
    played = [t for t in stored if t["role"] == "assistant"]
    assert len(played) == turns and played[-1]["content"][0]["text"] == "Read it all."
    ids = [b["id"] for t in played for b in t["content"] if b["type"] == "tool_use"]
    assert ids == [f"t{i}" for i in range(1, turns)]
    # ... within the window, compacted with the deterministic summary.
    summaries = [t for t in stored if t.get("stop_reason") == COMPACTED]
    assert len(summaries) >= 1 and "Tool calls so far" in summaries[-1]["content"][0]["text"]
    assert max(provider.estimates) <= POLICY.window_tokens
    assert json.dumps(stored).count(CLEARED) == 0  # clearing is in what is sent, never stored


def test_the_keeper_prepares_from_the_last_summary_and_clears():
    keeper = ContextKeeper(POLICY, provider=None)  # type: ignore[arg-type]
    prepared = keeper.prepare("", [], conversation(30))
    assert prepared.cleared_tokens > 0 and prepared.tokens <= POLICY.clear_at_tokens
    assert keeper.wants_compaction(keeper.prepare("", [], conversation(300, size=400)))


# --- the fake API's own context editing (tests/fakes/context_edits.py) ---------------------------


def test_the_fake_api_clears_whole_batches_and_the_cache_is_read_up_to_the_first_cleared():
    clear = {
        "type": "clear_tool_uses_20250919",
        "trigger": {"type": "input_tokens", "value": 8_000},
        "keep": {"type": "tool_uses", "value": 2},
        "clear_at_least": {"type": "input_tokens", "value": 2_500},
    }

    def body(n: int) -> dict[str, Any]:
        messages = conversation(n)
        last = messages[-1]["content"][0]
        messages[-1] = {"role": "user", "content": [{**last, "cache_control": {"type": "ephemeral"}}]}
        return {"model": "claude-sonnet-5-5", "messages": messages, "context_management": {"edits": [clear]}}

    assert edit(body(3), set()) == "context_management: Extra inputs are not permitted"
    cache, cleared_sets = PromptCache(clock=lambda: 0.0, min_tokens=1), [[]]
    for n in range(6, 30):
        edited = edit(body(n), {CONTEXT_BETA})
        assert not isinstance(edited, str)
        ids = [
            b["tool_use_id"]
            for m in edited.body["messages"]
            for b in m["content"]
            if b.get("content") == PLACEHOLDER
        ]
        report = edited.applied[0] if edited.applied else {"cleared_tool_uses": 0}
        assert report["cleared_tool_uses"] == len(ids) and len(ids) % 3 == 0  # whole batches of three
        assert ids[: len(cleared_sets[-1])] == cleared_sets[-1]  # the same ones, and more
        if ids:
            assert edited.sent_tokens > 8_000 and report["cleared_input_tokens"] >= 2_500
        usage = cache.account(edited.body)
        if ids != cleared_sets[-1]:
            # Cleared anew: the prefix is read back only up to the first newly cleared result.
            first = next(
                i
                for i, m in enumerate(edited.body["messages"])
                for b in m["content"]
                if b.get("tool_use_id") == ids[len(cleared_sets[-1])] and b.get("type") == "tool_result"
            )
            assert (
                usage.cache_read_input_tokens
                < prompt_tokens({"messages": edited.body["messages"][:first]}) + 1
            )
        elif n > 6:
            assert usage.cache_read_input_tokens > 0
        cleared_sets.append(ids)
    assert 2 <= len({tuple(s) for s in cleared_sets}) <= 24 // 3 + 1  # a batch per 3 requests at most


def test_the_stream_keeps_a_compaction_block_the_applied_edits_and_the_steps_usage():
    from .test_anthropic_stream import assemble, block_start, delta, end, start, stop

    applied = [{"type": "clear_tool_uses_20250919", "cleared_tool_uses": 4, "cleared_input_tokens": 9000}]
    steps = [
        {"type": "compaction", "input_tokens": 900, "output_tokens": 30},
        {"type": "message", "input_tokens": 50},
    ]
    *finish, stopped = end("tool_use", usage={"output_tokens": 40, "iterations": steps})
    finish[0][1]["context_management"] = {"applied_edits": applied}
    message = assemble(
        [
            start(),
            block_start(0, {"type": "compaction", "content": None}),
            delta(0, type="compaction_delta", content="The story so far."),
            stop(0),
            *finish,
            stopped,
        ]
    )
    assert message.content == [{"type": "compaction", "content": "The story so far."}]
    assert message.context_management == {"applied_edits": applied}
    assert message.usage["iterations"] == steps


async def test_mode_api_sends_what_the_sdks_beta_create_sends(nursery):
    from daemon.agent.anthropic_provider import CONTEXT_BETAS, AnthropicProvider

    from .anthropic_sdk_reference import complete_then_sdk_create
    from .fakes.anthropic_api import FakeAnthropicAPI, message

    api = FakeAnthropicAPI(message("first"), message("second"))
    await nursery.start(api.serve)
    policy = ContextPolicy(mode="api")
    provider = AnthropicProvider("sk-ant-k", base_url=api.url, max_retries=0, pools=1, context=policy)
    request = ModelRequest(system="S", tools=tool_definitions(), messages=conversation(2), max_tokens=100)
    await complete_then_sdk_create(
        provider, request, beta=True, context_management=api_edits(policy), betas=CONTEXT_BETAS.split(",")
    )
    ours, sdks = api.requests
    assert ours.raw_body == sdks.raw_body
    assert ours.headers["anthropic-beta"] == sdks.headers["anthropic-beta"] == CONTEXT_BETAS
