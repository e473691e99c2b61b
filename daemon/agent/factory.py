"""Build the agent runner the daemon's settings ask for."""

from __future__ import annotations

from ..config import MIB, Settings
from ..errors import ConfigError
from .conversation import Budget
from .loop import AgentRunner, AgentSettings, TokenLookup
from .model import ModelProvider
from .tools import ToolSettings


def build_provider(settings: Settings) -> ModelProvider:
    if settings.model_name == "anthropic":
        if not settings.anthropic_api_key:
            raise ConfigError("config: model: 'anthropic' needs ANTHROPIC_API_KEY")
        from .anthropic_provider import AnthropicProvider

        return AnthropicProvider(
            settings.anthropic_api_key, base_url=settings.anthropic_base_url,
            model=settings.anthropic_model, reply_slots=settings.model_reply_slots,
        )
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
