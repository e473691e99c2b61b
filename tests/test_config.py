"""Settings: defaults < TOML file < environment < flags, and one clear line per mistake."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from daemon import __version__
from daemon.config import Settings, load_settings
from daemon.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


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
        ("concurency = 3\n", {}, "config: unknown setting 'concurency' in "),
        ("concurency = 3\n", {}, "; did you mean 'concurrency'?"),
        ("bogus = 1\n", {}, '(README: "Configuration" lists them)'),
        ("", {"AGENTD_CONCURRENCY": "lots"}, "config: concurrency: Input should be a valid integer"),
        ("concurrency = 0\n", {}, "config: concurrency: Input should be greater than or equal to 1 (got 0)"),
        ('http = "localhost"\n', {}, "config: http: expected HOST:PORT, got 'localhost'"),
        ('http = "8080"\n', {}, "config: http: expected HOST:PORT, got '8080'; did you mean 127.0.0.1:8080?"),
        ('http = ":8080"\n', {}, "did you mean 127.0.0.1:8080?"),
        ("", {"AGENTD_MODEL": "gpt"}, "config: model: Input should be 'anthropic' or 'scripted'"),
        (
            "gc_young_interval_s = 0.001\n",
            {},
            "config: gc_young_interval_s: must be 0 (off) or at least 0.01",
        ),
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
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"agentd: config: unknown setting 'bogus' in {config} (README: \"Configuration\" lists them)\n"
    )


def agentd(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTD_", "ANTHROPIC_"))}
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *argv],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.parametrize(
    ("argv", "advice"),
    [
        (
            (),
            (
                "no model configured: set ANTHROPIC_API_KEY, or run with --model scripted "
                "--script examples/hello.json"
            ),
        ),
        (("--model", "scripted"), "the scripted model needs a script: add --script examples/hello.json"),
    ],
)
def test_serve_without_a_model_says_what_to_do_in_one_line(tmp_path, argv, advice):
    result = agentd("serve", "--data-dir", str(tmp_path), *argv)
    assert result.returncode == 2
    assert result.stderr.startswith(f"agentd: {advice}") and result.stderr.count("\n") == 1
    assert not (tmp_path / "agentd.db").exists()  # nothing started


def test_the_advice_names_the_example_script_wherever_agentd_runs(tmp_path):
    result = agentd("serve", "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert f"--script {ROOT}/examples/hello.json" in result.stderr


def test_agentd_version():
    result = agentd("--version")
    assert (result.returncode, result.stdout) == (0, f"agentd {__version__}\n")


# ------------------------------------------------------------ examples/agentd.toml
SAMPLE = ROOT / "examples" / "agentd.toml"
_SAMPLE_LINE = re.compile(r"^# ([a-z_0-9]+) = (.+)$", re.M)


def test_the_sample_config_names_every_setting_once_and_only_settings():
    keys = [key for key, _ in _SAMPLE_LINE.findall(SAMPLE.read_text())]
    assert sorted(set(Settings.model_fields) - set(keys)) == [], "missing from examples/agentd.toml"
    assert sorted(set(keys) - set(Settings.model_fields)) == [], "not settings"
    assert len(keys) == len(set(keys)), "named twice"


def test_the_sample_config_uncommented_is_valid_and_shows_the_defaults(tmp_path):
    shown = dict(_SAMPLE_LINE.findall(SAMPLE.read_text()))
    uncommented = tmp_path / "agentd.toml"
    uncommented.write_text("".join(f"{key} = {value}\n" for key, value in shown.items()))
    settings = load_settings(config_file=uncommented, env={})
    defaults = Settings()
    # Where the default is "none" the file shows an example value; every other is the default.
    differ = [
        key
        for key, field in Settings.model_fields.items()
        if field.default not in (None, ()) and getattr(settings, key) != getattr(defaults, key)
    ]
    assert differ == [], f"examples/agentd.toml shows other values than the defaults of {differ}"
