"""The model provider interface, without I/O.

The agent loop talks to a model only through ``ModelProvider.complete``: one request in (the
whole conversation so far), one assistant turn out. Content blocks stay plain JSON dicts in
Anthropic's shape, so a reply can be stored as-is and sent back verbatim in the next request,
whatever the provider (Claude over HTTP, or a replayed script).

Prices live here too, so that cost accounting is the same for every provider and testable
without a network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

# One Usage for the whole daemon: what a model call spent is what the store sums on the task.
from ..store.models import Usage

__all__ = [
    "CONTEXT_WINDOWS",
    "DEFAULT_PRICE",
    "PRICES",
    "SCRIPTED_PRICE",
    "STOP_REASONS",
    "ModelProvider",
    "ModelReply",
    "ModelRequest",
    "Price",
    "Usage",
    "allowlist",
    "context_window",
    "cost_of",
    "price_for",
    "price_row",
    "with_cache_breakpoints",
]

# Every stop_reason the Messages API documents; the agent loop handles each one (design §8).
STOP_REASONS = frozenset({"end_turn", "tool_use", "max_tokens", "pause_turn", "refusal", "stop_sequence"})

EPHEMERAL = {"type": "ephemeral"}
# Anthropic rejects a request with more than 4 blocks carrying cache_control.
MAX_CACHE_BREAKPOINTS = 4


@dataclass(frozen=True)
class ModelRequest:
    """One call: the system prompt, the tool schemas and the whole conversation so far."""

    system: str
    tools: list[dict]
    messages: list[dict]
    max_tokens: int
    #: The task's model (one of the operator's allowlist); None: the provider's default.
    model: str | None = None


@dataclass(frozen=True)
class ModelReply:
    """One assistant turn: ``content`` is a list of Anthropic content blocks as JSON dicts.

    ``cut_tool_use``: the turn stopped at ``max_tokens`` inside a tool_use block, which is not
    in ``content`` (its input was unfinished); the blocks before it are.
    """

    content: list[dict]
    stop_reason: str
    usage: Usage
    model: str
    cut_tool_use: bool = False
    context_edits: tuple[dict, ...] = ()  # the API's applied context-management edits, as sent


class ModelProvider(Protocol):
    """What the agent loop needs from a model.

    ``complete`` raises ``TransientError`` when trying again later may help (rate limit,
    overload, network) and ``PermanentError`` when it cannot (bad key, invalid request).
    ``on_text_delta`` receives text as it is generated (for the ephemeral
    ``agent.text_delta`` event); the reply's ``content`` holds the full text regardless.
    """

    name: str

    async def complete(
        self, request: ModelRequest, on_text_delta: Callable[[str], None] | None = None
    ) -> ModelReply: ...


# --- prices ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Price:
    """USD per million tokens for one model.

    Cache writes (5-minute TTL, the only one agentd asks for) cost 1.25x input; cache reads
    0.1x input unless ``cache_read_ratio`` says otherwise (some 5.x models read cheaper).
    ``cache_write_usd`` / ``cache_read_usd``, when given (an operator's price row), replace
    those ratios. ``long_prompt`` replaces the whole price for a call whose prompt (input +
    cache reads + cache writes) exceeds ``long_prompt_over`` tokens, as Anthropic bills some
    models.
    """

    input: float
    output: float
    cache_read_ratio: float = 0.1
    long_prompt_over: int | None = None
    long_prompt: Price | None = None
    cache_write_usd: float | None = None
    cache_read_usd: float | None = None

    @property
    def cache_write(self) -> float:
        return self.input * 1.25 if self.cache_write_usd is None else self.cache_write_usd

    @property
    def cache_read(self) -> float:
        return self.input * self.cache_read_ratio if self.cache_read_usd is None else self.cache_read_usd

    def public(self) -> dict[str, float]:
        """USD per million tokens of each kind, as the web client shows them."""
        return {
            "input_usd_per_mtok": self.input,
            "output_usd_per_mtok": self.output,
            "cache_write_usd_per_mtok": self.cache_write,
            "cache_read_usd_per_mtok": self.cache_read,
        }


# Matched by prefix, longest first, so dated ids ("claude-sonnet-4-5-20250929") and aliases
# ("claude-sonnet-4-5") both resolve. From Anthropic's pricing page (platform.claude.com/docs/
# en/about-claude/pricing), standard API rates; batch discounts and regional surcharges are not
# modelled. Update here, and only here, when prices change.
PRICES: dict[str, Price] = {
    "claude-fable-5-1": Price(10.0, 50.0, cache_read_ratio=0.025),
    "claude-mythos-5-1": Price(10.0, 50.0, cache_read_ratio=0.025),
    "claude-fable-5": Price(10.0, 50.0),
    "claude-mythos-5": Price(10.0, 50.0),
    "claude-opus-5-5": Price(4.0, 20.0, cache_read_ratio=0.05),
    "claude-opus-5": Price(5.0, 25.0),
    "claude-sonnet-5-5": Price(2.0, 10.0, cache_read_ratio=0.05),
    "claude-sonnet-5": Price(2.0, 10.0),
    "claude-haiku-5-5": Price(0.1, 0.5, long_prompt_over=100_000, long_prompt=Price(0.5, 2.5)),
    # Opus 4.5 to 4.8 cost a third of Opus 4.0 / 4.1.
    "claude-opus-4-8": Price(5.0, 25.0),
    "claude-opus-4-7": Price(5.0, 25.0),
    "claude-opus-4-6": Price(5.0, 25.0),
    "claude-opus-4-5": Price(5.0, 25.0),
    "claude-opus-4-1": Price(15.0, 75.0),
    "claude-opus-4": Price(15.0, 75.0),  # Opus 4.0 ("claude-opus-4-0", "claude-opus-4-20250514")
    "claude-sonnet-4": Price(3.0, 15.0),  # Sonnet 4, 4.5 and 4.6 share a price
    "claude-haiku-4-5": Price(1.0, 5.0),
    "claude-3-7-sonnet": Price(3.0, 15.0),
    "claude-3-5-haiku": Price(0.8, 4.0),
}

# An unknown model is priced like the most expensive one we know (Opus 4 / 4.1), so that a
# budget errs on the side of stopping a task early rather than overspending.
DEFAULT_PRICE = Price(15.0, 75.0)


# The scripted model (demo, tests) costs nothing; its name is its own allowlist entry.
SCRIPTED_PRICE = Price(0.0, 0.0)

_T = TypeVar("_T")


def _by_prefix(table: Mapping[str, _T], model: str) -> _T | None:
    """The value of ``table``'s longest key that ``model`` starts with (None: no key does)."""
    prefix = max((p for p in table if model.startswith(p)), key=len, default=None)
    return None if prefix is None else table[prefix]


def price_row(model: str, operator_rows: Mapping[str, Price] | None = None) -> Price | None:
    """The price row of ``model``: the operator's row of that exact name, else the built-in row
    of the longest matching prefix, else None (such a model cannot be allowed)."""
    if operator_rows and model in operator_rows:
        return operator_rows[model]
    return _by_prefix(PRICES, model)


def allowlist(
    default: str, allowed: Iterable[str], rows: Mapping[str, Mapping[str, float | None]]
) -> dict[str, Price]:
    """``default`` and the ``allowed`` models, each with its price row: the operator's (``rows``,
    USD per million tokens: ``input_usd_per_mtok``, ``output_usd_per_mtok`` and, optional,
    ``cache_write_usd_per_mtok``, ``cache_read_usd_per_mtok``), else the built-in one.
    ``ValueError`` names a model that has neither: it cannot be allowed, its cost is unknown."""
    operator = {
        name: Price(
            row["input_usd_per_mtok"] or 0.0,
            row["output_usd_per_mtok"] or 0.0,
            cache_write_usd=row.get("cache_write_usd_per_mtok"),
            cache_read_usd=row.get("cache_read_usd_per_mtok"),
        )
        for name, row in rows.items()
    }
    prices: dict[str, Price] = {}
    for name in (default, *allowed):
        price = price_row(name, operator)
        if price is None:
            where = "anthropic_model" if name == default else "allowed_models"
            raise ValueError(
                f"{where}: model {name!r} has no price row, so it cannot be allowed: add "
                f'[models."{name}"] with input_usd_per_mtok and output_usd_per_mtok (USD per '
                "million tokens) to the config file"
            )
        prices[name] = price
    return prices


# Context windows in tokens, matched by prefix as ``PRICES`` are. From Anthropic's "Context
# windows" page (platform.claude.com/docs/en/build-with-claude/context-windows): the Claude 5
# family, Opus 4.6 to 4.8 and Sonnet 4.6 take 1M tokens, every other Claude model 200k (Sonnet
# 4 and 4.5 only with a beta agentd does not send).
CONTEXT_WINDOWS: dict[str, int] = {
    "claude-fable-5": 1_000_000,
    "claude-mythos-5": 1_000_000,
    "claude-opus-5": 1_000_000,
    "claude-sonnet-5": 1_000_000,
    "claude-haiku-5": 1_000_000,
    "claude-opus-4-8": 1_000_000,
    "claude-opus-4-7": 1_000_000,
    "claude-opus-4-6": 1_000_000,
    "claude-sonnet-4-6": 1_000_000,
    "claude-": 200_000,
}


def context_window(model: str, operator_windows: Mapping[str, int | None] | None = None) -> int | None:
    """The context window of ``model`` in tokens: the operator's row's (``context_window_tokens``
    of ``[models."NAME"]``), else the built-in one of the longest matching prefix, else None
    (not a Claude model: the ``context_window_tokens`` setting applies)."""
    given = (operator_windows or {}).get(model)
    if given is not None:
        return given
    return _by_prefix(CONTEXT_WINDOWS, model)


def price_for(model: str) -> Price:
    """The built-in price of ``model`` (longest matching prefix), else ``DEFAULT_PRICE``."""
    return price_row(model) or DEFAULT_PRICE


def cost_of(model: str, usage: Usage, price: Price | None = None) -> float:
    """USD cost of one call's ``usage`` on ``model`` at ``price`` (default: ``price_for``);
    ``usage.cost_usd`` is ignored.

    Per call, not on a sum of calls: long-prompt rates depend on each call's prompt size.
    """
    p = price or price_for(model)
    prompt = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
    if p.long_prompt is not None and p.long_prompt_over is not None and prompt > p.long_prompt_over:
        p = p.long_prompt
    micro = (
        usage.input_tokens * p.input
        + usage.output_tokens * p.output
        + usage.cache_write_tokens * p.cache_write
        + usage.cache_read_tokens * p.cache_read
    )
    return micro / 1_000_000


# --- prompt caching ----------------------------------------------------------------------------

# Blocks the API refuses to carry cache_control on; the breakpoint goes on an earlier block.
_UNCACHEABLE_TYPES = frozenset({"thinking", "redacted_thinking"})


def _count_breakpoints(tools: list[dict], messages: list[dict]) -> int:
    """Breakpoints the caller already placed: on tools, message blocks, tool_result blocks."""

    def in_blocks(blocks: object) -> int:
        if not isinstance(blocks, list):
            return 0
        return sum(
            ("cache_control" in b) + in_blocks(b.get("content")) for b in blocks if isinstance(b, dict)
        )

    in_tools = sum("cache_control" in t for t in tools)
    return in_tools + sum(in_blocks(m.get("content")) for m in messages)


def _cacheable(block: dict) -> bool:
    if block.get("type") in _UNCACHEABLE_TYPES:
        return False
    # The API rejects cache_control on an empty text block.
    return not (block.get("type") == "text" and not block.get("text"))


def with_cache_breakpoints(request: ModelRequest) -> tuple[list[dict], list[dict], list[dict]]:
    """``(tools, system_blocks, messages)`` for the API, with prompt-cache breakpoints.

    Breakpoints (``cache_control: {"type": "ephemeral"}``) go on the newest message's last
    cacheable block (the conversation prefix, which grows by one turn per call and so is read
    back from the cache next time), on the system block and on the last tool. Breakpoints
    already present in the request count against Anthropic's limit of 4; ours are added in
    that order of value while room remains. The request is never mutated: everything returned
    is a copy. An empty system prompt yields no system block (the API rejects empty text).
    """
    # Copies only of what changes (the last message, its marked block, the last tool): the
    # conversation grows every turn, and copying all of it each time cost more than the call.
    tools = list(request.tools)
    system: list[dict] = [{"type": "text", "text": request.system}] if request.system else []
    messages = list(request.messages)
    room = MAX_CACHE_BREAKPOINTS - _count_breakpoints(tools, messages)

    if messages and room > 0:
        last = messages[-1] = dict(messages[-1])
        if isinstance(last.get("content"), str) and last["content"]:
            last["content"] = [{"type": "text", "text": last["content"]}]
        blocks = last.get("content")
        if isinstance(blocks, list):
            for i in range(len(blocks) - 1, -1, -1):
                block = blocks[i]
                if isinstance(block, dict) and _cacheable(block):
                    if "cache_control" not in block:
                        last["content"] = blocks = list(blocks)
                        blocks[i] = {**block, "cache_control": dict(EPHEMERAL)}
                        room -= 1
                    break
    if system and room > 0:
        system[0]["cache_control"] = dict(EPHEMERAL)
        room -= 1
    if tools and room > 0 and "cache_control" not in tools[-1]:
        tools[-1] = {**tools[-1], "cache_control": dict(EPHEMERAL)}
        room -= 1
    return tools, system, messages
