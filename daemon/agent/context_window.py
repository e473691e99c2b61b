"""The conversation as it fits the model's context window: pure functions, no I/O.

A long task outgrows the window. Two remedies, in this order:

- clearing: the content of old tool results is replaced by ``CLEARED`` (the ``tool_result``
  block stays, so every ``tool_use`` keeps its result and the pairing stays valid). Results
  are cleared oldest first, in whole batches of at least ``clear_at_least_tokens``, the last
  ``keep_tool_results`` never, nor those of ``exclude_tools`` (the user's answers). Batches are
  cut from the oldest result on, so they are the same at every turn: the conversation's
  prefix (and so the prompt cache) changes only when one more batch is needed, not every turn,
  and a cache breakpoint on the last cleared result keeps what precedes the next batch cached.
- compaction: when clearing is not enough, the turns before the last exchange are replaced by a
  summary (``compaction_split``, ``summary_request``). The summary is stored as a user turn
  with ``stop_reason`` ``COMPACTED``; ``visible_turns`` starts the conversation there.

The same two run inside the Messages API with ``ContextPolicy.mode`` "api" (its
``clear_tool_uses_20250919`` and ``compact_20260112`` edits, ``api_edits``): agentd then stores
the whole conversation, sends it from the last compaction block on and the API edits it.

Tokens are estimated, never counted by a tokenizer: a block costs ``len(canonical JSON) // 4``
(its JSON with the message's role, keys sorted, ``cache_control`` left out), as the fake
Messages API in the tests counts them. Real tokenizers give somewhat more tokens for code, so
the triggers sit well below the window, and a "prompt is too long" from the API compacts too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from ..errors import ConfigError, PermanentError

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "CLEARED",
    "COMPACTED",
    "SUMMARY_PROMPT",
    "ContextPolicy",
    "PromptTooLong",
    "TokenCounter",
    "api_edits",
    "clear_old_results",
    "compaction_split",
    "covered_turns",
    "is_summary_request",
    "policy_for",
    "scripted_summary",
    "summary_content",
    "summary_request",
    "visible_turns",
]

Mode = Literal["api", "client", "off"]

ANTHROPIC_API = "https://api.anthropic.com"

#: What a cleared tool result says instead of its output.
CLEARED = "[cleared to save context: re-run the command or view the file again if you need it]"

#: The ``stop_reason`` of a stored user turn that is a summary of the turns before it.
COMPACTED = "compaction"

SUMMARY_PROMPT = """\
[agentd] The conversation is too long for the context window. Write a summary of it that lets \
you continue the task without it: the user's request and every requirement they stated, what \
you found out (file paths, function names, commands and their results), what you changed and \
why, what is left to do and what you were about to do next. Be specific and complete; reply \
with the summary only and call no tool."""

_SUMMARY_HEADER = "[agentd] Summary of the conversation's first {turns} turns, which it replaces:"
_SUMMARY_RE = re.compile(r"\A\[agentd\] Summary of the conversation's first (\d+) turns")

# A summary request that is itself too long is sent again with every text cut to this.
_SUMMARY_TEXT_CAP = 2000


class PromptTooLong(PermanentError):
    """The API said the prompt is larger than the model's context window (a 400)."""

    code = "prompt_too_long"


@dataclass(frozen=True)
class ContextPolicy:
    """How a task's conversation is kept within ``window_tokens`` (estimated tokens).

    ``mode``: "api" (the Messages API's own context management), "client" (this module, for
    Anthropic-compatible endpoints and the scripted model) or "off" (sent as it is). Whatever
    the mode, a "prompt is too long" answer compacts and the turn is asked again.
    """

    mode: Mode = "client"
    window_tokens: int = 200_000
    clear_at_tokens: int = 100_000
    clear_at_least_tokens: int = 40_000
    keep_tool_results: int = 3
    compact_at_tokens: int = 150_000
    exclude_tools: tuple[str, ...] = field(default=("ask_user",))

    def __post_init__(self) -> None:
        if self.mode not in ("api", "client", "off"):
            raise ConfigError(f"context_management must be api, client or off; got {self.mode!r}")
        if not 0 < self.clear_at_tokens < self.compact_at_tokens <= self.window_tokens:
            raise ConfigError(
                "context window: needs 0 < context_clear_at_tokens < context_compact_at_tokens "
                f"<= context_window_tokens; got {self.clear_at_tokens}, {self.compact_at_tokens}, "
                f"{self.window_tokens}"
            )
        if self.clear_at_least_tokens < 0 or self.keep_tool_results < 0:
            raise ConfigError("context window: clear_at_least and keep_tool_results must be >= 0")


