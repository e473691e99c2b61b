"""Prompt-cache accounting for the fake Messages API, by Anthropic's documented rules.

The rules (Anthropic's "Prompt caching" guide) as modelled here:

- The prompt is one sequence of blocks in the order tools → system → messages (each tool
  definition, each system block, each content block of each message is one block).
- A block carrying ``cache_control`` is a breakpoint: the request asks for the prefix up to and
  including it to be cached.
- A later request reads the longest prefix that an earlier request cached and that matches it
  exactly, found by looking back from each of this request's breakpoints over at most
  ``LOOKBACK_BLOCKS`` block boundaries (the API checks "about 20 blocks" before a breakpoint).
- A prefix shorter than the model's minimum cacheable length is not cached.
- An entry lives ``TTL_S`` (5 minutes) after it was written or last read; a read refreshes it.
- Usage: ``cache_read_input_tokens`` (the prefix read), ``cache_creation_input_tokens`` (from
  there to the last breakpoint that is written), ``input_tokens`` (the uncached rest).

Tokens are approximated deterministically: a block costs ``max(1, len(canonical JSON) // 4)``,
its JSON taken without its ``cache_control`` (where a breakpoint sits does not change the
prompt's content) and with the message's role, so that the same text said by the user and by
the assistant are different blocks. Caches are per model, as the API's are.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

TTL_S = 300.0
LOOKBACK_BLOCKS = 20

# Minimum cacheable prompt length in tokens, by model-name fragment; the default otherwise.
MIN_TOKENS_BY_MODEL: dict[str, int] = {"haiku": 2048}
DEFAULT_MIN_TOKENS = 1024


@dataclass(frozen=True)
class CacheUsage:
    """One request's input tokens, split the way the API reports them."""

    input_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int

    def as_usage(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
        }


@dataclass(frozen=True)
class _Block:
    key: str  # hash of the prefix up to and including this block
    tokens: int  # tokens of the prefix up to and including this block
    breakpoint: bool


def min_tokens_for(model: str) -> int:
    """The minimum cacheable length for ``model``: ``MIN_TOKENS_BY_MODEL`` by fragment."""
    return next((n for part, n in MIN_TOKENS_BY_MODEL.items() if part in model), DEFAULT_MIN_TOKENS)


def block_tokens(block: Any) -> int:
    """The deterministic token estimate of one block (see the module's docstring)."""
    return max(1, len(_canonical(block)) // 4)


def _canonical(block: Any) -> str:
    if isinstance(block, dict):
        block = {k: v for k, v in block.items() if k != "cache_control"}
    return json.dumps(block, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def prompt_blocks(body: dict[str, Any]) -> list[tuple[Any, bool]]:
    """``(block, is_breakpoint)`` in cache order: tools, system, then each message's blocks."""
    out: list[tuple[Any, bool]] = [(t, "cache_control" in t) for t in body.get("tools") or []]
    system = body.get("system")
    system_blocks = [{"type": "text", "text": system}] if isinstance(system, str) else system or []
    out += [(b, "cache_control" in b) for b in system_blocks]
    for m in body.get("messages") or []:
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        out += [({"role": m.get("role"), **b}, "cache_control" in b) for b in blocks]
    return out


class PromptCache:
    """The cache one fake API holds across its requests.

    ``clock`` gives seconds (default: Trio's clock, so a ``MockClock`` drives expiry);
    ``min_tokens`` overrides the per-model minimum for every model. Not thread-safe: the fake
    serves on one Trio loop.
    """

    def __init__(self, clock: Callable[[], float] = trio.current_time, min_tokens: int | None = None) -> None:
        self._clock = clock
        self._min_tokens = min_tokens
        self._expires: dict[str, float] = {}  # prefix key -> when it expires

    def account(self, body: dict[str, Any]) -> CacheUsage:
        """Read what this request finds in the cache, write what it asks to cache, and say how
        its input tokens split into read, written and uncached."""
        now = self._clock()
        self._expires = {k: t for k, t in self._expires.items() if t > now}
        blocks = self._prefixes(body)
        total = blocks[-1].tokens if blocks else 0
        hit = self._longest_hit(blocks)
        read = blocks[hit].tokens if hit is not None else 0
        for b in blocks[: (hit if hit is not None else -1) + 1]:
            if b.key in self._expires:
                self._expires[b.key] = now + TTL_S
        floor = self._min_tokens if self._min_tokens is not None else min_tokens_for(str(body.get("model")))
        written = read
        for i, b in enumerate(blocks):
            if b.breakpoint and (hit is None or i > hit) and b.tokens >= floor:
                self._expires[b.key] = now + TTL_S
                written = b.tokens
        return CacheUsage(total - written, read, written - read)

    def _prefixes(self, body: dict[str, Any]) -> list[_Block]:
        digest = hashlib.sha256(str(body.get("model")).encode())
        out: list[_Block] = []
        tokens = 0
        for block, is_breakpoint in prompt_blocks(body):
            digest.update(_canonical(block).encode())
            digest.update(b"\0")
            tokens += block_tokens(block)
            out.append(_Block(digest.copy().hexdigest(), tokens, is_breakpoint))
        return out

    def _longest_hit(self, blocks: list[_Block]) -> int | None:
        """The index of the longest cached prefix within the lookback of some breakpoint."""
        best: int | None = None
        for i, b in enumerate(blocks):
            if not b.breakpoint:
                continue
            for j in range(i, max(-1, i - LOOKBACK_BLOCKS - 1), -1):
                if blocks[j].key in self._expires:
                    best = j if best is None else max(best, j)
                    break
        return best
