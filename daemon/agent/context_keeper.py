"""One attempt's conversation fitted to the model's context window (``context_window`` applied).

``ContextKeeper.prepare`` turns the stored turns into the request's messages: from the last
compaction on and, in mode "client", with old tool results cleared in batches (and the API's
``compaction`` block of a model that fell back from mode "api" sent as a summary user turn).
``ContextKeeper.compact`` asks the model (through the task's own provider) for a summary of the
turns before the last exchange; the agent loop stores it as a user turn with ``stop_reason``
``COMPACTED``, so that every later request (and a resumed attempt) starts from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import PermanentError
from . import conversation as conv
from .context_summary import (
    compaction_split,
    covered_turns,
    from_api_compaction,
    summary_content,
    summary_request,
)
from .context_window import ContextPolicy, PromptTooLong, TokenCounter, clear_old_results, visible_turns
from .model import ModelProvider, ModelRequest, Usage

__all__ = ["Compaction", "ContextKeeper", "Prepared"]

# Output allowed for a summary: long enough to be specific, short next to any window.
SUMMARY_MAX_TOKENS = 4096

# In mode "api" the API edits what it is sent, but the body still grows with every turn until the
# API compacts; past this many times the compaction trigger agentd compacts it itself.
API_SEND_FACTOR = 2


@dataclass(frozen=True)
class Prepared:
    """The request's messages and their estimated tokens (system prompt and tools included)."""

    messages: list[dict[str, Any]]
    tokens: int
    cleared_tokens: int = 0


@dataclass(frozen=True)
class Compaction:
    """A summary to store as a user turn (``stop_reason`` ``COMPACTED``), and what it cost."""

    content: list[dict[str, Any]]
    usage: Usage
    model: str
    covered: int  # assistant turns it replaces


class ContextKeeper:
    """The context window of one attempt of one task (not shared between tasks), with the
    thresholds of the task's model (``ContextPolicy.for_model``).

    ``refused``: the models (as tasks name them; None: the default) the API refused mode "api"
    for, shared by every task for the daemon's life (``AgentRunner``); a keeper for one of them
    takes the client path. ``fall_back`` adds this task's model to it.
    """

    def __init__(
        self,
        policy: ContextPolicy,
        provider: ModelProvider,
        model: str | None = None,
        refused: set[str | None] | None = None,
    ) -> None:
        self.policy = policy.for_model(model)  # the task model's window and thresholds
        self.provider = provider
        self.model = model
        self.refused = refused if refused is not None else set()
        self.counter = TokenCounter()
        # The client form of the last API compaction turn: the same objects every turn, so each
        # block is estimated once (the counter keeps what it measured).
        self._converted: tuple[object, list[dict[str, Any]]] | None = None

    @property
    def mode(self) -> str:
        """The mode this task's requests take: the policy's, "client" for a refused model."""
        if self.policy.mode == "api" and self.model in self.refused:
            return "client"
        return self.policy.mode

    def fall_back(self, resolved: str) -> None:
        """Take the client path from now on, for this task's model and the one it resolved to
        (``resolved``, the provider's name for it), in every task (another may have already)."""
        self.refused.update((self.model, resolved))

    def prepare(self, system: str, tools: list[dict[str, Any]], turns: Sequence[dict[str, Any]]) -> Prepared:
        """The messages to send for ``turns`` (the stored conversation); nothing is changed.

        Off mode "api" (a model the API refused it for, or the setting changed since) an API
        ``compaction`` block is never sent: without the beta the API would refuse the request.
        """
        shown = visible_turns(turns)
        if self.mode != "api":
            shown = self._client_form(turns, shown)
        messages = conv.for_model(shown)
        tokens = self.counter.request(system, tools, messages)
        if self.mode != "client":
            return Prepared(messages, tokens)
        cleared, saved = clear_old_results(messages, self.counter, tokens, self.policy)
        return Prepared(cleared, tokens - saved, saved)

    def _client_form(
        self, turns: Sequence[dict[str, Any]], shown: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """``from_api_compaction``, its two new turns kept while the same compaction turn starts."""
        if not shown:
            return shown
        if self._converted is not None and self._converted[0] is shown[0]:
            return [*self._converted[1], *shown[1:]]
        converted = from_api_compaction(turns, shown)
        if converted is not shown:
            self._converted = (shown[0], converted[:2])
        return converted

    def wants_compaction(self, prepared: Prepared) -> bool:
        """Whether to compact before sending ``prepared`` (only if there is something to summarize)."""
        policy, mode = self.policy, self.mode
        if mode == "client":
            over = prepared.tokens > policy.compact_at_tokens
        elif mode == "api":
            over = prepared.tokens > policy.compact_at_tokens * API_SEND_FACTOR
        else:
            over = False
        return over and compaction_split(prepared.messages) is not None

    async def compact(
        self, system: str, tools: list[dict[str, Any]], prepared: Prepared, model: str | None, reason: str
    ) -> Compaction:
        """Summarize what comes before the last exchange of ``prepared`` through the provider.

        Raises ``PermanentError`` (``context_exhausted``) when there is nothing to summarize or
        the summary request does not fit either; ``reason`` says why compaction was needed.
        Cancellation: the summary call is abandoned and nothing is stored.
        """
        messages = prepared.messages
        split = compaction_split(messages)
        if split is None:
            raise PermanentError(
                f"the conversation does not fit the model's context window ({reason}) and its last "
                f"exchange alone is about {prepared.tokens} tokens: nothing older is left to "
                "summarize. Ask for smaller steps (shorter outputs) or a model with a larger window.",
                code="context_exhausted",
            )
        usage = Usage()
        for cut in (False, True):
            request = ModelRequest(
                system=system,
                tools=tools,
                messages=summary_request(messages, split, cut=cut),
                max_tokens=SUMMARY_MAX_TOKENS,
                model=model,
            )
            try:
                reply = await self.provider.complete(request)
            except PromptTooLong:
                continue
            usage = usage + reply.usage
            covered = covered_turns(messages) + sum(1 for m in messages[:split] if m["role"] == "assistant")
            content = summary_content(conv.final_text({"content": reply.content}), covered)
            return Compaction(content, usage, reply.model, covered)
        raise PermanentError(
            f"the conversation does not fit the model's context window ({reason}), and neither "
            "does the request to summarize it. Ask for smaller steps or a model with a larger window.",
            code="context_exhausted",
        )
