"""Compaction: the turns before the last exchange replaced by the model's summary of them.

When clearing old tool results (``context_window``) is not enough, ``compaction_split`` says
where the kept tail starts and ``summary_request`` is what the model is asked to summarize; the
summary is stored as a user turn with ``stop_reason`` ``COMPACTED`` (``summary_content``),
which ``context_window.visible_turns`` starts the conversation at. ``from_api_compaction`` turns
the API's own ``compaction`` block (mode "api") into that same form, for a model that fell back
to the client path. Pure functions, no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .context_window import COMPACTED, blocks_of, cleared_result

__all__ = [
    "SUMMARY_PROMPT",
    "compaction_split",
    "covered_turns",
    "from_api_compaction",
    "is_summary_request",
    "scripted_summary",
    "summary_content",
    "summary_request",
]

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
        head = [{**m, "content": [_cut(b) for b in blocks_of(m["content"])]} for m in head]
    last = head[-1]
    head[-1] = {**last, "content": [*blocks_of(last["content"]), {"type": "text", "text": SUMMARY_PROMPT}]}
    return head


def _cut(block: dict[str, Any]) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "tool_result":
        return cleared_result(block)
    if kind == "text" and len(block.get("text", "")) > _SUMMARY_TEXT_CAP:
        return {**block, "text": block["text"][:_SUMMARY_TEXT_CAP] + " [...]"}
    if kind == "tool_use" and len(json.dumps(block.get("input"))) > _SUMMARY_TEXT_CAP:
        return {**block, "input": {"cut": json.dumps(block.get("input"))[:_SUMMARY_TEXT_CAP]}}
    return block


def is_summary_request(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a request's messages are a summary request (``summary_request``)."""
    if not messages:
        return False
    blocks = blocks_of(messages[-1].get("content"))
    return bool(blocks) and blocks[-1].get("text") == SUMMARY_PROMPT


def summary_content(summary: str, covered: int) -> list[dict[str, Any]]:
    """The stored summary turn's content; ``covered``: the assistant turns it replaces."""
    text = summary.strip() or "(the model gave no summary)"
    return [{"type": "text", "text": f"{_SUMMARY_HEADER.format(turns=covered)}\n\n{text}"}]


def covered_turns(messages: Sequence[Mapping[str, Any]]) -> int:
    """How many assistant turns the summary that starts ``messages`` replaces (0: none)."""
    if not messages or messages[0].get("role") != "user":
        return 0
    blocks = blocks_of(messages[0].get("content"))
    found = _SUMMARY_RE.match(str(blocks[0].get("text", ""))) if blocks else None
    return int(found.group(1)) if found else 0


def from_api_compaction(
    turns: Sequence[Mapping[str, Any]], shown: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``shown`` (``visible_turns(turns)``) as the client path sends it: without the API's
    ``compaction`` block, which needs the compaction beta the client path does not send.

    When ``shown`` starts with an assistant turn holding one (the API's summary of everything
    before it), that turn becomes what agentd's own compaction stores: the block's text as a
    summary user turn (``summary_content``, covering every stored assistant turn before it),
    then the rest of the assistant turn (its text and tool calls, so the tool results that follow
    still answer them). Otherwise ``shown`` is returned as it is.
    """
    first = shown[0] if shown else None
    blocks = blocks_of(first["content"]) if first is not None and first["role"] == "assistant" else []
    at = next((i for i, b in enumerate(blocks) if b.get("type") == "compaction"), None)
    if first is None or at is None:
        return shown
    covered = sum(t["role"] == "assistant" for t in turns) - sum(t["role"] == "assistant" for t in shown)
    summary = {
        "role": "user",
        "content": summary_content(str(blocks[at].get("content") or ""), covered),
        "stop_reason": COMPACTED,
    }
    rest = [b for b in blocks[at + 1 :] if b.get("type") != "compaction"]
    reply = {**first, "content": rest or [{"type": "text", "text": "(compacted)"}]}
    return [summary, reply, *shown[1:]]


def scripted_summary(messages: Sequence[Mapping[str, Any]]) -> str:
    """A deterministic summary (for the scripted model): the first request and the calls made."""
    first = next(
        (b.get("text", "") for b in blocks_of(messages[0].get("content")) if b.get("type") == "text"), ""
    )
    calls = [
        f"{b.get('name')} {json.dumps(b.get('input'), sort_keys=True)[:120]}"
        for m in messages
        if m.get("role") == "assistant"
        for b in blocks_of(m.get("content"))
        if b.get("type") == "tool_use"
    ]
    return f"The task: {first[:500]}\nTool calls so far ({len(calls)}):\n" + "\n".join(calls[-20:])
