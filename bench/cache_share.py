"""Share of input tokens read from the prompt cache over a long task, and its cost in USD.

    .venv/bin/python bench/cache_share.py [--turns 30 | --quick] [--json]

One task through the real agent loop and ``AnthropicProvider`` against the fake Messages API
with prompt-cache accounting by Anthropic's rules (``tests/fakes/prompt_cache.py``): each turn
calls ``bash`` for a listing that grows turn by turn (``seq 1 N``, N rising, so no two calls
are alike and stuck detection stays quiet), in a real sandbox, then a last turn ends the task.
The figure is the share of input tokens read from the cache over turns 2..N (turn 1 has
nothing to read), from the usage the fake reported; the cost is the task's, from the price
table (``daemon/agent/model.py``).

Twice: without context clearing (every tool output kept), and with agentd's own clearing
(mode "client", ``daemon/agent/context_window.py``) at the default thresholds (a 200,000-token
window, clearing past 100,000 in batches of at least 40,000, the last 3 results kept); the
outputs grow enough that the prompt passes 100,000 tokens within 30 turns, and the run with
clearing fails unless it cleared.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import emit, machine

from daemon.agent.anthropic_provider import DEFAULT_MODEL
from daemon.agent.context_window import ContextPolicy
from daemon.events import EventHub
from daemon.states import TaskStatus
from daemon.store import SqliteStore
from tests.agent_env import run_with_claude
from tests.conftest import fake_wall
from tests.fakes.anthropic_api import MessageReply, message, tool_use
from tests.fakes.prompt_cache import PromptCache

# Turn i's tool output is `seq 1 200*i`, about 1 KiB more each turn: the prompt passes the
# default trigger (100,000 tokens) at turn 27 or so; without clearing the last is about 125,000.
LINES_PER_TURN = 200

CLEARING = ContextPolicy(mode="client")  # the defaults
WITHOUT = ContextPolicy(mode="off")


TOKEN_KEYS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def growing_replies(turns: int) -> list[MessageReply]:
    """``turns`` model replies: ``turns - 1`` distinct ``bash`` calls with growing output, then
    a final answer."""
    calls = [
        message(
            f"Listing step {i}.", tool_use(f"toolu_{i}", "bash", {"command": f"seq 1 {LINES_PER_TURN * i}"})
        )
        for i in range(1, turns)
    ]
    return [*calls, message("Done: every listing was read.")]


def read_share(usages: list[dict[str, int]]) -> float:
    """Tokens read from the cache over all input tokens (read + written + uncached)."""
    read = sum(u.get("cache_read_input_tokens", 0) for u in usages)
    total = sum(
        u.get("input_tokens", 0)
        + u.get("cache_read_input_tokens", 0)
        + u.get("cache_creation_input_tokens", 0)
        for u in usages
    )
    return read / total if total else 0.0


async def run_cache_task(
    root: Path, store: SqliteStore, hub: EventHub, turns: int, context: ContextPolicy = WITHOUT
) -> dict[str, Any]:
    """Run the task with ``context``; its status, per-turn usage as the fake reported it, share
    and cost.

    Cancellation: the fake API and the supervisor are cancelled with the caller.
    """
    fake, done, events = await run_with_claude(
        store,
        hub,
        root,
        growing_replies(turns),
        prompt="List.",
        model=DEFAULT_MODEL,
        prompt_cache=PromptCache(),
        stuck_repeats=5,
        context=context,
    )
    assert done is not None  # submitted above; tasks are never deleted
    usages = [r.usage for r in fake.requests if r.usage]
    cleared = [e.data.get("cleared_tokens", 0) for e in events if e.type == "agent.usage"]
    return {
        "context_management": context.mode,
        "cleared_tokens_last_turn": cleared[-1] if cleared else 0,
        "clearings": sum(1 for a, b in zip([0, *cleared], cleared, strict=False) if b > a),
        "largest_prompt_tokens": max(r.prompt_tokens for r in fake.requests),
        "status": done.status.value,
        "error": done.error,
        "model": DEFAULT_MODEL,
        "turns": len(usages),
        "usages": usages,
        "read_share_turns_2_on": round(read_share(usages[1:]), 4),
        "cost_usd": round(done.usage.cost_usd, 4),
        "input_tokens_total": sum(sum(u[k] for k in TOKEN_KEYS) for u in usages),
    }


async def _one(turns: int, context: ContextPolicy) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="agentd-cache-") as tmp:
        root = Path(tmp)
        store = await SqliteStore.open(root / "data")
        store.now = fake_wall
        try:
            return await run_cache_task(root, store, EventHub(store), turns, context)
        finally:
            await store.aclose()


async def _main(turns: int) -> dict[str, Any]:
    """Both runs: the figures without clearing at the top (as before), those with under "with"."""
    without = await _one(turns, WITHOUT)
    return {**without, "with_clearing": await _one(turns, CLEARING)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="8 turns, to try the command")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = trio.run(_main, 8 if args.quick else args.turns)
    result.pop("usages")
    result["with_clearing"].pop("usages")
    emit({**result, "machine": machine()}, args.json)
    for run in (result, result["with_clearing"]):
        if run["status"] != TaskStatus.SUCCEEDED.value:
            raise SystemExit(f"the task did not succeed ({run['context_management']}): {run['error']}")
    if not args.quick and not result["with_clearing"]["clearings"]:
        raise SystemExit("the run with clearing cleared nothing: the outputs did not pass the trigger")


if __name__ == "__main__":
    main()
