"""What the agent loop decides from the persisted conversation alone (no I/O here).

A task resumed after a crash, a retry or a user's answer starts from its stored turns and tool
calls; these functions say what comes next, what each dangling tool call gets as its result,
whether a budget is spent and whether the agent is going round in circles.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import PermanentError
from ..store import Usage

INTERRUPTED = (
    "This tool call was interrupted by a restart of agentd before it finished; it may or may "
    "not have had effects. Check the current state before doing it again."
)
EVENT_OUTPUT_CAP = 4000


@dataclass(frozen=True)
class Budget:
    max_turns: int
    max_tokens: int
    max_usd: float


def effective_budget(override: Mapping[str, Any], defaults: Budget, caps: Budget) -> Budget:
    """The task's budget: its own override where given, never above the operator's caps."""
    return Budget(
        max_turns=min(int(override.get("max_turns") or defaults.max_turns), caps.max_turns),
        max_tokens=min(int(override.get("max_tokens") or defaults.max_tokens), caps.max_tokens),
        max_usd=min(float(override.get("max_usd") or defaults.max_usd), caps.max_usd),
    )


def billed_tokens(usage: Usage) -> int:
    """Tokens that count against the budget; cheap cache reads are left out (cost covers them)."""
    return usage.input_tokens + usage.output_tokens + usage.cache_write_tokens


def check_budget(budget: Budget, turns: int, usage: Usage) -> None:
    """Raise ``budget_exceeded:<which>`` once a limit is reached (checked before each turn)."""
    spent = [
        ("turns", turns >= budget.max_turns, f"{turns} turns of {budget.max_turns}"),
        (
            "tokens",
            billed_tokens(usage) >= budget.max_tokens,
            f"{billed_tokens(usage)} tokens of {budget.max_tokens}",
        ),
        ("usd", usage.cost_usd >= budget.max_usd, f"${usage.cost_usd:.4f} of ${budget.max_usd:.2f}"),
    ]
    for which, exceeded, detail in spent:
        if exceeded:
            raise PermanentError(f"budget exceeded: {detail}", code=f"budget_exceeded:{which}")


def tool_uses(turn: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [block for block in turn["content"] if block.get("type") == "tool_use"]


def check_stuck(turns: Sequence[Mapping[str, Any]], repeats: int) -> None:
    """Raise ``stuck`` when the last ``repeats`` tool calls were the same call with the same input."""
    # From the newest turn back, only as far as the last `repeats` calls: asked at every turn,
    # this must not cost more as the conversation grows.
    last: list[Mapping[str, Any]] = []
    for turn in reversed(turns):
        if turn["role"] == "assistant":
            last[:0] = tool_uses(turn)
            if len(last) >= repeats:
                break
    calls = [(block["name"], json.dumps(block.get("input"), sort_keys=True)) for block in last[-repeats:]]
    if len(calls) >= repeats and len(set(calls)) == 1:
        name = calls[-1][0]
        raise PermanentError(
            f"stuck: the agent made the same {name} call {repeats} times in a row", code="stuck"
        )


def for_model(turns: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The stored turns as the Messages API wants them (bookkeeping keys dropped).

    Two stored user turns in a row (a note added to a turn the model had not answered) are sent
    as one, as the API would combine them anyway.
    """
    messages: list[dict[str, Any]] = []
    for turn in turns:
        if messages and turn["role"] == "user" == messages[-1]["role"]:
            messages[-1] = {"role": "user", "content": [*messages[-1]["content"], *turn["content"]]}
        else:
            messages.append({"role": turn["role"], "content": turn["content"]})
    return messages


def tool_result(tool_use_id: str, output: str, is_error: bool) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": tool_use_id,
        "content": output or "(no output)",
    }
    if is_error:
        block["is_error"] = True
    return block


def text_blocks(texts: Sequence[str]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text} for text in texts if text.strip()]


def final_text(turn: Mapping[str, Any]) -> str:
    return "\n".join(b["text"] for b in turn["content"] if b.get("type") == "text").strip()


def cap_for_event(text: str, cap: int = EVENT_OUTPUT_CAP) -> str:
    if len(text) <= cap:
        return text
    half = cap // 2
    return f"{text[:half]}\n[... {len(text) - cap} characters not shown ...]\n{text[-half:]}"


def commit_message(prompt: str, summary: str) -> str:
    """The commit's message. Control characters (the model's summary may hold any, and a NUL
    could not even be passed to git) are dropped, tabs and newlines kept."""
    prompt, summary = _printable(prompt), _printable(summary)
    title = " ".join(prompt.split())
    if len(title) > 72:
        title = title[:69].rstrip() + "..."
    body = summary.strip() or "(the agent gave no summary)"
    return f"{title}\n\n{body}\n\nPrompt:\n{prompt.strip()}\n"


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def _printable(text: str) -> str:
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
