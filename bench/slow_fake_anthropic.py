"""The fake Messages API with a model that takes ``--delay`` seconds per turn, for load runs.

Every ``POST /v1/messages`` waits ``--delay`` s, then answers (streamed like the real API, via
``tests/fakes/anthropic_api.py``) with a ``tool_use`` that views ``README.md`` or ``calc.py``
(alternately), until the conversation holds ``--turns - 1`` assistant turns; then with an
``end_turn`` text. Stateless: the reply depends only on the request, so any number of tasks can
share it. Requests are not recorded (thousands of them). Runs in its own process; prints
``{"url": ...}`` once listening and serves until stdin closes.

    .venv/bin/python bench/slow_fake_anthropic.py --delay 1 --turns 6
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.anthropic_api import (
    FakeAnthropicAPI,
    RecordedRequest,
    message,
    text,
    tool_use,
    validate_request,
)


class SlowFakeAnthropicAPI(FakeAnthropicAPI):
    def __init__(self, *, delay_s: float, turns: int) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.turns = turns
        self.served = 0

    def reply_for(self, body: dict[str, Any]):
        done = sum(1 for m in body["messages"] if m.get("role") == "assistant")
        if done + 1 >= self.turns:
            return message(text(f"Done after {done + 1} turns: nothing needed changing."))
        # Cycle through three paths: the same call again and again, or two calls in turn, would
        # be "stuck".
        path = ("README.md", "calc.py", ".")[done % 3]
        return message(
            text(f"Turn {done + 1}: reading {path}."),
            tool_use(
                f"toolu_{done + 1:03d}", "str_replace_based_edit_tool", {"command": "view", "path": path}
            ),
        )

    async def _respond(self, rec: RecordedRequest, receive: Any, send: Any) -> None:
        self.requests.clear()  # nothing is inspected afterwards: keep memory flat
        if rec.method == "POST" and rec.path == "/v1/messages" and validate_request(rec.body) is None:
            await trio.sleep(self.delay_s)
            # No checkpoint between pushing the reply and the base class popping it.
            self.push(self.reply_for(rec.body))
            self.served += 1
        await super()._respond(rec, receive, send)


async def main(delay_s: float, turns: int) -> None:
    await serve_until_stdin_closes(SlowFakeAnthropicAPI(delay_s=delay_s, turns=turns))


async def serve_until_stdin_closes(fake: SlowFakeAnthropicAPI) -> None:
    """Serve ``fake``, print ``{"url": ...}`` once listening, stop when the parent closes stdin."""
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with trio.open_nursery() as nursery:
        url = await nursery.start(fake.serve)
        print(json.dumps({"url": url}), flush=True)
        while await stdin.receive_some(1024):
            pass
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=1.0)
    parser.add_argument("--turns", type=int, default=6)
    args = parser.parse_args()
    trio.run(main, args.delay, args.turns)
