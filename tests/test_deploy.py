"""deploy/: the systemd unit, fly.toml and Dockerfile say what the daemon relies on."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from daemon.config import Settings, host_port, load_settings
from daemon.web.http_limits import FD_HEADROOM

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
GRACE_S = Settings().grace_period_s


def unit_file(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd's syntax: [Section], Key=Value, keys may repeat, # and ; start comments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    """'90s', '1min 30s', '60' -> seconds (the forms systemd and Fly accept that we use)."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def test_the_systemd_unit_is_a_hardened_notify_service():
    service = unit_file(DEPLOY / "agentd.service")["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["ExecStart"].startswith("/opt/agentd/.venv/bin/agentd serve")
    assert one["StateDirectory"] == "agentd" and one["RuntimeDirectory"] == "agentd"
    assert one["Restart"] == "on-failure" and one["KillSignal"] == "SIGTERM"
    assert seconds(one["WatchdogSec"]) >= 10  # pings every WatchdogSec/2 from the loop
    assert seconds(one["TimeoutStopSec"]) > GRACE_S + 10  # drain, cancel, close the store
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "LockPersonality": "yes",
    }.items():
        assert one[key] == value, key
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(one["RestrictAddressFamilies"].split())
    # bubblewrap needs user namespaces and a fresh /proc: these would break the sandbox.
    for breaks_bwrap in (
        "RestrictNamespaces",
        "PrivateUsers",
        "ProtectKernelTunables",
        "ProtectProc",
        "ProcSubset",
    ):
        assert breaks_bwrap not in service, breaks_bwrap
    assert "AF_NETLINK" in one["RestrictAddressFamilies"]  # bwrap sets up loopback over netlink


def test_the_systemd_unit_bounds_the_daemon_and_delegates_its_cgroup():
    service = unit_file(DEPLOY / "agentd.service")["Service"]
    one = {key: values[-1] for key, values in service.items()}
    # Room for every connection the cap allows, plus the daemon's own files.
    assert int(one["LimitNOFILE"]) >= Settings().http_max_connections + FD_HEADROOM
    assert int(one["TasksMax"]) >= 512  # a fork bomb meets this before the host's pid_max
    high, most = (int(one[key].removesuffix("%")) for key in ("MemoryHigh", "MemoryMax"))
    assert high < most < 100  # a share of the host's memory: the host itself stays alive
    assert one["Delegate"] == "yes"  # the sandbox's per-task cgroups live in this subtree
    assert one.get("ProtectControlGroups", "no") == "no"  # it would make the subtree read-only


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_finds_nothing_wrong_but_the_missing_install(tmp_path):
    result = subprocess.run(
        ["systemd-analyze", "verify", str(DEPLOY / "agentd.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # On a machine without agentd installed, the only complaint is the missing program.
    problems = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and "/opt/agentd/.venv/bin/agentd" not in line
    ]
    assert problems == []


def test_fly_keeps_the_data_on_a_volume_checks_health_and_lets_tasks_drain():
    fly = tomllib.loads((DEPLOY / "fly.toml").read_text())
    assert fly["kill_signal"] == "SIGTERM"
    assert seconds(str(fly["kill_timeout"])) > GRACE_S
    assert fly["mounts"]["destination"] == fly["env"]["AGENTD_DATA_DIR"] == "/data"
    service = fly["http_service"]
    assert fly["env"]["AGENTD_HTTP"].endswith(f":{service['internal_port']}")
    assert [check["path"] for check in service["checks"]] == ["/healthz"]
    assert service["auto_stop_machines"] in ("off", False)  # an idle stop would cancel tasks


def test_the_image_runs_agentd_unprivileged_with_git_and_bubblewrap():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim-bookworm\b", text, re.MULTILINE)
    install = re.search(r"apt-get install[^\n]*", text).group(0)
    assert "git" in install.split() and "bubblewrap" in install.split()
    assert 'CMD ["agentd", "serve", "--http", "0.0.0.0:8080"]' in text
    entrypoint = (DEPLOY / "docker-entrypoint.sh").read_text()
    assert "setpriv --reuid=agentd" in entrypoint  # root only long enough to chown the volume


def test_fly_serves_metrics_on_its_private_network_only():
    fly = tomllib.loads((DEPLOY / "fly.toml").read_text())
    settings = load_settings(env=fly["env"])  # what the daemon makes of the app's environment
    public = {fly["http_service"]["internal_port"]}
    public |= {service["internal_port"] for service in fly.get("services", [])}
    # /metrics leaves the public port for an address of its own...
    assert settings.metrics_http is not None
    host, port = host_port(settings.metrics_http)
    assert port not in public and settings.http_host_port[1] in public
    # ... which Fly's Prometheus scrapes over the private network (6PN: IPv6), and nothing publishes.
    assert fly["metrics"] == {"port": port, "path": "/metrics"}
    assert host == "::"
