"""What a task and a message may be made of, checked once for every front-end.

Repository URL, prompt and base branch are non-empty text of bounded length; text that can reach
a commit (prompt, base branch, messages) holds no control character but tab, newline and
carriage return, and no lone surrogate (``"\\ud800"`` is valid JSON but not Unicode): git
refuses NUL in a commit message and no encoder takes a lone surrogate, so such text is refused
when the task is made, not when it is delivered. A budget's caps are finite and positive. A
task's model is one the operator allows; its pull request title is one line.

The phone API's request models (``web/routes.py``) say the same to pydantic, for their OpenAPI
description and their 422 answers; the control socket relies on these checks alone. Each
raises ``BadArguments`` naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from ..errors import BadArguments

MAX_REPO_URL = 2048
MAX_PROMPT = 100_000  # a follow-up message too
MAX_BRANCH = 255
MAX_PR_TITLE = 200
DEFAULT_PR_TITLE = "Changes made by agentd"
MAX_INT = 2**63 - 1  # what either store can hold as a number
MAX_USD = 1e12
BUDGET_CAPS = ("max_turns", "max_tokens", "max_usd")

# C0 controls but tab, newline and carriage return; DEL and the C1 controls; lone surrogates.
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def check_text(value: str) -> str:
    """``value``, or ``ValueError`` naming the first character a commit message cannot hold."""
    found = _FORBIDDEN.search(value)
    if found is None:
        return value
    code = ord(found.group())
    what = "a lone surrogate (not Unicode)" if 0xD800 <= code <= 0xDFFF else "a control character"
    raise ValueError(
        f"contains {what}, U+{code:04X}, at position {found.start()}; "
        "only tab, newline and carriage return are allowed"
    )


def check_field(name: str, value: object, max_length: int) -> str:
    """``value`` if it is text of 1 to ``max_length`` characters that ``check_text`` passes."""
    if not isinstance(value, str) or not value:
        raise BadArguments(f"{name}: text of at least one character is required")
    if len(value) > max_length:
        raise BadArguments(f"{name}: at most {max_length} characters, got {len(value)}")
    try:
        return check_text(value)
    except ValueError as exc:
        raise BadArguments(f"{name}: {exc}") from None


def check_model(value: object, allowed: Iterable[str]) -> str:
    """``value`` if it names one of the operator's ``allowed`` models; else ``BadArguments``
    naming them all."""
    names = list(allowed)
    if isinstance(value, str) and value in names:
        return value
    raise BadArguments(f"model: {value!r} is not allowed here; the allowed models are: {', '.join(names)}")


def check_pr_title(value: object) -> str:
    """``value`` as a pull request's title: one line of at most ``MAX_PR_TITLE`` characters that
    ``check_text`` passes, not blank; returned trimmed. It is the user's text, sent to GitHub
    as JSON data only."""
    title = check_field("pr_title", value, MAX_PR_TITLE)
    if "\n" in title or "\r" in title:
        raise BadArguments("pr_title: one line only (no line breaks)")
    if not title.strip():
        raise BadArguments("pr_title: text other than blanks is required")
    return title.strip()


def pr_title_of(prompt: str) -> str:
    """A pull request's title when the task names none: the prompt's first line that is not
    blank, trimmed and cut to ``MAX_PR_TITLE`` characters (ending in an ellipsis when cut)."""
    line = next((line.strip() for line in prompt.splitlines() if line.strip()), DEFAULT_PR_TITLE)
    if len(line) > MAX_PR_TITLE:
        line = line[: MAX_PR_TITLE - 1].rstrip() + "\u2026"
    return line


def check_budget(budget: Mapping[str, object]) -> dict[str, float]:
    """``budget`` if it holds only ``BUDGET_CAPS``: max_turns and max_tokens whole numbers from
    1, max_usd a finite number above 0 (``MAX_USD`` at most)."""
    checked: dict[str, float] = {}
    for cap, value in budget.items():
        if cap not in BUDGET_CAPS:
            raise BadArguments(f"budget: no cap {cap!r}; the caps are {', '.join(BUDGET_CAPS)}")
        checked[cap] = _usd(value) if cap == "max_usd" else _whole(cap, value)
    return checked


def _usd(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= MAX_USD:
        return value  # NaN is not above 0 and infinity is above MAX_USD: both refused
    raise BadArguments(f"budget.max_usd: a number above 0 and at most {MAX_USD:g}, got {value!r}")


def _whole(cap: str, value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_INT:
        return value
    raise BadArguments(f"budget.{cap}: a whole number from 1 to {MAX_INT}, got {value!r}")


def raised_budget(
    current: Mapping[str, object],
    asked: Mapping[str, float],
    defaults: Mapping[str, float],
    caps: Mapping[str, float],
) -> dict[str, float]:
    """The task's budget override after a follow-up asks for ``asked`` (checked by
    ``check_budget``): ``current`` with each cap asked for replaced.

    A cap may only go up: one above the operator's cap (``caps``) or below what the task has
    now (its own override, else ``defaults``, never above ``caps``) is refused, naming it.
    """
    raised: dict[str, float] = {
        key: value for key, value in current.items() if isinstance(value, (int, float))
    }
    for cap, value in asked.items():
        ceiling = caps[cap]
        now = min(raised.get(cap) or defaults[cap], ceiling)
        if value > ceiling:
            raise BadArguments(
                f"budget.{cap}: at most {_num(ceiling)}, the operator's cap; got {_num(value)}"
            )
        if value < now:
            raise BadArguments(
                f"budget.{cap}: a follow-up may only raise it; the task has {_num(now)}, got {_num(value)}"
            )
        raised[cap] = value
    return raised


def _num(value: float) -> str:
    """``value`` as a person reads it: 20000000, not 2e+07; 0.5 as it is."""
    return str(int(value)) if float(value).is_integer() else repr(value)
