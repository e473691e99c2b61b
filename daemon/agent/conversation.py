"""What the agent loop decides from the persisted conversation alone (no I/O here).

A task resumed after a crash, a retry or a user's answer starts from its stored turns and tool
calls; these functions say what comes next, what each dangling tool call gets as its result,
whether a budget is spent and whether the agent is going round in circles.
"""

from __future__ import annotations

import enum
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import PermanentError
from ..store import Usage


class Interruption(enum.Enum):
    """Why the attempt that started a tool call ended before the call had its result."""

    RESTART = "by a restart of agentd"
    CANCEL = "when the task was cancelled"
    TAKEOVER = "when the machine running it stopped answering and another machine took the task over"
    TIMEOUT = "when the attempt ran longer than it may"


#: Every interrupted-call note starts so (``is_interrupted``).
INTERRUPTED_PREFIX = "This tool call was interrupted"


def interrupted_note(cause: Interruption) -> str:
    """The result the model is given for a call that was started but never finished."""
    return (
        f"{INTERRUPTED_PREFIX} {cause.value} before it finished; it may or may not have had "
        "effects. Check the current state before doing it again."
    )


INTERRUPTED = interrupted_note(Interruption.RESTART)


def is_interrupted(content: object) -> bool:
    """Whether a tool result's ``content`` is an interrupted-call note (not the call's failure)."""
    return isinstance(content, str) and content.startswith(INTERRUPTED_PREFIX)


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


# The stuck rules besides the plain repeat (``check_stuck``): the last six calls alternate
# between two distinct calls; or one call (same tool, same input) failed three times among the
# last ten calls.
ALTERNATION_STEPS = 6
FAILING_REPEATS = 3
FAILING_WINDOW = 10


@dataclass(frozen=True)
class _Call:
    key: tuple[str, str]  # the tool's name and its input as canonical JSON
    failed: bool  # its tool_result is an error (an interrupted call's note is not its failure)


def _recent_calls(turns: Sequence[Mapping[str, Any]], count: int) -> list[_Call]:
    """The last ``count`` tool calls (fewer if there are not as many), oldest first."""
    # From the newest turn back, only as far as needed: asked at every turn, this must not cost
    # more as the conversation grows. A call's result is in a later turn, seen first.
    calls: list[_Call] = []
    failed: set[str] = set()
    for turn in reversed(turns):
        if turn["role"] == "user":
            failed.update(
                str(block.get("tool_use_id"))
                for block in turn["content"]
                if block.get("type") == "tool_result"
                and block.get("is_error")
                and not is_interrupted(block.get("content"))
            )
        elif turn["role"] == "assistant":
            calls[:0] = [
                _Call((b["name"], json.dumps(b.get("input"), sort_keys=True)), str(b.get("id")) in failed)
                for b in tool_uses(turn)
            ]
            if len(calls) >= count:
                break
    return calls[-count:]


def check_stuck(turns: Sequence[Mapping[str, Any]], repeats: int) -> None:
    """Raise a ``PermanentError`` when the agent goes round in circles, checked in this order:

    - ``stuck``: the last ``repeats`` tool calls were the same call (same tool, same input);
    - ``stuck_alternating``: the last six tool calls alternate between two distinct calls
      (A B A B A B);
    - ``stuck_failing``: among the last ten tool calls, one call (same tool, same input) has
      three results that are errors (in any order, other calls between them). A command that
      exits non-zero is not an error result (bash reports its status in the output); a call
      interrupted by a restart is not its own failure.
    """
    calls = _recent_calls(turns, max(repeats, ALTERNATION_STEPS, FAILING_WINDOW))
    keys = [call.key for call in calls]
    last = keys[-repeats:]
    if len(last) >= repeats and len(set(last)) == 1:
        raise PermanentError(
            f"stuck: the agent made the same {last[-1][0]} call {repeats} times in a row", code="stuck"
        )
    steps = keys[-ALTERNATION_STEPS:]
    if (
        len(steps) == ALTERNATION_STEPS
        and steps[0] != steps[1]
        and all(key == steps[i % 2] for i, key in enumerate(steps))
    ):
        raise PermanentError(
            f"stuck: the agent alternated between the same two calls ({steps[0][0]} and "
            f"{steps[1][0]}) {ALTERNATION_STEPS} times in a row",
            code="stuck_alternating",
        )
    failures = Counter(call.key for call in calls[-FAILING_WINDOW:] if call.failed)
    for (name, _), times in failures.items():
        if times >= FAILING_REPEATS:
            raise PermanentError(
                f"stuck: the same {name} call failed {times} times among the last "
                f"{FAILING_WINDOW} tool calls",
                code="stuck_failing",
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
