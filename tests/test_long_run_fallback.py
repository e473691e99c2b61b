"""Mode "api" on an API that refuses context management falls back to the client path.

Through the real anthropic SDK and ``AnthropicProvider`` against the fake Messages API told to
refuse context management as the API does (a 400 ``invalid_request_error``: an unknown
``anthropic-beta`` value, or edits the model does not support): the turn is asked again without
the betas, agentd clears the conversation itself from then on, for every task on that model,
and says so once in the log; a 400 without context management sent is the task's end, as any.
"""

from __future__ import annotations

import logging

import pytest
import trio

from daemon.agent.anthropic_provider import AnthropicProvider
from daemon.agent.context_window import CLEARED, ContextPolicy
from daemon.states import TaskStatus

from .agent_env import CLAUDE_KEY, agent_supervisor, bare_repo
from .fakes.anthropic_api import FakeAnthropicAPI, RecordedRequest, bad_request, message, tool_use
from .helpers import wait_status
from .test_long_run import BIG_FILE

# Small enough that a few 6 KB outputs pass the clearing trigger on the client path.
POLICY = ContextPolicy(
    mode="api",
    window_tokens=20_000,
    clear_at_tokens=3_000,
    clear_at_least_tokens=1_000,
    keep_tool_results=1,
    compact_at_tokens=15_000,
)


def reads(task: int, n: int = 4) -> list:
    calls = [
        message(
            f"Step {i}.", tool_use(f"toolu_{task}_{i}", "bash", {"command": f"head -c {6000 + i} big.txt"})
        )
        for i in range(1, n + 1)
    ]
    return [*calls, message("Done.")]


def managed(rec: RecordedRequest) -> bool:
    return "context_management" in rec.body or "anthropic-beta" in rec.headers


def cleared(rec: RecordedRequest) -> bool:
    return any(b.get("content") == CLEARED for m in rec.body["messages"] for b in m["content"])


async def run_tasks(store, hub, tmp_path, fake: FakeAnthropicAPI, tasks: int) -> list:
    """``tasks`` tasks one after the other on one provider and one runner (the daemon's life)."""
    done = []
    async with trio.open_nursery() as nursery:
        url = await nursery.start(fake.serve)
        provider = AnthropicProvider(CLAUDE_KEY, base_url=url, max_retries=0, pools=1, context=POLICY)
        repo = str(bare_repo(tmp_path, {"README.md": "# big\n", "big.txt": BIG_FILE}))
        async with agent_supervisor(store, hub, tmp_path, provider, context=POLICY, stuck_repeats=5) as sup:
            alice = await store.upsert_user("alice")
            for _ in range(tasks):
                task, _ = await sup.submit(user_id=alice.id, repo_url=repo, prompt="Read big.txt.")
                await wait_status(hub, task.id, TaskStatus.SUCCEEDED, TaskStatus.FAILED)
                done.append(await store.get_task(task.id))
        await provider.aclose()
        nursery.cancel_scope.cancel()
    return done


@pytest.mark.parametrize("refusal", ["beta", "model"])
async def test_a_refused_api_path_falls_back_to_the_client_path_for_the_daemons_life(
    store, hub, tmp_path, caplog, refusal
):
    fake = FakeAnthropicAPI(api_key=CLAUDE_KEY, refuse_context_management=refusal)  # type: ignore[arg-type]
    fake.push(*reads(1), *reads(2))
    with caplog.at_level(logging.WARNING, logger="daemon.agent.anthropic_provider"):
        first, second = await run_tasks(store, hub, tmp_path, fake, tasks=2)
    assert first.status is TaskStatus.SUCCEEDED, first.error
    assert second.status is TaskStatus.SUCCEEDED, second.error
    # The first request asked for context management and was refused (a 400, nothing served) ...
    refused, *rest = fake.requests
    assert managed(refused) and not refused.usage
    # ... the same turn was asked again without it, and no request did after, in either task.
    assert rest[0].body["messages"] == refused.body["messages"]
    assert not any(managed(r) for r in rest) and all(r.usage for r in rest)
    assert len(rest) == 2 * 5  # every turn of both tasks once: no other retry
    # agentd cleared old results itself (the client path), in both tasks.
    assert any(cleared(r) for r in rest[:5]) and any(cleared(r) for r in rest[5:])
    warnings = [r for r in caplog.records if "refused context management" in r.getMessage()]
    assert len(warnings) == 1 and "claude-sonnet" in warnings[0].getMessage()
    assert "client path" in warnings[0].getMessage()


