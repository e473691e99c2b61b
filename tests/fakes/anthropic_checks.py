"""Request checks of the fake Messages API: the 400s the real API gives for mistakes agentd
could make (a missing field, more than 4 ``cache_control`` blocks, an empty text block, a
``tool_result`` that does not answer the previous assistant turn's ``tool_use``)."""

from __future__ import annotations

from typing import Any

__all__ = ["validate_request"]


def _blocks(content: Any) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _of_type(content: Any, kind: str) -> list[dict]:
    return [b for b in _blocks(content) if b.get("type") == kind]


def validate_request(body: Any) -> str | None:
    """The 400 message the real API would give for a few mistakes agentd could make, or None."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    for key in ("model", "max_tokens", "messages"):
        if key not in body:
            return f"{key}: Field required"
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    system = body.get("system")
    blocks = (_blocks(system) if system else []) + [b for m in messages for b in _blocks(m.get("content"))]
    nested = [n for b in _of_type(blocks, "tool_result") for n in _blocks(b.get("content"))]
    marked = sum("cache_control" in b for b in [*body.get("tools", []), *blocks, *nested])
    if marked > 4:
        return f"A maximum of 4 blocks with cache_control may be provided. Found {marked}."
    for i, m in enumerate(messages):
        if m.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if any(not b.get("text") for b in _of_type(m.get("content"), "text")):
            return f"messages.{i}: text content blocks must be non-empty"
        asked = {b["id"] for b in _of_type(m.get("content"), "tool_use")}
        if m["role"] == "assistant" and asked and i + 1 < len(messages):
            results = _of_type(messages[i + 1].get("content"), "tool_result")
            missing = sorted(asked - {b.get("tool_use_id") for b in results})
            if missing:
                return (
                    f"messages.{i + 1}: tool_use ids were found without tool_result blocks "
                    f"immediately after: {', '.join(missing)}"
                )
        if m["role"] == "user":
            prev = messages[i - 1].get("content") if i > 0 else []
            offered = {b["id"] for b in _of_type(prev, "tool_use")}
            for b in _of_type(m.get("content"), "tool_result"):
                if b.get("tool_use_id") not in offered:
                    return (
                        f"messages.{i}.content: unexpected tool_use_id found in tool_result "
                        f"blocks: {b.get('tool_use_id')}"
                    )
    return None
