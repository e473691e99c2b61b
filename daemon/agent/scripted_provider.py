"""A model that replays a JSON script: the demo, the tests and the benchmarks run on it.

Script format::

    {"turns": [
        {"content": [<Anthropic content blocks>],   # required, non-empty
         "stop_reason": "max_tokens",               # optional; default tool_use / end_turn
         "delay_s": 1.5,                            # optional; trio.sleep before replying
         "needs_max_tokens": 20000},                # optional; see below
        ...
    ]}

A turn with ``needs_max_tokens`` is cut off by the output limit when the request's
``max_tokens`` is below it: its last block is lost (a tool_use: dropped, and the reply says
``cut_tool_use``; a text: cut in half), the stop reason is ``max_tokens`` and the output
counted is ``max_tokens``. The same turn with a large enough ``max_tokens`` plays whole.

Which turn is played is derived from the request alone: turn N answers a conversation that
already holds N assistant messages (counting those a compaction summary replaced). A task
resumed from its stored conversation after a crash therefore continues exactly where it
stopped, with no state kept in the provider. A request for a summary
(``context_window.summary_request``) gets a deterministic one.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import trio

from daemon.agent.context_summary import covered_turns, is_summary_request, scripted_summary
from daemon.agent.model import STOP_REASONS, ModelReply, ModelRequest, Usage
from daemon.errors import PermanentError

__all__ = ["FINISHED_TEXT", "ScriptError", "ScriptedProvider"]

FINISHED_TEXT = "(script finished)"

_TURN_KEYS = frozenset({"content", "stop_reason", "delay_s", "needs_max_tokens"})


class ScriptError(PermanentError):
    """The script is malformed; the message says where (``turns[2].content[0]``) and what.

    A ``PermanentError``: replaying a broken script again cannot help, and at startup the CLI
    reports it like any other agentd error.
    """

    code = "invalid_script"


class ScriptedProvider:
    """A ``ModelProvider`` that replays ``script`` (validated here; raises ``ScriptError``)."""

    name = "scripted"
    model = "scripted"

    def __init__(self, script: object) -> None:
        # Our own copy: later changes to the caller's dict cannot alter the replay.
        self._turns: list[dict] = copy.deepcopy(_validated_turns(script))

    @classmethod
    def from_file(cls, path: str | Path) -> ScriptedProvider:
        """Load a script file; ``ScriptError`` names the file when it is unreadable or bad."""
        try:
            script = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as err:
            raise ScriptError(f"script {path}: cannot read: {err.strerror or err}") from err
        except ValueError as err:
            raise ScriptError(f"script {path}: not valid JSON: {err}") from err
        try:
            return cls(script)
        except ScriptError as err:
            raise ScriptError(f"script {path}: {err.message}") from None

    def __len__(self) -> int:
        return len(self._turns)

    async def complete(
        self, request: ModelRequest, on_text_delta: Callable[[str], None] | None = None
    ) -> ModelReply:
        """Reply with the turn the conversation has reached.

        Cancellation: only the ``delay_s`` sleep can be interrupted; nothing is returned and
        nothing changes, so the same request later plays the same turn.
        """
        if is_summary_request(request.messages):  # compaction: a summary, not a turn of the script
            summary = [{"type": "text", "text": scripted_summary(request.messages)}]
            return ModelReply(summary, "end_turn", _usage(request, summary), self.model)
        # The turns a summary replaced were played too.
        played = covered_turns(request.messages)
        index = played + sum(1 for m in request.messages if m.get("role") == "assistant")
        if index < len(self._turns):
            turn = self._turns[index]
            content = copy.deepcopy(turn["content"])
            stop_reason = turn.get("stop_reason") or (
                "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
            )
            delay = turn.get("delay_s", 0)
            needs = turn.get("needs_max_tokens")
            if needs is not None and request.max_tokens < needs:
                if delay:
                    await trio.sleep(delay)
                return _cut_off(content, request)
        else:
            content, stop_reason, delay = [{"type": "text", "text": FINISHED_TEXT}], "end_turn", 0
        if delay:
            await trio.sleep(delay)
        if on_text_delta is not None:
            for block in content:
                if block["type"] == "text":
                    for piece in _pieces(block["text"]):
                        on_text_delta(piece)
        return ModelReply(
            content=content, stop_reason=stop_reason, usage=_usage(request, content), model=self.model
        )


def _usage(request: ModelRequest, content: list[dict]) -> Usage:
    """Synthetic counts in the usual ~4 characters per token, so budgets and metrics move."""
    sent = json.dumps([request.system, request.tools, request.messages])
    return Usage(input_tokens=len(sent) // 4, output_tokens=len(json.dumps(content)) // 4)


def _cut_off(content: list[dict], request: ModelRequest) -> ModelReply:
    """``content`` as the output limit cuts it off inside its last block."""
    *kept, last = content
    if last["type"] == "text" and len(last["text"]) > 1:
        kept.append({**last, "text": last["text"][: len(last["text"]) // 2]})
    sent = json.dumps([request.system, request.tools, request.messages])
    usage = Usage(input_tokens=len(sent) // 4, output_tokens=request.max_tokens)
    return ModelReply(
        content=kept,
        stop_reason="max_tokens",
        usage=usage,
        model=ScriptedProvider.model,
        cut_tool_use=last["type"] == "tool_use",
    )


def _pieces(text: str, n: int = 3) -> list[str]:
    """``text`` in up to ``n`` chunks, as a streaming model would deliver it."""
    size = max(1, -(-len(text) // n))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _validated_turns(script: object) -> list[dict]:
    """The script's turns; ``ScriptError`` says where the script is malformed."""
    if not isinstance(script, dict):
        raise ScriptError(f'script must be a JSON object {{"turns": [...]}}, not {_kind(script)}')
    if set(script) != {"turns"}:
        extra = sorted(set(script) - {"turns"})
        if extra:
            raise ScriptError(f"script: unknown key {extra[0]!r}")
        raise ScriptError('script: missing "turns"')
    turns = script["turns"]
    if not isinstance(turns, list):
        raise ScriptError(f'script: "turns" must be a list, not {_kind(turns)}')
    for t, turn in enumerate(turns):
        where = f"turns[{t}]"
        if not isinstance(turn, dict):
            raise ScriptError(f"{where}: must be an object, not {_kind(turn)}")
        unknown = sorted(set(turn) - _TURN_KEYS)
        if unknown:
            allowed = ", ".join(sorted(_TURN_KEYS))
            raise ScriptError(f"{where}: unknown key {unknown[0]!r} (allowed: {allowed})")
        content = turn.get("content")
        if not isinstance(content, list) or not content:
            raise ScriptError(f'{where}: "content" must be a non-empty list of content blocks')
        seen_ids: set[str] = set()
        for b, block in enumerate(content):
            _validate_block(block, f"{where}.content[{b}]", seen_ids)
        stop = turn.get("stop_reason")
        if stop is not None and stop not in STOP_REASONS:
            known = ", ".join(sorted(STOP_REASONS))
            raise ScriptError(f"{where}: stop_reason {stop!r} is not one of {known}")
        delay = turn.get("delay_s", 0)
        is_number = isinstance(delay, (int, float)) and not isinstance(delay, bool)
        if not is_number or not 0 <= delay < float("inf"):
            raise ScriptError(f"{where}: delay_s must be a number of seconds >= 0, not {delay!r}")
        needs = turn.get("needs_max_tokens", 1)
        if not isinstance(needs, int) or isinstance(needs, bool) or needs < 1:
            raise ScriptError(f"{where}: needs_max_tokens must be a whole number >= 1, not {needs!r}")
    return turns


def _validate_block(block: object, where: str, seen_ids: set[str]) -> None:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise ScriptError(f'{where}: a content block must be an object with a string "type"')
    kind = block["type"]
    if kind == "text":
        if not isinstance(block.get("text"), str) or not block["text"]:
            raise ScriptError(f'{where}: text block needs a non-empty string "text"')
    elif kind == "tool_use":
        for key in ("id", "name"):
            if not isinstance(block.get(key), str) or not block[key]:
                raise ScriptError(f'{where}: tool_use block needs a non-empty string "{key}"')
        if not isinstance(block.get("input"), dict):
            raise ScriptError(f'{where}: tool_use block needs an object "input"')
        if block["id"] in seen_ids:
            raise ScriptError(f"{where}: tool_use id {block['id']!r} is used twice in this turn")
        seen_ids.add(block["id"])
    # Other block types (thinking, ...) pass through untouched, as the API would send them.


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )
