"""The Messages API's context management, for the fake API: what the model is shown.

Modelled on Anthropic's "Context editing" and "Compaction" guides:

- A ``compaction`` block in ``messages`` (an earlier reply's, sent back) starts the prompt: every
  block before it is dropped. Without the compaction beta it is a 400.
- An API may not take them at all (``Refusal``): an unknown beta, or a model without them.
- ``context_management.edits`` need their betas (``context-management-2025-06-27``; a
  ``compact_20260112`` edit also ``compact-2026-01-12``), else a 400, as the API answers.
  They apply in the order given, and each one's ``input_tokens`` trigger is compared with the
  request's input tokens as sent (after the compaction drop, before any edit).
- ``clear_tool_uses_20250919`` (defaults: trigger 100,000 input tokens, keep 3 tool uses):
  replaces the content of the oldest tool results by a placeholder, never the last ``keep``
  nor those of ``exclude_tools``, in whole batches of at least ``clear_at_least`` tokens
  (the guide: "only modified if at least this many tokens can be removed"), as few batches
  as bring the input down to the trigger. The batches are cut from the oldest result on, so a
  longer conversation clears the same results plus, sometimes, one more batch.
  Reported as ``{"type", "cleared_tool_uses", "cleared_input_tokens"}``.
- ``compact_20260112`` (default trigger 150,000): summarizes the (cleared) conversation into a
  ``compaction`` block that starts the reply; the model then answers from that block alone.
  The summary step's usage is an ``iterations`` entry, not in the totals.

Tokens: ``prompt_cache.block_tokens`` per block (JSON / 4), the one estimate of the fakes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .prompt_cache import block_tokens, prompt_blocks

CONTEXT_BETA = "context-management-2025-06-27"
COMPACT_BETA = "compact-2026-01-12"
PLACEHOLDER = "[fake API: tool result cleared]"

#: How a fake API refuses context management: "beta", the betas unknown (the API's words for an
#: unknown ``anthropic-beta`` value); "model", the edits not supported on the request's model.
Refusal = Literal["beta", "model"]


def prompt_tokens(body: dict[str, Any]) -> int:
    """The request's input tokens: tools, system and messages, block by block."""
    return sum(block_tokens(block) for block, _ in prompt_blocks(body))


@dataclass
class Edited:
    """What the model is shown (``body``), what was done to get there, and the compaction."""

    body: dict[str, Any]
    sent_tokens: int
    applied: list[dict[str, Any]] = field(default_factory=list)
    compaction: dict[str, Any] | None = None  # the block the reply starts with
    compaction_usage: dict[str, Any] | None = None
    managed: bool = False  # the request asked for context management

    @property
    def tokens(self) -> int:
        """Input tokens of ``body``."""
        return prompt_tokens(self.body)

    @property
    def tokens_read(self) -> int:
        """Input tokens of the largest prompt read: the summary step's, if there was one."""
        return self.compaction_usage["input_tokens"] if self.compaction_usage else self.tokens


def edit(body: dict[str, Any], betas: set[str], refuse: Refusal | None = None) -> Edited | str:
    """The prompt ``body`` becomes, or the 400 message the API would give (``refuse``: as an
    API that does not take context management, see ``Refusal``)."""
    asked = sorted(betas & {CONTEXT_BETA, COMPACT_BETA})
    if refuse == "beta" and asked:
        values = ", ".join(f"`{b}`" for b in asked)
        return (
            f"Unexpected value(s) {values} for the `anthropic-beta` header. Please consult our "
            "documentation at docs.anthropic.com or try again without the header."
        )
    if refuse == "model" and "context_management" in body:
        return f"context_management: context management is not supported on model {body.get('model')!r}"
    if COMPACT_BETA not in betas and _has_compaction(body):  # the block exists only with its beta
        return f"messages: a `compaction` content block needs the `{COMPACT_BETA}` beta"
    body = _from_last_compaction(body)
    sent = prompt_tokens(body)
    config = body.pop("context_management", None)
    out = Edited(body, sent, managed=config is not None)
    if config is None:
        return out
    if CONTEXT_BETA not in betas:
        return "context_management: Extra inputs are not permitted"
    for spec in config.get("edits") or []:
        kind = spec.get("type")
        if kind == "clear_tool_uses_20250919":
            if sent > _value(spec.get("trigger"), 100_000):
                out.applied.append(_clear(out.body, spec))
        elif kind == "compact_20260112":
            if COMPACT_BETA not in betas:
                return f"context_management.edits: {kind} needs the {COMPACT_BETA} beta"
            if sent > _value(spec.get("trigger"), 150_000):
                _compact(out)
        else:
            return f"context_management.edits: unknown edit type {kind!r}"
    return out


def _value(spec: Any, default: int) -> int:
    return int(spec["value"]) if isinstance(spec, dict) and "value" in spec else default


def _has_compaction(body: dict[str, Any]) -> bool:
    return any(
        isinstance(m.get("content"), list) and any(b.get("type") == "compaction" for b in m["content"])
        for m in body.get("messages") or []
    )


def _from_last_compaction(body: dict[str, Any]) -> dict[str, Any]:
    messages = body.get("messages") or []
    for i in range(len(messages) - 1, -1, -1):
        content = messages[i].get("content")
        blocks = content if isinstance(content, list) else []
        at = next((j for j, b in enumerate(blocks) if b.get("type") == "compaction"), None)
        if at is not None:
            first = {**messages[i], "content": blocks[at:]}
            return {**body, "messages": [first, *messages[i + 1 :]]}
    return dict(body)


def _clear(body: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """Clear in place (``body``'s messages are copied first); the applied-edit report."""
    trigger = _value(spec.get("trigger"), 100_000)
    keep = _value(spec.get("keep"), 3)
    at_least = _value(spec.get("clear_at_least"), 0)
    excluded = set(spec.get("exclude_tools") or ())
    messages = body["messages"] = [{**m, "content": list(m["content"])} for m in body["messages"]]
    names = {
        b["id"]: b["name"]
        for m in messages
        if isinstance(m["content"], list)
        for b in m["content"]
        if b.get("type") == "tool_use"
    }
    results = [
        (m, j)
        for m in messages
        if m["role"] == "user" and isinstance(m["content"], list)
        for j, b in enumerate(m["content"])
        if b.get("type") == "tool_result"
    ]
    results = results[: max(0, len(results) - keep)]
    over = prompt_tokens(body) - trigger
    batches: list[list[tuple[dict[str, Any], int, int]]] = [[]]
    for m, j in results:
        block = m["content"][j]
        if names.get(block.get("tool_use_id")) in excluded or block.get("content") == PLACEHOLDER:
            continue
        batches[-1].append((m, j, block_tokens({"role": "user", **block}) - block_tokens(_cleared(block))))
        if sum(s for *_, s in batches[-1]) >= at_least:
            if sum(s for batch in batches for *_, s in batch) >= over:
                break
            batches.append([])
    whole = [b for b in batches if b and sum(s for *_, s in b) >= at_least]
    for m, j, _ in (entry for batch in whole for entry in batch):
        m["content"][j] = _cleared(m["content"][j])
    cleared = sum(len(b) for b in whole)
    saved = sum(s for b in whole for *_, s in b)
    return {"type": "clear_tool_uses_20250919", "cleared_tool_uses": cleared, "cleared_input_tokens": saved}


def _cleared(block: dict[str, Any]) -> dict[str, Any]:
    return {**block, "content": PLACEHOLDER}


def _compact(out: Edited) -> None:
    """Summarize ``out.body``'s messages; the model then reads only the summary."""
    messages = out.body["messages"]
    summary = f"Summary (fake) of {len(messages)} messages, {out.tokens} tokens of context."
    out.compaction = {"type": "compaction", "content": summary}
    out.compaction_usage = {
        "type": "compaction",
        "input_tokens": out.tokens,
        "output_tokens": max(1, len(summary) // 4),
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }
    out.body = {**out.body, "messages": [{"role": "assistant", "content": [out.compaction]}]}
