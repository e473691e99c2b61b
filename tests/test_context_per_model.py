"""The context window per model: a model's row carries its window, and the thresholds follow it.

``context_window_tokens`` (and the clear / compact thresholds) is the default; a task's model
has its own window (the built-in one of a Claude model, or ``context_window_tokens`` in its
``[models."NAME"]`` row). A smaller window scales the thresholds down in proportion, so a
small-window model is never sent more than it takes; a larger one leaves them as set. Through
the real SDK and the fake Messages API, which answers 400 past its window.
"""

from __future__ import annotations

import pytest
import trio

from daemon.agent.anthropic_provider import AnthropicProvider
from daemon.agent.context_keeper import ContextKeeper
from daemon.agent.context_window import CLEARED, ContextPolicy, policy_for
from daemon.agent.model import ModelRequest, context_window
from daemon.agent.scripted_provider import ScriptedProvider
from daemon.config import load_settings
from daemon.errors import ConfigError
from daemon.states import TaskStatus

from .agent_env import CLAUDE_KEY, FIX_SCRIPT, agent_supervisor, bare_repo
from .fakes.anthropic_api import FakeAnthropicAPI, message, tool_use
from .helpers import wait_status
from .test_long_run import BIG_FILE, summarizer

ROW = "input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 5.0\n"


def settings_with(tmp_path, extra: str = "", small_window: int | None = 50_000):
    config = tmp_path / "agentd.toml"
    window = f"context_window_tokens = {small_window}\n" if small_window else ""
    config.write_text(
        'model = "anthropic"\nallowed_models = ["claude-haiku-4-5", "small-model"]\n'
        + extra
        + f'[models."small-model"]\n{ROW}{window}'
    )
    return load_settings(config_file=config, env={"ANTHROPIC_API_KEY": "k"})


def thresholds(policy: ContextPolicy) -> tuple[int, int, int, int]:
    return (
        policy.window_tokens,
        policy.clear_at_tokens,
        policy.clear_at_least_tokens,
        policy.compact_at_tokens,
    )


def test_built_in_windows_are_anthropics_and_an_operator_row_overrides_them():
    assert context_window("claude-sonnet-5-5") == 1_000_000
    assert context_window("claude-fable-5-1-20261001") == 1_000_000
    assert context_window("claude-opus-4-6") == 1_000_000
    assert context_window("claude-sonnet-4-6") == 1_000_000
    assert context_window("claude-sonnet-4-5-20250929") == 200_000  # 1M only with a beta
    assert context_window("claude-haiku-4-5") == 200_000
    assert context_window("claude-opus-4-1") == 200_000
    assert context_window("house-model") is None  # not Claude: the setting applies
    assert context_window("claude-haiku-4-5", {"claude-haiku-4-5": 64_000}) == 64_000


def test_a_smaller_window_scales_the_thresholds_a_larger_one_keeps_them(tmp_path):
    policy = policy_for(settings_with(tmp_path))
    assert policy.default_model == "claude-sonnet-5-5"
    default = thresholds(ContextPolicy())  # the settings' defaults: 200k, 100k, 40k, 150k
    # The default model (1M): its window, the thresholds as set (a larger prompt costs more).
    assert thresholds(policy.for_model(None)) == (1_000_000, *default[1:])
    assert policy.for_model("claude-sonnet-5-5") == policy.for_model(None)
    assert thresholds(policy.for_model("claude-haiku-4-5")) == default  # 200k: the setting's
    assert thresholds(policy.for_model("small-model")) == (50_000, 25_000, 10_000, 37_500)
    assert policy.for_model("not-allowed-any-more") is policy
    # Settings sized for 1M: a 200k model gets them scaled to its window.
    big = (
        "context_window_tokens = 1000000\n"
        "context_clear_at_tokens = 500000\ncontext_compact_at_tokens = 750000\n"
    )
    policy = policy_for(settings_with(tmp_path, big))
    assert thresholds(policy.for_model("claude-haiku-4-5")) == (200_000, 100_000, 8_000, 150_000)
    assert thresholds(policy.for_model(None)) == (1_000_000, 500_000, 40_000, 750_000)
    # A row without a window: the setting's.
    policy = policy_for(settings_with(tmp_path, small_window=None))
    assert policy.for_model("small-model") is policy


