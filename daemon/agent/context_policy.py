"""How a task's conversation is kept within its model's context window: the policy (mode,
window, thresholds, per model) and what the Messages API is asked to do in mode "api".

``context_window`` applies it on agentd's side ("client"); ``policy_for`` reads it from the
settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["ANTHROPIC_API", "ContextPolicy", "Mode", "api_edits", "policy_for"]

Mode = Literal["api", "client", "off"]

ANTHROPIC_API = "https://api.anthropic.com"


@dataclass(frozen=True)
class ContextPolicy:
    """How a task's conversation is kept within ``window_tokens`` (estimated tokens).

    ``mode``: "api" (the Messages API's own context management), "client" (this module, for
    Anthropic-compatible endpoints and the scripted model) or "off" (sent as it is). Whatever
    the mode, a "prompt is too long" answer compacts and the turn is asked again.

    ``windows``: the context window of each model a task may name, where it differs from
    ``window_tokens`` or is known (``model.context_window``); ``default_model``: the model of a
    task that names none. ``for_model`` gives the policy of one of them.
    """

    mode: Mode = "client"
    window_tokens: int = 200_000
    clear_at_tokens: int = 100_000
    clear_at_least_tokens: int = 40_000
    keep_tool_results: int = 3
    compact_at_tokens: int = 150_000
    exclude_tools: tuple[str, ...] = field(default=("ask_user",))
    windows: tuple[tuple[str, int], ...] = ()
    default_model: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("api", "client", "off"):
            raise ConfigError(f"context_management must be api, client or off; got {self.mode!r}")
        if not 0 < self.clear_at_tokens < self.compact_at_tokens <= self.window_tokens:
            raise ConfigError(
                "context window: needs 0 < context_clear_at_tokens < context_compact_at_tokens "
                f"<= context_window_tokens; got {self.clear_at_tokens}, {self.compact_at_tokens}, "
                f"{self.window_tokens}"
            )
        if self.clear_at_least_tokens < 0 or self.keep_tool_results < 0:
            raise ConfigError("context window: clear_at_least and keep_tool_results must be >= 0")

    def for_model(self, model: str | None) -> ContextPolicy:
        """The policy of a task on ``model`` (None: ``default_model``).

        Its window is the model's (``windows``; else ``window_tokens``). A window smaller than
        ``window_tokens`` scales the thresholds (clear at, clear at least, compact at) down in
        proportion, so a small model is never sent more than it takes; a larger one leaves them
        as set: a larger prompt costs more on every turn, so using more of a larger window is
        the operator's call (the settings). ``ConfigError`` if the scaled thresholds are out of
        order (``policy_for`` checks every allowed model at startup).
        """
        window = dict(self.windows).get(model or self.default_model or "")
        if window is None or window == self.window_tokens:
            return self
        if window > self.window_tokens:
            return replace(self, window_tokens=window)

        def scaled(tokens: int) -> int:
            return tokens * window // self.window_tokens

        return replace(
            self,
            window_tokens=window,
            clear_at_tokens=scaled(self.clear_at_tokens),
            clear_at_least_tokens=scaled(self.clear_at_least_tokens),
            compact_at_tokens=scaled(self.compact_at_tokens),
        )


def api_edits(policy: ContextPolicy) -> dict[str, Any]:
    """The request's ``context_management`` for mode "api": clearing, then compaction (the
    thresholds of ``policy`` as it is: ``for_model`` first for a task's model)."""
    tokens = "input_tokens"
    clear: dict[str, Any] = {
        "type": "clear_tool_uses_20250919",
        "trigger": {"type": tokens, "value": policy.clear_at_tokens},
        "keep": {"type": "tool_uses", "value": policy.keep_tool_results},
        "clear_at_least": {"type": tokens, "value": policy.clear_at_least_tokens},
    }
    if policy.exclude_tools:
        clear["exclude_tools"] = list(policy.exclude_tools)
    compact = {"type": "compact_20260112", "trigger": {"type": tokens, "value": policy.compact_at_tokens}}
    return {"edits": [clear, compact]}


def policy_for(settings: Settings) -> ContextPolicy:
    """The settings' policy; ``context_management = "auto"`` is "api" for Claude at
    api.anthropic.com (the API's betas are there) and "client" otherwise: an
    Anthropic-compatible endpoint may refuse betas it does not know, and the scripted model has
    no server. Each allowed model's window (``Settings.models``' ``context_window_tokens``, else
    the built-in one for Claude) goes in ``ContextPolicy.windows``. Raises ``ConfigError`` for
    thresholds out of order, for any allowed model."""
    mode = settings.context_management
    if mode == "auto":
        host = urlsplit(settings.anthropic_base_url or ANTHROPIC_API).hostname
        mode = (
            "api"
            if settings.model_name == "anthropic" and host == urlsplit(ANTHROPIC_API).hostname
            else "client"
        )
    from .model import context_window

    given = {name: row.context_window_tokens for name, row in settings.models.items()}
    claude = settings.model_name == "anthropic"
    windows = {
        name: window
        for name in settings.model_prices()
        if (window := given.get(name) or (context_window(name) if claude else None)) is not None
    }
    policy = ContextPolicy(
        mode=mode,
        window_tokens=settings.context_window_tokens,
        clear_at_tokens=settings.context_clear_at_tokens,
        clear_at_least_tokens=settings.context_clear_at_least_tokens,
        keep_tool_results=settings.context_keep_tool_results,
        compact_at_tokens=settings.context_compact_at_tokens,
        windows=tuple(sorted(windows.items())),
        default_model=settings.default_model,
    )
    for name, window in windows.items():
        try:
            policy.for_model(name)
        except ConfigError as err:
            raise ConfigError(
                f"model {name!r}: its context window of {window} tokens scales the thresholds out "
                f'of order ({err}); give it a larger context_window_tokens in [models."{name}"] or '
                "lower the context_window_tokens setting (its thresholds scale by the ratio of the two)"
            ) from None
    return policy
