"""One typed settings object for the daemon.

Sources overlay in this order: defaults < TOML file < environment < command-line flags.
Only flags that were actually given count (the CLI passes ``None`` for the others), so a flag
left at its default never hides an environment variable. Unknown keys are refused with a message
naming them; every problem becomes one ``ConfigError`` line naming the key.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

if TYPE_CHECKING:
    from .agent.model import Price

SECONDS = 1.0
MINUTES = 60 * SECONDS
HOURS = 60 * MINUTES
DAYS = 24 * HOURS
MIB = 1024 * 1024

# Environment variable -> settings key (design §3).
ENV_KEYS: dict[str, str] = {
    "AGENTD_DATA_DIR": "data_dir",
    "AGENTD_HTTP": "http",
    "AGENTD_CONTROL_SOCKET": "control_socket",
    "AGENTD_CONCURRENCY": "concurrency",
    "AGENTD_MODEL": "model",
    "AGENTD_SCRIPT": "script",
    "AGENTD_ALLOW_LOCAL_REMOTES": "allow_local_remotes",
    "AGENTD_GITHUB_API": "github_api",
    "ANTHROPIC_API_KEY": "anthropic_api_key",
    "ANTHROPIC_BASE_URL": "anthropic_base_url",
    # Phone API (issue 6)
    "AGENTD_PUBLIC_URL": "public_url",
    "AGENTD_GITHUB_OAUTH_URL": "github_oauth_url",
    "AGENTD_GITHUB_CLIENT_ID": "github_client_id",
    "AGENTD_GITHUB_CLIENT_SECRET": "github_client_secret",
    "AGENTD_APP_REDIRECTS": "app_redirects",
    "AGENTD_SECRET_KEYS": "secret_keys",
    "AGENTD_SECRET_KEY_FILE": "secret_key_file",
    # Operations (issue 7)
    "AGENTD_STORE": "store",
    "AGENTD_NODE_NAME": "node_name",
    "AGENTD_LOG_LEVEL": "log_level",
    "AGENTD_LOG_FORMAT": "log_format",
    "AGENTD_PIN_LOOP_CPU": "pin_loop_cpu",
    "AGENTD_METRICS_HTTP": "metrics_http",
    # Repository addresses (issue 18)
    "AGENTD_ALLOW_PRIVATE_REMOTES": "allow_private_remotes",
    # Per-task models (issue 19)
    "AGENTD_ALLOWED_MODELS": "allowed_models",
}


# Settings whose values are never echoed back, not even in an error message.
SECRET_KEYS = frozenset({"anthropic_api_key", "github_client_secret", "secret_keys", "store"})


class ModelPriceRow(BaseModel):
    """An operator's price row for one model (``[models."NAME"]`` in the TOML file), in USD per
    million tokens; cache writes default to 1.25x input, cache reads to 0.1x input; and,
    optional, the model's context window (``daemon/agent/context_window.py``, ``for_model``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_usd_per_mtok: float = Field(ge=0, allow_inf_nan=False)
    output_usd_per_mtok: float = Field(ge=0, allow_inf_nan=False)
    cache_write_usd_per_mtok: float | None = Field(None, ge=0, allow_inf_nan=False)
    cache_read_usd_per_mtok: float | None = Field(None, ge=0, allow_inf_nan=False)
    # The model's context window (tokens); unset: the built-in one, else context_window_tokens.
    context_window_tokens: int | None = Field(None, ge=1000)