def test_a_window_that_puts_the_thresholds_out_of_order_is_refused_at_start(tmp_path):
    tiny = (
        "context_window_tokens = 10000000\ncontext_clear_at_tokens = 100\ncontext_compact_at_tokens = 200\n"
    )
    with pytest.raises(ConfigError) as refused:
        policy_for(settings_with(tmp_path, tiny, small_window=1000))
    assert "model 'small-model': its context window of 1000 tokens" in str(refused.value)
    assert "context_window_tokens" in str(refused.value)
    with pytest.raises(ConfigError, match="context_window_tokens"):  # the row's own minimum
        settings_with(tmp_path, small_window=999)


def test_the_keeper_takes_its_task_models_thresholds(tmp_path):
    policy = policy_for(settings_with(tmp_path))
    provider = ScriptedProvider(FIX_SCRIPT)
    assert ContextKeeper(policy, provider, "small-model").policy.compact_at_tokens == 37_500
    assert ContextKeeper(policy, provider, None).policy.compact_at_tokens == 150_000


async def test_mode_api_sends_each_models_own_triggers(nursery, tmp_path):
    fake = FakeAnthropicAPI(message("one"), message("two"))
    await nursery.start(fake.serve)
    policy = policy_for(settings_with(tmp_path, 'context_management = "api"\n'))
    provider = AnthropicProvider("sk-ant-k", base_url=fake.url, max_retries=0, pools=1, context=policy)
    for model in ("small-model", None):
        request = ModelRequest(
            system="S", tools=[], messages=[{"role": "user", "content": "hi"}], max_tokens=10
        )
        await provider.complete(ModelRequest(**{**request.__dict__, "model": model}))
    await provider.aclose()
    triggers = [[e["trigger"]["value"] for e in r.body["context_management"]["edits"]] for r in fake.requests]
    assert triggers == [[25_000, 37_500], [100_000, 150_000]]
    assert fake.requests[0].body["context_management"]["edits"][0]["clear_at_least"]["value"] == 10_000


async def test_a_task_on_a_small_window_model_is_never_sent_more_than_the_window(store, hub, tmp_path):
    # The settings are sized for 40k tokens; the task's model takes 10k, as the fake API does
    # (a 400 "prompt is too long" past it). Twelve reads of about 1,500 tokens each.
    policy = ContextPolicy(
        mode="client",
        window_tokens=40_000,
        clear_at_tokens=20_000,
        clear_at_least_tokens=4_000,
        keep_tool_results=1,
        compact_at_tokens=30_000,
        windows=(("small-model", 10_000),),
        default_model="claude-sonnet-5-5",
    )
    small = policy.for_model("small-model")
    assert (small.clear_at_tokens, small.clear_at_least_tokens, small.compact_at_tokens) == (
        5_000,
        1_000,
        7_500,
    )
    fake = FakeAnthropicAPI(api_key=CLAUDE_KEY, context_window=10_000)
    fake.answer = summarizer
    fake.push(
        *(
            message(f"Step {i}.", tool_use(f"toolu_{i}", "bash", {"command": f"head -c {6000 + i} big.txt"}))
            for i in range(1, 13)
        ),
        message("Done."),
    )
    async with trio.open_nursery() as nursery:
        url = await nursery.start(fake.serve)
        provider = AnthropicProvider(CLAUDE_KEY, base_url=url, max_retries=0, pools=1, context=policy)
        repo = str(bare_repo(tmp_path, {"README.md": "# big\n", "big.txt": BIG_FILE}))
        async with agent_supervisor(store, hub, tmp_path, provider, context=policy, stuck_repeats=5) as sup:
            alice = await store.upsert_user("alice")
            task, _ = await sup.submit(
                user_id=alice.id, repo_url=repo, prompt="Read big.txt.", model="small-model"
            )
            await wait_status(hub, task.id, TaskStatus.SUCCEEDED, TaskStatus.FAILED)
            task = await store.get_task(task.id)
        await provider.aclose()
        nursery.cancel_scope.cancel()
    assert task.status is TaskStatus.SUCCEEDED, task.error
    assert all(r.body["model"] == "small-model" for r in fake.requests)
    # Every request answered (no 400 past the window) and none over the scaled compaction trigger.
    assert all(r.usage for r in fake.requests)
    assert max(r.prompt_tokens for r in fake.requests) <= small.compact_at_tokens
    cleared = [
        r
        for r in fake.requests
        if any(b.get("content") == CLEARED for m in r.body["messages"] for b in m["content"])
    ]
    assert cleared  # at the model's own trigger: the settings' (20,000) is never reached
    assert fake.pending == 0
