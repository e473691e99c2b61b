"""Build the agent runner the daemon's settings ask for."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import trio

from ..config import MIB, Settings
from ..cpu_pin import release as release_cpu
from ..errors import ConfigError
from .conversation import Budget
from .loop import AgentRunner, AgentSettings, TokenLookup
from .model import ModelProvider, ModelReply, ModelRequest
from .tools import ToolSettings


class BuiltInBackground:
    """A model provider built on a worker thread, off the daemon's way to serving.

    Importing the anthropic SDK takes one to two seconds (a pydantic model for every type of
    its API); done before serving, it alone made a restart miss "ready within a second".
    ``warm_up``, which the daemon starts once it serves, builds the provider; a ``complete``
    that comes first waits for it. The thread runs off the event loop's CPU, and the loop stays
    responsive meanwhile (it shares only the interpreter with the import).
    """

    def __init__(self, name: str, build: Callable[[], ModelProvider]) -> None:
        self.name = name
        self._build = build
        self._provider: ModelProvider | None = None
        self._building = trio.Lock()

    async def provider(self) -> ModelProvider:
        """The provider, built now if it is not yet (once: concurrent callers wait for it).

        Raises what building raised (the next call tries again). Cancellation: the caller
        stops waiting; the build goes on in its thread and a later call starts another.
        """
        if self._provider is None:
            async with self._building:
                if self._provider is None:
                    self._provider = await trio.to_thread.run_sync(self._build_off_loop, abandon_on_cancel=True)
        return self._provider

    def _build_off_loop(self) -> ModelProvider:
        release_cpu()  # Trio's worker threads start on the event loop's CPU
        return self._build()

    async def warm_up(self) -> None:
        await self.provider()

    async def complete(self, request: ModelRequest, on_text_delta: Callable[[str], None] | None = None) -> ModelReply:
        return await (await self.provider()).complete(request, on_text_delta)


def anthropic_provider(settings: Settings) -> ModelProvider:
    """Claude through the SDK (imported here: see ``BuiltInBackground``)."""
    from .anthropic_provider import AnthropicProvider

    assert settings.anthropic_api_key
    return AnthropicProvider(
        settings.anthropic_api_key, base_url=settings.anthropic_base_url,
        model=settings.anthropic_model, reply_slots=settings.model_reply_slots,
    )


def build_provider(settings: Settings) -> ModelProvider:
    if settings.model_name == "anthropic":
        if not settings.anthropic_api_key:
            raise ConfigError("config: model: 'anthropic' needs ANTHROPIC_API_KEY")
        return BuiltInBackground("anthropic", partial(anthropic_provider, settings))
    if settings.script is None:
        raise ConfigError(
            "config: script: the scripted model needs a script (--script FILE); "
            "set ANTHROPIC_API_KEY to use Claude"
        )
    from .scripted_provider import ScriptedProvider

    try:
        return ScriptedProvider.from_file(settings.script)
    except Exception as exc:  # a bad script is a configuration problem, said in one line
        raise ConfigError(f"config: script: {getattr(exc, 'message', exc)}") from None


def agent_settings(settings: Settings) -> AgentSettings:
    return AgentSettings(
        workspace_root=settings.data_dir / "workspaces",
        budget_defaults=Budget(settings.budget_max_turns, settings.budget_max_tokens, settings.budget_max_usd),
        budget_caps=Budget(settings.budget_cap_turns, settings.budget_cap_tokens, settings.budget_cap_usd),
        tools=ToolSettings(
            command_timeout_s=settings.tool_timeout_s,
            output_cap_bytes=settings.tool_output_cap_bytes,
            sandbox=settings.sandbox,
        ),
        max_output_tokens=settings.max_output_tokens,
        stuck_repeats=settings.stuck_repeats,
        allow_local_remotes=settings.allow_local_remotes,
        quota_bytes=settings.workspace_quota_mb * MIB,
        min_free_bytes=settings.min_free_disk_mb * MIB,
        identity=(settings.git_author_name, settings.git_author_email),
        ssh_key=settings.ssh_key,
        github_api=settings.github_api,
        github_web_host=settings.github_web_host,
    )


def build_runner(settings: Settings, github_token: TokenLookup | None = None) -> AgentRunner:
    return AgentRunner(build_provider(settings), agent_settings(settings), github_token)
