"""Settings: defaults < TOML file < environment < flags, and one clear line per mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import load_settings
from daemon.errors import ConfigError


def test_defaults(tmp_path):
    settings = load_settings(env={}, flags={})
    assert settings.data_dir == Path("agentd-data")
    assert settings.http_host_port == ("127.0.0.1", 8080)
    assert settings.control_socket_path == Path("agentd-data/agentd.sock")
    assert settings.model_name == "scripted"
    assert load_settings(env={"ANTHROPIC_API_KEY": "sk-x"}).model_name == "anthropic"


def test_each_source_beats_the_one_before(tmp_path):
    config = tmp_path / "agentd.toml"
    config.write_text('concurrency = 3\nhttp = "127.0.0.1:9000"\ndata_dir = "/srv/file"\n')
    env = {"AGENTD_CONCURRENCY": "5", "AGENTD_DATA_DIR": "/srv/env"}
    settings = load_settings(config_file=config, env=env, flags={"concurrency": 7, "data_dir": None})
    assert settings.concurrency == 7  # flag beats env
    assert settings.data_dir == Path("/srv/env")  # env beats file; an absent flag hides nothing
    assert settings.http == "127.0.0.1:9000"  # file beats default


def test_systemd_directories_give_the_default_places():
    settings = load_settings(env={"STATE_DIRECTORY": "/var/lib/agentd", "RUNTIME_DIRECTORY": "/run/agentd"})
    assert settings.data_dir == Path("/var/lib/agentd")
    assert settings.control_socket_path == Path("/run/agentd/agentd.sock")


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("concurency = 3\n", {}, "config: unknown key 'concurency'"),
        ("", {"AGENTD_CONCURRENCY": "lots"}, "config: concurrency: Input should be a valid integer"),
        ("concurrency = 0\n", {}, "config: concurrency: Input should be greater than or equal to 1 (got 0)"),
        ('http = "localhost"\n', {}, "config: http: expected HOST:PORT, got 'localhost'"),
        ("", {"AGENTD_MODEL": "gpt"}, "config: model: Input should be 'anthropic' or 'scripted'"),
        ("gc_young_interval_s = 0.001\n", {},
         "config: gc_young_interval_s: must be 0 (off) or at least 0.01"),
        ("concurrency = [\n", {}, "invalid TOML"),
    ],
)
def test_bad_config_is_one_clear_line_naming_the_key(tmp_path, toml, env, message):
    config = tmp_path / "agentd.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=config, env=env)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_api_key_is_never_echoed_in_an_error():
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"ANTHROPIC_API_KEY": "sk-secret", "AGENTD_CONCURRENCY": "-1"})
    assert "sk-secret" not in str(caught.value)
    settings = load_settings(env={"ANTHROPIC_API_KEY": "sk-secret"})
    assert "sk-secret" not in repr(settings)


def test_agentd_serve_exits_2_with_the_message(tmp_path):
    config = tmp_path / "agentd.toml"
    config.write_text("bogus = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "agentd: config: unknown key 'bogus'"
