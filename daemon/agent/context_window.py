"""The conversation as it fits the model's context window: pure functions, no I/O.

A long task outgrows the window. Two remedies, in this order:

- clearing: the content of old tool results is replaced by ``CLEARED`` (the ``tool_result``
  block stays, so every ``tool_use`` keeps its result and the pairing stays valid). Results
  are cleared in whole batches of at least ``clear_at_least_tokens``, the newest candidates
  first, the last ``keep_tool_results`` never, nor those of ``exclude_tools`` (the user's
  answers). The batches are replayed over the conversation's past requests, so they are the
  same at every turn: the conversation's prefix (and so the prompt cache) changes only when one
  more batch is needed, not every turn, and what precedes the batch stays cached
  (``clear_old_results``).
- compaction: when clearing is not enough, the turns before the last exchange are replaced by a
  summary (``context_summary``). The summary is stored as a user turn with ``stop_reason``
  ``COMPACTED``; ``visible_turns`` starts the conversation there.

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
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import PermanentError
from .context_policy import ContextPolicy, api_edits, policy_for

__all__ = [
    "CLEARED",
    "COMPACTED",
    "ContextManagementRefused",
    "ContextPolicy",
    "PromptTooLong",
    "TokenCounter",
    "api_edits",
    "clear_old_results",
    "cleared_result",
    "policy_for",
    "visible_turns",
]

#: What a cleared tool result says instead of its output.
CLEARED = "[cleared to save context: re-run the command or view the file again if you need it]"

#: The ``stop_reason`` of a stored user turn that is a summary of the turns before it.
COMPACTED = "compaction"


class PromptTooLong(PermanentError):
    """The API said the prompt is larger than the model's context window (a 400)."""

    code = "prompt_too_long"


class ContextManagementRefused(PermanentError):
    """The API refused mode "api"'s context management for ``model`` (a 400: an unknown beta, or
    edits the model does not support). The provider sends it no more for that model; the agent
    loop goes on with the client path and asks the turn again."""

    code = "context_management_refused"

    def __init__(self, message: str, model: str) -> None:
        super().__init__(message)
        self.model = model


# --- tokens ------------------------------------------------------------------------------------