class Settings(BaseModel):
    """Every option of the daemon, with its unit in the name or the default."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    data_dir: Path = Path("agentd-data")
    # Unset: SQLite in data_dir. postgresql://... : several daemons share one database.
    store: str | None = Field(None, repr=False)
    http: str = "127.0.0.1:8080"
    control_socket: Path | None = None  # default: <data_dir>/agentd.sock
    control_socket_group: str | None = None
    concurrency: int = Field(4, ge=1, le=1024)
    model: Literal["anthropic", "scripted"] | None = None  # default: anthropic iff a key is set
    script: Path | None = None
    anthropic_api_key: str | None = Field(None, repr=False)
    anthropic_base_url: str | None = None
    anthropic_model: str = "claude-sonnet-5-5"  # a task's model unless it names another
    # Per-task models (issue 19): what else a task may name (the operator's allowlist), and the
    # operator's price rows, which add to or replace the built-in ones (daemon/agent/model.py
    # PRICES). Every allowed model needs a row; the scripted model allows only itself.
    allowed_models: tuple[str, ...] = ()
    models: dict[str, ModelPriceRow] = Field(default_factory=dict)
    # How many tasks at a time may build a model request or parse the replies that have arrived
    # (daemon/agent/reply_gate.py); 0: no gate.
    model_reply_slots: int = Field(1, ge=0, le=1024)
    allow_local_remotes: bool = False
    # Repository addresses (issue 18): let repo_url reach loopback, private, link-local and
    # unique-local addresses (daemon/git/addresses.py). allow_local_remotes implies it.
    allow_private_remotes: bool = False
    github_api: str = "https://api.github.com"

    # Retries: exponential backoff with full jitter.
    retry_base_s: float = Field(2 * SECONDS, gt=0)
    retry_cap_s: float = Field(10 * MINUTES, gt=0)
    max_attempts: int = Field(5, ge=1)

    max_task_duration_s: float = Field(1 * HOURS, gt=0)
    grace_period_s: float = Field(30 * SECONDS, ge=0)
    user_concurrency: int = Field(0, ge=0)  # one user's running tasks, on all nodes; 0: no cap

    # Several daemons on one PostgreSQL (issue 9).
    node_name: str | None = None  # how agentctl shows this daemon; default: the host name
    lease_timeout_s: float = Field(15 * SECONDS, gt=0)  # silent this long: a node's tasks move
    heartbeat_interval_s: float = Field(3 * SECONDS, gt=0)

    # Phone API (issue 6)
    public_url: str | None = None  # how phones reach us (OAuth callback); default: the request's
    http_max_body_bytes: int = Field(1 * MIB, ge=1024)
    github_oauth_url: str = "https://github.com"  # authorize + access_token live under it
    github_client_id: str | None = None
    github_client_secret: str | None = Field(None, repr=False)
    app_redirects: tuple[str, ...] = ()  # URIs the phone flow may redirect to (exact, no query)
    oauth_login_ttl_s: float = Field(10 * MINUTES, gt=0)
    api_token_ttl_s: float = Field(90 * DAYS, gt=0)
    # Share links of a task (issue 22, daemon/usecases/shares.py): default and longest lifetime,
    # and how many live ones one task may have.
    share_ttl_s: float = Field(7 * DAYS, gt=0)
    share_max_ttl_s: float = Field(30 * DAYS, gt=0)
    share_links_per_task: int = Field(20, ge=1)
    secret_keys: tuple[str, ...] = Field((), repr=False)  # Fernet keys, newest first
    secret_key_file: Path | None = None  # default: <data_dir>/secret.key, created 0600
    rate_task_creates_per_min: float = Field(30, gt=0)
    rate_task_creates_burst: int = Field(10, ge=1)
    rate_subscribes_per_min: float = Field(120, gt=0)
    rate_subscribes_burst: int = Field(60, ge=1)
    ws_auth_timeout_s: float = Field(10 * SECONDS, gt=0)
    ws_ping_interval_s: float = Field(20 * SECONDS, gt=0)
    ws_ping_timeout_s: float = Field(20 * SECONDS, gt=0)
    ws_reauth_interval_s: float = Field(30 * SECONDS, gt=0)  # revocation/expiry seen this soon
    ws_queue_limit: int = Field(1000, ge=8)  # messages waiting per connection before resync
    ws_max_subscriptions: int = Field(200, ge=1)
    ws_delta_interval_s: float = Field(0.05, ge=0)  # agent.text_delta at most ~20/s per task

    @field_validator("app_redirects", "secret_keys", "allowed_models", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        # The environment gives one string: "a,b,c".
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    # The agent loop: output per turn, budgets (defaults, and caps on a task's override).
    max_output_tokens: int = Field(8192, ge=256)
    # A turn cut off inside a tool call is retried with max_tokens doubled, up to this.
    max_output_tokens_limit: int = Field(64_000, ge=256)
    budget_max_turns: int = Field(60, ge=1)
    budget_max_tokens: int = Field(3_000_000, ge=1000)
    budget_max_usd: float = Field(5.0, gt=0)
    budget_cap_turns: int = Field(300, ge=1)
    budget_cap_tokens: int = Field(20_000_000, ge=1000)
    budget_cap_usd: float = Field(50.0, gt=0)
    stuck_repeats: int = Field(5, ge=2)
    # Repository instructions (AGENTS.md, CLAUDE.md) given to the model: bytes in all, per task.
    instructions_cap_bytes: int = Field(32 * 1024, ge=0)
    # Long runs (daemon/agent/context_window.py), in estimated tokens. "auto": "api" (the
    # Messages API's own clearing and compaction betas) for Claude at api.anthropic.com, else
    # "client" (agentd clears and summarizes: other endpoints may not know those betas).
    context_management: Literal["auto", "api", "client", "off"] = "auto"
    context_window_tokens: int = Field(200_000, ge=1000)
    context_clear_at_tokens: int = Field(100_000, ge=100)
    context_clear_at_least_tokens: int = Field(40_000, ge=0)
    context_keep_tool_results: int = Field(3, ge=0)
    context_compact_at_tokens: int = Field(150_000, ge=100)
    tool_timeout_s: float = Field(120 * SECONDS, gt=0)
    tool_output_cap_bytes: int = Field(30_000, ge=1000)
    sandbox: Literal["auto", "required", "off"] = "auto"
    # Per-task limits of the tools' sandbox (daemon/agent/tools/limits.py says which hold where)
    # and, as root, the uids tasks run as (one per running task; the gid is the same number).
    sandbox_max_processes: int = Field(512, ge=16)
    sandbox_memory_mb: int = Field(4096, ge=64)
    sandbox_cpu_s: int = Field(600, ge=1)
    sandbox_tmp_mb: int = Field(512, ge=1)
    sandbox_uid_base: int = Field(600_000, ge=1000, le=2_000_000_000)
    sandbox_uid_count: int = Field(65_536, ge=0, le=100_000_000)  # 0: tasks run as the daemon's user
    # The setup phase (issue 19, daemon/agent/setup_phase.py): the operator's command (first),
    # the repository's .agentd/setup.sh, their time limit; and the egress proxy that alone lets
    # them (and, with agent_network = "proxy", the agent's commands) out (egress_proxy.py).
    setup_command: str | None = None
    setup_repo_script: bool = True
    setup_timeout_s: float = Field(10 * MINUTES, gt=0)
    agent_network: Literal["off", "proxy"] = "off"
    egress_allowed_hosts: tuple[str, ...] = ()  # empty: the package registries (README)
    egress_allowed_ports: tuple[int, ...] = (80, 443)
    egress_private_hosts: tuple[str, ...] = ()  # allowed names that may resolve to private addresses
    egress_max_connections: int = Field(32, ge=1)
    egress_max_mb: int = Field(4096, ge=1)
    egress_idle_timeout_s: float = Field(60 * SECONDS, gt=0)

    # Operations (issue 7)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"  # auto: console on a terminal, else JSON
    metrics_refresh_s: float = Field(5 * SECONDS, gt=0)  # how old /metrics' task counts may be
    # Where /metrics is served: unset, on the HTTP port; HOST:PORT, there only (a private address).
    metrics_http: str | None = None
    pin_loop_cpu: bool = True  # the event loop and the SQLite writer on one CPU (daemon/cpu_pin.py)
    gc_young_interval_s: float = Field(0.1, ge=0)  # 0: only the automatic ones (daemon/gc_tuning.py)

    # The HTTP port under abuse (issue 18): daemon/web/listener.py, ws.py, session.py.
    http_max_connections: int = Field(4096, ge=1)  # open at once; more are answered 503, closed
    http_max_connections_per_address: int = Field(256, ge=0)  # an IPv4 address, IPv6 /64; 0: none
    http_request_timeout_s: float = Field(30 * SECONDS, gt=0)  # a whole request, head and body
    ws_queue_max_bytes: int = Field(1 * MIB, ge=64 * 1024)  # bytes waiting per connection
    ws_max_connections_per_user: int = Field(32, ge=0)  # authenticated WebSockets; 0: no cap

    @model_validator(mode="after")
    def _models_priced(self) -> Settings:
        self.model_prices()  # raises ValueError naming a model without a price row
        return self

    def model_prices(self) -> dict[str, Price]:
        """The models a task may name, the default (``default_model``) first, each with its
        price row; ``ValueError`` names an allowed model that has none."""
        from .agent.model import SCRIPTED_PRICE, allowlist

        if self.model_name == "scripted":
            return {"scripted": SCRIPTED_PRICE}
        rows = {name: row.model_dump() for name, row in self.models.items()}
        return allowlist(self.anthropic_model, self.allowed_models, rows)

    @property
    def default_model(self) -> str:
        """The model of a task that names none: ``anthropic_model``, or ``scripted``."""
        return self.anthropic_model if self.model_name == "anthropic" else "scripted"

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> Settings:
        if self.heartbeat_interval_s * 3 > self.lease_timeout_s:
            raise ValueError(
                "heartbeat_interval_s must be at most a third of lease_timeout_s (a node must get "
                "two heartbeats wrong before it stops its tasks, and others take them over)"
            )
        return self

    @field_validator("gc_young_interval_s")
    @classmethod
    def _off_or_at_least_10_ms(cls, value: float) -> float:
        if 0 < value < 0.01:
            raise ValueError("must be 0 (off) or at least 0.01 (each tick is a collection)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_name(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    # Workspaces and git.
    workspace_quota_mb: int = Field(2000, ge=1)
    min_free_disk_mb: int = Field(500, ge=0)
    workspace_keep_days: float = Field(7, ge=0)
    # Retention (daemon/retention.py): a finished task's events, conversation and tool calls go
    # this long after it ended, its summary stays; 0 keeps them for ever. 30 days: a month of
    # history to look back at and follow up on with the agent's whole context (the workspace
    # has gone after workspace_keep_days anyway), while a busy daemon's store stays bounded.
    retention_days: float = Field(30, ge=0)
    retention_interval_s: float = Field(1 * HOURS, gt=0)
    git_author_name: str = "agentd"
    git_author_email: str = "agentd@localhost"
    ssh_key: Path | None = None
    github_web_host: str = "github.com"

    # Web Push (issue 22, daemon/notify/webpush.py): the contact push services see in the VAPID
    # token (mailto: or https:; default: public_url's origin when https), and how long a push
    # service keeps a message for a phone that is offline (0: deliver now or drop).
    vapid_subject: str | None = Field(None, pattern=r"^(mailto:[^\s@]+@[^\s@]+|https://[^\s/]+/?)$")
    push_ttl_s: int = Field(1 * 24 * 3600, ge=0, le=28 * 24 * 3600)

    # The outbox (issue 22, daemon/notify/sender.py): deliveries at once, one request's timeout,
    # how long a claim holds (a sender that died frees it then), backoff, and when to give up
    # (after this many attempts, or this long after the delivery was due first). Webhook and
    # ntfy URLs follow allow_private_remotes. ``webhooks_per_user``: targets one user may have.
    notify_concurrency: int = Field(8, ge=1, le=256)
    notify_timeout_s: float = Field(10 * SECONDS, gt=0)
    notify_claim_s: float = Field(60 * SECONDS, gt=0)
    notify_retry_base_s: float = Field(10 * SECONDS, gt=0)
    notify_retry_cap_s: float = Field(1 * HOURS, gt=0)
    notify_max_attempts: int = Field(10, ge=1)
    notify_max_age_s: float = Field(1 * DAYS, gt=0)
    webhooks_per_user: int = Field(10, ge=1)

    @field_validator("http", "metrics_http")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if port.isdigit() and not host:  # "8080" or ":8080": all interfaces is never a guess
            raise ValueError(f"expected HOST:PORT, got {value!r}; did you mean 127.0.0.1:{port}?")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        return value

    @property
    def db_path(self) -> Path:
        return self.data_dir / "agentd.db"

    @property
    def control_socket_path(self) -> Path:
        return self.control_socket or self.data_dir / "agentd.sock"

    @property
    def http_host_port(self) -> tuple[str, int]:
        return host_port(self.http)

    @property
    def model_name(self) -> str:
        """The provider in force: the configured one, else anthropic iff an API key is set."""
        if self.model:
            return self.model
        return "anthropic" if self.anthropic_api_key else "scripted"


def host_port(address: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` -> ``("127.0.0.1", 8080)``, ``"[::]:9091"`` -> ``("::", 9091)``."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def load_settings(
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
) -> Settings:
    """Build the settings from every source; raise ``ConfigError`` with one readable line."""
    env = os.environ if env is None else env
    merged: dict[str, object] = dict(_systemd_defaults(env))
    if config_file is not None:
        merged.update(_read_toml(config_file))
    for name, key in ENV_KEYS.items():
        if env.get(name):
            merged[key] = env[name]
    merged.update({key: value for key, value in (flags or {}).items() if value is not None})
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, merged, config_file)) from None


def _systemd_defaults(env: Mapping[str, str]) -> dict[str, object]:
    """Under systemd, StateDirectory/RuntimeDirectory give the default places (design §3)."""
    found: dict[str, object] = {}
    if env.get("STATE_DIRECTORY"):
        found["data_dir"] = env["STATE_DIRECTORY"].split(":")[0]
    if env.get("RUNTIME_DIRECTORY"):
        found["control_socket"] = Path(env["RUNTIME_DIRECTORY"].split(":")[0]) / "agentd.sock"
    return found


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None


def _describe(exc: ValidationError, given: Mapping[str, object], config_file: Path | None) -> str:
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(settings)"
    if first["type"] == "extra_forbidden":
        # Only a file can hold a key the settings lack: the environment and the flags are mapped.
        where = f" in {config_file}" if config_file is not None else ""
        close = difflib.get_close_matches(key, Settings.model_fields, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ' (README: "Configuration" lists them)'
        return f"config: unknown setting {key!r}{where}{hint}"
    value = given.get(str(first["loc"][0])) if first["loc"] else None
    message = first["msg"].removeprefix("Value error, ")
    secret = str(first["loc"][0]) in SECRET_KEYS if first["loc"] else False
    omit = value is None or secret or repr(value) in message
    return f"config: {key}: {message}" + ("" if omit else f" (got {value!r})")
