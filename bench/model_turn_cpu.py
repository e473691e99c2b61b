"""CPU per model turn in ``AnthropicProvider.complete``: the lean SSE parser vs the SDK's stream.

    .venv/bin/python bench/model_turn_cpu.py [--conversations 20] [--turns 6] [--pieces 3]
                                             [--rounds 5] [--json]

The fake Messages API of ``slow_fake_anthropic.py`` (no delay) runs in another process; this
one runs ``--conversations`` conversations at once, each ``--turns`` turns shaped like the agent
loop's (its system prompt size, its tool schemas, a text block and a ``tool_use`` per turn, the
tool results sent back). ``--pieces``: how many ``text_delta`` / ``input_json_delta`` events
each block is cut into (the fake's default is 3; Claude sends a delta every few tokens, so a
real turn has tens to hundreds). Each round measures both implementations, in alternating
order, by this process's CPU time (all threads) divided by the turns made; the median of the
rounds is reported. Bounded: ``--rounds`` × 2 × conversations × turns requests.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import emit, machine
from ws_common import Child

SYSTEM = "You are a careful software engineer working for a user. " * 12  # ~ the loop's prompt


async def serve(pieces: int, turns: int) -> None:
    """The child: the slow fake with no delay, its deltas cut into ``pieces`` pieces."""
    from slow_fake_anthropic import SlowFakeAnthropicAPI, serve_until_stdin_closes

    import tests.fakes.anthropic_api as fake_api

    original = fake_api._chunks
    fake_api._chunks = lambda s, n=3: original(s, pieces)
    await serve_until_stdin_closes(SlowFakeAnthropicAPI(delay_s=0.0, turns=turns))


async def conversation(provider: Any, turns: int, tools: list[dict]) -> int:
    from daemon.agent.model import ModelRequest

    history: list[dict] = [{"role": "user", "content": [{"type": "text", "text": "Look around."}]}]
    made = 0
    for _ in range(turns):
        request = ModelRequest(system=SYSTEM, tools=tools, messages=history, max_tokens=8192)
        reply = await provider.complete(request, on_text_delta=lambda text: None)
        made += 1
        history = [*history, {"role": "assistant", "content": reply.content}]
        uses = [b for b in reply.content if b["type"] == "tool_use"]
        if not uses:
            break
        history.append(
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": b["id"], "content": "x = 1\n" * 40} for b in uses
                ],
            }
        )
    return made


async def measure(make: Any, conversations: int, turns: int, tools: list[dict]) -> float:
    """Microseconds of this process's CPU per model turn, over ``conversations`` at once."""
    provider = make()
    try:
        await conversation(provider, 1, tools)  # warm up: connection pool, imports, caches
        made = 0

        async def one() -> None:
            nonlocal made
            n = await conversation(provider, turns, tools)
            made += n  # not `made += await ...`: that reads `made` before the await

        cpu0 = time.process_time()
        async with trio.open_nursery() as nursery:
            for _ in range(conversations):
                nursery.start_soon(one)
        cpu = time.process_time() - cpu0
    finally:
        await provider.aclose()
    return cpu / made * 1e6


async def run(conversations: int, turns: int, pieces: int, rounds: int) -> dict[str, Any]:
    from daemon.agent.anthropic_provider import AnthropicProvider
    from daemon.agent.tools import tool_definitions
    from tests.anthropic_sdk_reference import SdkStreamProvider

    tmp = Path(tempfile.mkdtemp(prefix="agentd-turncpu-", dir="/tmp"))
    fake = Child(
        [sys.executable, __file__, "--serve", "--pieces", str(pieces), "--turns", str(turns)],
        stderr_path=tmp / "fake.err",
        cwd=ROOT,
    )
    tools = tool_definitions()
    impls = {"lean": AnthropicProvider, "sdk_stream": SdkStreamProvider}
    results: dict[str, list[float]] = {name: [] for name in impls}
    try:
        url = fake.expect(timeout=60)["url"]
        for i in range(rounds):
            order = list(impls) if i % 2 == 0 else list(reversed(impls))
            for name in order:
                make = partial(impls[name], "bench-key", base_url=url, max_retries=0)
                us = await measure(make, conversations, turns, tools)
                results[name].append(round(us, 1))
    finally:
        fake.stop(10)
    med = {name: statistics.median(v) for name, v in results.items()}
    return {
        "conversations": conversations,
        "turns": turns,
        "pieces": pieces,
        "rounds": rounds,
        "cpu_us_per_turn": {name: round(v, 1) for name, v in med.items()},
        "speedup": round(med["sdk_stream"] / med["lean"], 2),
        "rounds_us": results,
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=20)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--pieces", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, args.pieces, args.turns)
        return
    emit(trio.run(run, args.conversations, args.turns, args.pieces, args.rounds), args.json)


if __name__ == "__main__":
    main()
