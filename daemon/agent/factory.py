"""Build the agent runner the daemon's settings ask for."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import httpx2
import trio

from ..config import MIB, Settings
from ..cpu_pin import release as release_cpu
from ..errors import ConfigError, PermanentError
from .context_window import policy_for
from .conversation import Budget
from .loop import AgentRunner, AgentSettings, TokenLookup
from .model import ModelProvider, ModelReply, ModelRequest, Price, cost_of
from .setup_phase import setup_settings
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
        self._thread = trio.CapacityLimiter(1)  # its own: not behind 40 others' file work

    async def provider(self) -> ModelProvider:
        """The provider, built now if it is not yet (once: concurrent callers wait for it).

        Raises ``PermanentError`` saying why it could not be built (the next call tries
        again). Cancellation: the caller stops waiting; the build goes on in its thread and a
        later call starts another.
        """
        if self._provider is None:
            async with self._building:
                if self._provider is None:
                    try:
                        self._provider = await trio.to_thread.run_sync(
                            self._build_off_loop, limiter=self._thread, abandon_on_cancel=True
                        )
                    except Exception as exc:
                        raise PermanentError(
                            f"model {self.name}: could not be loaded: {type(exc).__name__}: {exc}"
                        ) from exc
        return self._provider

    def _build_off_loop(self) -> ModelProvider:
        release_cpu()  # Trio's worker threads start on the event loop's CPU
        return self._build()

    async def warm_up(self) -> None:
        await self.provider()

    async def complete(
        self, request: ModelRequest, on_text_delta: Callable[[str], None] | None = None
    ) -> ModelReply:
        return await (await self.provider()).complete(request, on_text_delta)


class TaskModels:
    """A provider that runs each call on its task's model and prices it from that model's row.

    One provider serves every task; a request names its task's model (``ModelRequest.model``,
    None: ``default``), one of ``prices`` (the operator's allowlist, ``Settings.model_prices``),
    and the reply's cost is computed from that model's price row, so an operator's row counts
    and a dated id the API answers with is priced as the alias the task asked for. Everything
    else (``name``, ``warm_up``...) is the wrapped provider's. Cancellation: as the wrapped
    provider's ``complete``.
    """

    def __init__(self, provider: ModelProvider, prices: Mapping[str, Price], default: str) -> None:
        self.provider = provider
        self.name = provider.name
        self._prices = dict(prices)
        self._default = default

    def __getattr__(self, name: str) -> Any:
        # Only for what is not set here (warm_up, a background provider's state): the wrapped one's.
        return getattr(self.provider, name)

    async def complete(
        self, request: ModelRequest, on_text_delta: Callable[[str], None] | None = None
    ) -> ModelReply:
        model = request.model or self._default
        reply = await self.provider.complete(dataclasses.replace(request, model=model), on_text_delta)
        price = self._prices.get(model)
        if price is None:  # not allowed (any more): the provider priced it from the built-in rows
            return reply
        usage = dataclasses.replace(reply.usage, cost_usd=cost_of(model, reply.usage, price))
        return dataclasses.replace(reply, usage=usage)


def anthropic_provider(settings: Settings) -> ModelProvider:
    """Claude through the SDK, imported here (see ``BuiltInBackground``) and only as far as its
    client needs (``anthropic_sdk.import_lean``), with its TLS context (the CA store read now)."""
    from ..thirdparty.anthropic_sdk import import_lean

    import_lean()
    from .anthropic_provider import AnthropicProvider

    assert settings.anthropic_api_key
    return AnthropicProvider(
        settings.anthropic_api_key,
        base_url=settings.anthropic_base_url,
        model=settings.anthropic_model,
        reply_slots=settings.model_reply_slots,
        context=policy_for(settings),  # long runs: "api" sends the context-management edits
        ssl_context=httpx2.create_ssl_context(),
    )


def build_provider(settings: Settings) -> ModelProvider:
    """The provider the settings ask for. What can be wrong in them is found here, before the
    daemon serves (``ConfigError``); Claude's SDK itself is loaded later (``BuiltInBackground``)."""
    if settings.model_name == "anthropic":
        if not settings.anthropic_api_key:
            raise ConfigError("config: model: 'anthropic' needs ANTHROPIC_API_KEY")
        check_model_address(settings.anthropic_base_url)
        return BuiltInBackground("anthropic", partial(anthropic_provider, settings))
    if settings.script is None:
        raise ConfigError(
            "config: script: the scripted model needs a script (--script FILE); "
            "set ANTHROPIC_API_KEY to use Claude"
        )
    from .scripted_provider import ScriptedProvider

    try:
        return ScriptedProvider.from_file(settings.script)
    except Exception as exc:  # noqa: BLE001 - a bad script is a configuration problem, said in one line
        raise ConfigError(f"config: script: {getattr(exc, 'message', exc)}") from None


def check_model_address(base_url: str | None, environ: Mapping[str, str] = os.environ) -> None:
    """Raise ``ConfigError`` for a base URL that is not an http(s) URL with a host, or a CA
    file or directory (``SSL_CERT_FILE``, ``SSL_CERT_DIR``, which the model's TLS context reads
    first) that is not there: mistakes found at startup, not by a failed task. Reading the CA
    store itself is left to the provider's build, after serving."""
    if base_url is not None:
        try:
            url = httpx2.URL(base_url)
        except httpx2.InvalidURL as exc:
            raise ConfigError(f"config: anthropic_base_url: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError("config: anthropic_base_url: needs http:// or https:// and a host")
    for variable, exists in (("SSL_CERT_FILE", os.path.isfile), ("SSL_CERT_DIR", os.path.isdir)):
        named = environ.get(variable)
        if named:
            if not exists(named):
                what = "file" if variable == "SSL_CERT_FILE" else "directory"
                raise ConfigError(f"config: TLS for the model's API: {variable}: no such {what}: {named}")
            return  # the first one set is the one used


def agent_settings(settings: Settings) -> AgentSettings:
    return AgentSettings(
        workspace_root=settings.data_dir / "workspaces",
        budget_defaults=Budget(
            settings.budget_max_turns, settings.budget_max_tokens, settings.budget_max_usd
        ),
        budget_caps=Budget(settings.budget_cap_turns, settings.budget_cap_tokens, settings.budget_cap_usd),
        tools=ToolSettings(
            command_timeout_s=settings.tool_timeout_s,
            output_cap_bytes=settings.tool_output_cap_bytes,
            sandbox=settings.sandbox,
            max_processes=settings.sandbox_max_processes,
            memory_bytes=settings.sandbox_memory_mb * MIB,
            cpu_time_s=settings.sandbox_cpu_s,
            # One file can never be larger than the whole workspace may be.
            file_size_bytes=settings.workspace_quota_mb * MIB,
            tmp_bytes=settings.sandbox_tmp_mb * MIB,
            uid_base=settings.sandbox_uid_base,
            uid_count=settings.sandbox_uid_count,
        ),
        max_output_tokens=settings.max_output_tokens,
        max_output_tokens_limit=settings.max_output_tokens_limit,
        stuck_repeats=settings.stuck_repeats,
        instructions_cap_bytes=settings.instructions_cap_bytes,
        context=policy_for(settings),
        allow_local_remotes=settings.allow_local_remotes,
        allow_private_remotes=settings.allow_private_remotes,
        quota_bytes=settings.workspace_quota_mb * MIB,
        min_free_bytes=settings.min_free_disk_mb * MIB,
        identity=(settings.git_author_name, settings.git_author_email),
        ssh_key=settings.ssh_key,
        github_api=settings.github_api,
        github_web_host=settings.github_web_host,
        setup=setup_settings(settings),
    )


def task_models(settings: Settings, provider: ModelProvider) -> TaskModels:
    """``provider`` running each task on its own model from the settings' allowlist."""
    return TaskModels(provider, settings.model_prices(), settings.default_model)


def build_runner(settings: Settings, github_token: TokenLookup | None = None) -> AgentRunner:
    provider = task_models(settings, build_provider(settings))
    return AgentRunner(provider, agent_settings(settings), github_token)