def api_edits(policy: ContextPolicy) -> dict[str, Any]:
    """The request's ``context_management`` for mode "api": clearing, then compaction."""
    tokens = "input_tokens"
    clear: dict[str, Any] = {
        "type": "clear_tool_uses_20250919",
        "trigger": {"type": tokens, "value": policy.clear_at_tokens},
        "keep": {"type": "tool_uses", "value": policy.keep_tool_results},
        "clear_at_least": {"type": tokens, "value": policy.clear_at_least_tokens},
    }
    if policy.exclude_tools:
        clear["exclude_tools"] = list(policy.exclude_tools)
    compact = {"type": "compact_20260112", "trigger": {"type": tokens, "value": policy.compact_at_tokens}}
    return {"edits": [clear, compact]}


# --- tokens ------------------------------------------------------------------------------------


def _estimate(block: Mapping[str, Any], role: str | None) -> int:
    shown = {k: v for k, v in block.items() if k != "cache_control"}
    if role is not None:
        shown = {"role": role, **shown}
    return max(1, len(json.dumps(shown, sort_keys=True, separators=(",", ":"), ensure_ascii=False)) // 4)


def _blocks(content: object) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return content if isinstance(content, list) else []


class TokenCounter:
    """Estimated tokens of blocks, each block's kept while it lives in the conversation.

    A task's conversation is estimated at every turn; its blocks are the same objects from turn
    to turn, so each is serialized once. Holds a reference to every block it measured (so that
    an id is never reused for another): one per task attempt, dropped with it.
    """

    def __init__(self) -> None:
        self._memo: dict[tuple[int, str | None], tuple[object, int]] = {}
        self._cleared: dict[int, tuple[object, dict[str, Any]]] = {}

    def block(self, block: Mapping[str, Any], role: str | None = None) -> int:
        key = (id(block), role)
        hit = self._memo.get(key)
        if hit is not None and hit[0] is block:
            return hit[1]
        tokens = _estimate(block, role)
        self._memo[key] = (block, tokens)
        return tokens

    def cleared(self, block: Mapping[str, Any]) -> dict[str, Any]:
        """``_cleared(block)``, the same object every time for the same block (measured once)."""
        hit = self._cleared.get(id(block))
        if hit is not None and hit[0] is block:
            return hit[1]
        cleared = _cleared(block)
        self._cleared[id(block)] = (block, cleared)
        return cleared

    def message(self, message: Mapping[str, Any]) -> int:
        role = message.get("role")
        return sum(self.block(b, role) for b in _blocks(message.get("content")) if isinstance(b, dict))

    def request(
        self, system: str, tools: Sequence[Mapping[str, Any]], messages: Sequence[Mapping[str, Any]]
    ) -> int:
        """The prompt's estimate: tools, system prompt, messages (as the fake API counts it)."""
        fixed = sum(self.block(t) for t in tools)
        if system:
            fixed += _estimate({"type": "text", "text": system}, None)
        return fixed + sum(self.message(m) for m in messages)


# --- what the model sees -----------------------------------------------------------------------


def _has_compaction_block(turn: Mapping[str, Any]) -> bool:
    return turn["role"] == "assistant" and any(
        b.get("type") == "compaction" for b in _blocks(turn["content"])
    )


def _starts_context(turn: Mapping[str, Any]) -> bool:
    summary = turn["role"] == "user" and turn.get("stop_reason") == COMPACTED
    return summary or _has_compaction_block(turn)


def visible_turns(turns: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stored turns the model is shown, from the last compaction on.

    An assistant turn that holds the API's ``compaction`` block starts the conversation (the
    API ignores what came before it). A summary of agentd's own (a user turn stored with
    ``stop_reason`` ``COMPACTED``) comes first, then the exchange it kept (from the last
    assistant turn before it), then what followed it. A ``compaction`` block anywhere but
    in the first turn is left out: a summary made after it replaced it.
    """
    start = next((i for i in range(len(turns) - 1, -1, -1) if _starts_context(turns[i])), None)
    if start is None:
        return list(turns)
    if turns[start]["role"] == "assistant":
        return list(turns[start:])
    kept = max(i for i in range(start) if turns[i]["role"] == "assistant")
    shown = [turns[start], *turns[kept:start], *turns[start + 1 :]]
    return [shown[0], *(_without_compaction(t) for t in shown[1:])]


def _without_compaction(turn: dict[str, Any]) -> dict[str, Any]:
    if not _has_compaction_block(turn):
        return turn
    content = [b for b in turn["content"] if b.get("type") != "compaction"]
    return {**turn, "content": content or [{"type": "text", "text": "(compacted)"}]}


def clear_old_results(
    messages: list[dict[str, Any]], counter: TokenCounter, total: int, policy: ContextPolicy
) -> tuple[list[dict[str, Any]], int]:
    """``messages`` with old tool results cleared if ``total`` (the request's estimate) is over
    ``clear_at_tokens``, and the tokens that saved. The input is not changed.

    The candidates are every tool result but the last ``keep_tool_results`` and those of
    ``exclude_tools``, oldest first, cut into batches of at least ``clear_at_least_tokens``
    saved; as few whole batches are cleared as bring the total to the trigger (all of them if
    that is not enough). A last batch short of that size is not cleared.
    """
    if total <= policy.clear_at_tokens:
        return messages, 0
    names: dict[str, str] = {}
    results: list[tuple[int, int, dict[str, Any]]] = []
    for mi, message in enumerate(messages):
        for bi, block in enumerate(_blocks(message["content"])):
            if block.get("type") == "tool_use":
                names[str(block.get("id"))] = str(block.get("name"))
            elif block.get("type") == "tool_result" and message["role"] == "user":
                results.append((mi, bi, block))
    keep = policy.keep_tool_results
    candidates = results[: len(results) - keep] if keep else results
    chosen, saved_total, saved_batch = 0, 0, 0
    for count, (_, _, block) in enumerate(candidates, start=1):
        if (
            names.get(str(block.get("tool_use_id"))) in policy.exclude_tools
            or block.get("content") == CLEARED
        ):
            continue
        saved_batch += counter.block(block, "user") - counter.block(counter.cleared(block), "user")
        if saved_batch >= policy.clear_at_least_tokens:
            chosen, saved_total, saved_batch = count, saved_total + saved_batch, 0
            if total - saved_total <= policy.clear_at_tokens:
                break
    if not chosen:
        return messages, 0
    out = list(messages)
    last: tuple[int, int] | None = None
    for mi, bi, block in candidates[:chosen]:
        if names.get(str(block.get("tool_use_id"))) in policy.exclude_tools:
            continue
        if out[mi] is messages[mi]:
            out[mi] = {**messages[mi], "content": list(messages[mi]["content"])}
        out[mi]["content"][bi] = counter.cleared(block)
        last = (mi, bi)
    if last is not None:
        # A cache breakpoint where the cleared results end: that prefix stays the same when the
        # next batch is cleared (it comes after it), so the next clearing reads it back from the
        # cache and writes only what follows it, not the whole conversation again.
        mi, bi = last
        out[mi]["content"][bi] = {**out[mi]["content"][bi], "cache_control": {"type": "ephemeral"}}
    return out, saved_total


def _cleared(block: Mapping[str, Any]) -> dict[str, Any]:
    """The cleared form of a tool_result block (its id and error flag kept)."""
    cleared: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": block.get("tool_use_id"),
        "content": CLEARED,
    }
    if block.get("is_error"):
        cleared["is_error"] = True
    return cleared


# --- compaction --------------------------------------------------------------------------------


def compaction_split(messages: Sequence[Mapping[str, Any]]) -> int | None:
    """Where the kept tail starts (the last assistant message), or None when there is nothing
    before it to summarize (no assistant message, or only an earlier summary)."""
    last = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "assistant"), None)
    if last is None or not any(m["role"] == "assistant" for m in messages[:last]):
        return None
    return last


def summary_request(
    messages: Sequence[dict[str, Any]], split: int, cut: bool = False
) -> list[dict[str, Any]]:
    """The messages of the request that summarizes ``messages[:split]``: those, with
    ``SUMMARY_PROMPT`` added to the last (user) one. ``cut``: every tool result cleared and every
    text and tool input cut short, for a second try when the first was itself too long."""
    head = [dict(m) for m in messages[:split]]
    if cut:
        head = [{**m, "content": [_cut(b) for b in _blocks(m["content"])]} for m in head]
    last = head[-1]
    head[-1] = {**last, "content": [*_blocks(last["content"]), {"type": "text", "text": SUMMARY_PROMPT}]}
    return head


def _cut(block: dict[str, Any]) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "tool_result":
        return _cleared(block)
    if kind == "text" and len(block.get("text", "")) > _SUMMARY_TEXT_CAP:
        return {**block, "text": block["text"][:_SUMMARY_TEXT_CAP] + " [...]"}
    if kind == "tool_use" and len(json.dumps(block.get("input"))) > _SUMMARY_TEXT_CAP:
        return {**block, "input": {"cut": json.dumps(block.get("input"))[:_SUMMARY_TEXT_CAP]}}
    return block


def is_summary_request(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a request's messages are a summary request (``summary_request``)."""
    if not messages:
        return False
    blocks = _blocks(messages[-1].get("content"))
    return bool(blocks) and blocks[-1].get("text") == SUMMARY_PROMPT


def summary_content(summary: str, covered: int) -> list[dict[str, Any]]:
    """The stored summary turn's content; ``covered``: the assistant turns it replaces."""
    text = summary.strip() or "(the model gave no summary)"
    return [{"type": "text", "text": f"{_SUMMARY_HEADER.format(turns=covered)}\n\n{text}"}]


def covered_turns(messages: Sequence[Mapping[str, Any]]) -> int:
    """How many assistant turns the summary that starts ``messages`` replaces (0: none)."""
    if not messages or messages[0].get("role") != "user":
        return 0
    blocks = _blocks(messages[0].get("content"))
    found = _SUMMARY_RE.match(str(blocks[0].get("text", ""))) if blocks else None
    return int(found.group(1)) if found else 0


def scripted_summary(messages: Sequence[Mapping[str, Any]]) -> str:
    """A deterministic summary (for the scripted model): the first request and the calls made."""
    first = next(
        (b.get("text", "") for b in _blocks(messages[0].get("content")) if b.get("type") == "text"), ""
    )
    calls = [
        f"{b.get('name')} {json.dumps(b.get('input'), sort_keys=True)[:120]}"
        for m in messages
        if m.get("role") == "assistant"
        for b in _blocks(m.get("content"))
        if b.get("type") == "tool_use"
    ]
    return f"The task: {first[:500]}\nTool calls so far ({len(calls)}):\n" + "\n".join(calls[-20:])


def policy_for(settings: Settings) -> ContextPolicy:
    """The settings' policy; ``context_management = "auto"`` is "api" for Claude at
    api.anthropic.com (the API's betas are there) and "client" otherwise: an
    Anthropic-compatible endpoint may refuse betas it does not know, and the scripted model has
    no server. Raises ``ConfigError`` for thresholds out of order."""
    mode = settings.context_management
    if mode == "auto":
        host = urlsplit(settings.anthropic_base_url or ANTHROPIC_API).hostname
        mode = (
            "api"
            if settings.model_name == "anthropic" and host == urlsplit(ANTHROPIC_API).hostname
            else "client"
        )
    return ContextPolicy(
        mode=mode,
        window_tokens=settings.context_window_tokens,
        clear_at_tokens=settings.context_clear_at_tokens,
        clear_at_least_tokens=settings.context_clear_at_least_tokens,
        keep_tool_results=settings.context_keep_tool_results,
        compact_at_tokens=settings.context_compact_at_tokens,
    )