def _estimate(block: Mapping[str, Any], role: str | None) -> int:
    shown = {k: v for k, v in block.items() if k != "cache_control"}
    if role is not None:
        shown = {"role": role, **shown}
    return max(1, len(json.dumps(shown, sort_keys=True, separators=(",", ":"), ensure_ascii=False)) // 4)


def blocks_of(content: object) -> list[Any]:
    """A message's ``content`` as a list of blocks (a string is one text block)."""
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
        """``cleared_result(block)``, the same object every time for the same block (measured once)."""
        hit = self._cleared.get(id(block))
        if hit is not None and hit[0] is block:
            return hit[1]
        cleared = cleared_result(block)
        self._cleared[id(block)] = (block, cleared)
        return cleared

    def message(self, message: Mapping[str, Any]) -> int:
        role = message.get("role")
        return sum(self.block(b, role) for b in blocks_of(message.get("content")) if isinstance(b, dict))

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
        b.get("type") == "compaction" for b in blocks_of(turn["content"])
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
    """``messages`` with old tool results cleared, and the tokens that saved; ``total``: the
    request's estimate. The input is not changed.

    The clearing is replayed over the conversation's past requests (each prefix that ends with
    a user message, the system prompt and tools as now), so that it is the same at every turn
    and only ever grows: a request over ``clear_at_tokens`` clears one more batch, of at least
    ``clear_at_least_tokens`` and of as much as brings it to the trigger, taken from the newest
    candidates back (every tool result but the last ``keep_tool_results`` and those of
    ``exclude_tools``). Newest first: the results that came before the batch stay as they were
    sent, so the turn that clears reads them back from the prompt cache (up to a breakpoint put
    just before the batch) and writes only what follows them; with outputs that grow, the newest
    candidates are also the largest. Candidates short of a whole batch are not cleared.
    Two cache breakpoints come with it (see below): with the newest message's and the system
    prompt's, the API's limit of four.
    """
    if total <= policy.clear_at_tokens:
        return messages, 0  # no prefix is over the trigger either
    results = _results(messages, policy)
    saving = [counter.block(b, "user") - counter.block(counter.cleared(b), "user") for _, _, b in results]
    cleared: set[int] = set()
    batch: list[int] = []  # the newest
    saved, seen = 0, 0
    running = total - sum(counter.message(m) for m in messages)  # the system prompt and tools
    for mi, message in enumerate(messages):
        running += counter.message(message)
        while seen < len(results) and results[seen][0] <= mi:
            seen += 1
        if message["role"] != "user" or (mi + 1 < len(messages) and messages[mi + 1]["role"] == "user"):
            continue  # not the end of a request
        over = running - saved - policy.clear_at_tokens
        if over > 0:
            need = max(over, policy.clear_at_least_tokens)
            more = _batch(saving, seen - policy.keep_tool_results, cleared, need)
            if more and sum(saving[i] for i in more) >= policy.clear_at_least_tokens:
                batch = more
                cleared.update(batch)
                saved += sum(saving[i] for i in batch)
    if not cleared:
        return messages, 0
    out = list(messages)
    for i in sorted(cleared):
        mi, bi, block = results[i]
        _put(out, messages, mi, bi, counter.cleared(block))
    # Two cache breakpoints. Just before the newest batch: what precedes it is read back from
    # the cache on the turn that clears it (and on the turns after). On its last result: the
    # next batch, which starts after it, finds that prefix cached (within the API's lookback of
    # about 20 blocks), written with the cleared content while no prompt's end lies there.
    mi, bi, _ = results[min(batch)]
    mi, bi = (mi, bi - 1) if bi else (mi - 1, len(blocks_of(out[mi - 1]["content"])) - 1)
    before = out[mi]["content"] if mi >= 0 else None
    if isinstance(before, list) and bi >= 0 and before[bi].get("type") in _MARKABLE:
        _put(out, messages, mi, bi, {**out[mi]["content"][bi], "cache_control": {"type": "ephemeral"}})
    mi, bi, _ = results[max(batch)]
    _put(out, messages, mi, bi, {**out[mi]["content"][bi], "cache_control": {"type": "ephemeral"}})
    return out, saved


_MARKABLE = ("text", "tool_use", "tool_result")


def _results(messages: list[dict[str, Any]], policy: ContextPolicy) -> list[tuple[int, int, dict[str, Any]]]:
    """Every tool result that may be cleared, ``(message index, block index, block)``, in order:
    not those of ``exclude_tools`` nor one cleared already."""
    names: dict[str, str] = {}
    results: list[tuple[int, int, dict[str, Any]]] = []
    for mi, message in enumerate(messages):
        for bi, block in enumerate(blocks_of(message["content"])):
            if block.get("type") == "tool_use":
                names[str(block.get("id"))] = str(block.get("name"))
            elif block.get("type") == "tool_result" and message["role"] == "user":
                excluded = names.get(str(block.get("tool_use_id"))) in policy.exclude_tools
                if not excluded and block.get("content") != CLEARED:
                    results.append((mi, bi, block))
    return results


def _batch(saving: list[int], candidates: int, cleared: set[int], need: int) -> list[int]:
    """The newest of the first ``candidates`` results not cleared yet, back to as many as save
    ``need`` tokens (all of them if they save less)."""
    batch: list[int] = []
    total = 0
    for i in range(candidates - 1, -1, -1):
        if i in cleared:
            continue
        batch.append(i)
        total += saving[i]
        if total >= need:
            break
    return batch


def _put(
    out: list[dict[str, Any]], messages: list[dict[str, Any]], mi: int, bi: int, block: dict[str, Any]
) -> None:
    """Set ``out[mi]``'s block ``bi``, copying the message first (``messages`` stays as it is)."""
    if out[mi] is messages[mi]:
        out[mi] = {**messages[mi], "content": list(messages[mi]["content"])}
    out[mi]["content"][bi] = block


def cleared_result(block: Mapping[str, Any]) -> dict[str, Any]:
    """The cleared form of a tool_result block (its id and error flag kept)."""
    cleared: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": block.get("tool_use_id"),
        "content": CLEARED,
    }
    if block.get("is_error"):
        cleared["is_error"] = True
    return cleared