async def test_the_fallback_is_taken_once_a_400_after_it_ends_the_task(store, hub, tmp_path):
    fake = FakeAnthropicAPI(api_key=CLAUDE_KEY, refuse_context_management="beta")
    # Asked again without context management, the API still says no: the task's end, not a loop.
    fake.push(bad_request("context_management: Extra inputs are not permitted"))
    (task,) = await run_tasks(store, hub, tmp_path, fake, tasks=1)
    assert task.status is TaskStatus.FAILED
    assert "anthropic: 400 invalid_request_error: context_management" in task.error
    assert len(fake.requests) == 2 and managed(fake.requests[0]) and not managed(fake.requests[1])


async def test_requests_refused_at_once_make_one_warning_and_each_is_said_refused(nursery, caplog):
    from daemon.agent.context_window import ContextManagementRefused
    from daemon.agent.model import ModelRequest

    fake = FakeAnthropicAPI(message("one"), message("two"), refuse_context_management="model")
    await nursery.start(fake.serve)
    provider = AnthropicProvider("sk-ant-k", base_url=fake.url, max_retries=0, pools=1, context=POLICY)
    request = ModelRequest(system="S", tools=[], messages=[{"role": "user", "content": "hi"}], max_tokens=10)
    outcomes: list[str] = []

    async def call() -> None:
        try:
            outcomes.append((await provider.complete(request)).content[0]["text"])
        except ContextManagementRefused as err:
            outcomes.append(f"refused {err.model}")

    with caplog.at_level(logging.WARNING, logger="daemon.agent.anthropic_provider"):
        async with trio.open_nursery() as calls:
            calls.start_soon(call)
            calls.start_soon(call)
        await call()  # after the refusal: sent without context management, answered
    await provider.aclose()
    refused = [o for o in outcomes if o.startswith("refused")]
    assert 1 <= len(refused) <= 2 and set(refused) == {f"refused {provider.model}"}
    assert outcomes[-1] in ("one", "two") and not managed(fake.requests[-1])
    assert sum("refused context management" in r.getMessage() for r in caplog.records) == 1


def has_compaction(rec: RecordedRequest) -> bool:
    return any(b.get("type") == "compaction" for m in rec.body["messages"] for b in m["content"])


async def test_a_task_the_api_compacted_goes_on_after_the_fallback_with_the_summary_as_a_user_turn(
    store, hub, tmp_path
):
    # The API compacts once the prompt passes 8,000 tokens (about five 6 KB outputs); right after
    # that it refuses the betas. The stored compaction block then needs to go without them.
    policy = ContextPolicy(
        mode="api",
        window_tokens=30_000,
        clear_at_tokens=3_000,
        clear_at_least_tokens=1_000,
        keep_tool_results=1,
        compact_at_tokens=8_000,
    )
    fake = FakeAnthropicAPI(api_key=CLAUDE_KEY)

    def refuse_after_compaction(rec: RecordedRequest) -> None:
        if rec.compacted:
            fake.refuse_context_management = "beta"

    fake.answer = refuse_after_compaction  # type: ignore[assignment]
    fake.push(*reads(1, n=9))
    async with trio.open_nursery() as nursery:
        url = await nursery.start(fake.serve)
        provider = AnthropicProvider(CLAUDE_KEY, base_url=url, max_retries=0, pools=1, context=policy)
        repo = str(bare_repo(tmp_path, {"README.md": "# big\n", "big.txt": BIG_FILE}))
        async with agent_supervisor(store, hub, tmp_path, provider, context=policy, stuck_repeats=5) as sup:
            alice = await store.upsert_user("alice")
            task, _ = await sup.submit(user_id=alice.id, repo_url=repo, prompt="Read big.txt.")
            await wait_status(hub, task.id, TaskStatus.SUCCEEDED, TaskStatus.FAILED)
            task = await store.get_task(task.id)
        await provider.aclose()
        nursery.cancel_scope.cancel()
    assert task.status is TaskStatus.SUCCEEDED, task.error
    at = next(i for i, r in enumerate(fake.requests) if r.compacted)
    refused = fake.requests[at + 1]
    assert managed(refused) and has_compaction(refused) and not refused.usage
    after = fake.requests[at + 2 :]
    assert after and all(r.usage for r in after)  # each one answered: no 400 after the fallback
    assert not any(managed(r) or has_compaction(r) for r in after)
    # What the client path sends for a summary of its own: the API's text as the first user turn,
    # then the rest of the compacting reply (its tool call, answered by the result after it).
    first = after[0].body["messages"]
    assert first[0]["role"] == "user" and "Summary (fake) of" in first[0]["content"][0]["text"]
    assert first[0]["content"][0]["text"].startswith("[agentd] Summary of the conversation's first")
    assert first[1]["role"] == "assistant" and first[1]["content"][-1]["type"] == "tool_use"
    assert first[2]["content"][0]["tool_use_id"] == first[1]["content"][-1]["id"]
    assert fake.pending == 0
