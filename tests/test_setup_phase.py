"""The setup phase as a user meets it: real tasks (scripted model, local bare repo holding
``.agentd/setup.sh``) in the real bubblewrap sandbox, reaching a fake package registry only
through the task's egress proxy."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from daemon.agent.egress_proxy import ProxyPolicy
from daemon.agent.model import ModelRequest
from daemon.agent.scripted_provider import ScriptedProvider
from daemon.agent.setup_phase import SetupSettings
from daemon.agent.tools import ToolSettings
from daemon.agent.tools.sandbox import probe_sandbox
from daemon.states import TaskStatus

from .agent_env import agent_supervisor, bare_repo, text, tool_use
from .fakes.package_registry import VALUE, FakeRegistry
from .helpers import wait_status

pytestmark = pytest.mark.slow

REGISTRY = "registry.test"
INTRANET = "intranet.test"  # on the allowlist, but on a private address


@pytest.fixture
async def registry():
    if not (await probe_sandbox()).usable:
        pytest.skip("bubblewrap is not usable here")
    fake = FakeRegistry()
    with fake:
        yield fake


async def resolver(host: str, port: int) -> list[str]:
    return {REGISTRY: ["127.0.0.1"], INTRANET: ["10.9.8.7"]}[host]


def setup(registry: FakeRegistry, **overrides: Any) -> SetupSettings:
    policy = ProxyPolicy(
        allowed_hosts=(REGISTRY, INTRANET),
        allowed_ports=(registry.port,),
        private_hosts=(REGISTRY,),  # the fake listens on 127.0.0.1
    )
    return SetupSettings(**{"proxy": policy, "resolver": resolver, **overrides})


def install_script(port: int) -> str:
    index = f"http://{REGISTRY}:{port}/simple/"
    return f"""\
echo "setting up"
python3 -m pip install --quiet --disable-pip-version-check --no-cache-dir --target .deps \\
    --index-url {index} --trusted-host {REGISTRY} tinypkg
echo "pip exit $?"
for url in http://pypi.example.org/ http://{INTRANET}:{port}/ http://10.1.1.1:{port}/; do
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)' "$url" \\
        2>/dev/null && echo "reached $url" || echo "refused $url"
done
"""


def project(script: str) -> dict[str, str]:
    return {"README.md": "# app\n", ".gitignore": ".deps/\n", ".agentd/setup.sh": script}


class Recording(ScriptedProvider):
    """The scripted model, keeping the system prompt of every request."""

    def __init__(self, script: dict[str, Any]) -> None:
        super().__init__(script)
        self.systems: list[str] = []

    async def complete(self, request: ModelRequest, **kwargs: Any) -> Any:
        self.systems.append(str(request.system))
        return await super().complete(request, **kwargs)


async def run_task(store, hub, tmp_path, files: dict[str, str], turns: list[dict], settings: SetupSettings):
    provider = Recording({"turns": turns})
    async with agent_supervisor(store, hub, tmp_path, provider, setup=settings) as sup:
        alice = await store.upsert_user("alice")
        repo = str(bare_repo(tmp_path, files))
        task, _ = await sup.submit(user_id=alice.id, repo_url=repo, prompt="Use tinypkg")
        await wait_status(hub, task.id, TaskStatus.SUCCEEDED, TaskStatus.FAILED)
    events = await store.read_events(task.id)
    return await store.get_task(task.id), events, provider


def results(events) -> dict[str, str]:
    return {e.data["id"]: e.data["output"] for e in events if e.type == "agent.tool_result"}


def of(events, kind: str) -> list[dict]:
    return [e.data for e in events if e.type == kind]


IMPORT = "PYTHONPATH=.deps python3 -c 'import tinypkg; print(tinypkg.VALUE)'"
# The agent's own turn: no proxy socket, no proxy variables, no network.
OFFLINE = (
    'echo "proxy=${HTTPS_PROXY:-none}"; ls /run/agentd-proxy.sock 2>&1 | head -1; '
    "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 3128), timeout=5)' 2>&1 | tail -1"
)


async def test_setup_installs_from_the_registry_through_the_proxy_and_the_agent_imports_it(
    store, hub, tmp_path, registry
):
    turns = [
        {"content": [tool_use("t1", "bash", command=IMPORT)]},
        {"content": [tool_use("t2", "bash", command=OFFLINE)]},
        {"content": [text("tinypkg is there.")]},
    ]
    files = project(install_script(registry.port))
    task, events, provider = await run_task(store, hub, tmp_path, files, turns, setup(registry))
    assert task.status is TaskStatus.SUCCEEDED, task.error
    kinds = [e.type for e in events]
    assert kinds.index("workspace.ready") < kinds.index("setup.started") < kinds.index("setup.finished")
    assert kinds.index("setup.finished") < kinds.index("agent.tool_call")
    (started,) = of(events, "setup.started")
    assert started["steps"] == [".agentd/setup.sh"]
    output = "".join(d["text"] for d in of(events, "setup.output"))
    assert "setting up" in output and "pip exit 0" in output
    assert f"refused http://{INTRANET}" in output and "refused http://10.1.1.1" in output
    assert "reached" not in output
    (finished,) = of(events, "setup.finished")
    assert finished["exit_code"] == 0 and not finished["timed_out"] and finished["duration_s"] > 0
    refused = {(r["host"], r["reason"]) for r in finished["refused"]}
    assert refused == {
        ("pypi.example.org", "not_allowed"),
        (INTRANET, "private_address"),
        ("10.1.1.1", "ip_literal"),
    }
    assert finished["proxy_bytes"] > len(registry.wheel)
    paths = [seen.path.split("#")[0] for seen in registry.requests]
    assert "/simple/tinypkg/" in paths and "/files/tinypkg-1.0-py3-none-any.whl" in paths
    # The agent's later command imports it; its own turn cannot reach the proxy.
    outputs = results(events)
    assert VALUE in outputs["t1"]
    assert "proxy=none" in outputs["t2"] and "No such file" in outputs["t2"]
    assert "ConnectionRefusedError" in outputs["t2"]  # nothing listens: no bridge, no network
    # A setup that worked changes nothing the model sees; what it installed is ignored by git
    # (.gitignore), so the task has nothing to push.
    assert "[agentd]" not in provider.systems[0]
    assert "git.pushed" not in kinds


async def test_a_hanging_setup_is_killed_at_its_time_limit_and_the_model_is_told(
    store, hub, tmp_path, registry
):
    script = "echo 'fetching the world'\nexec sleep 600\n"
    turns = [{"content": [tool_use("t1", "bash", command="echo still here")]}, {"content": [text("ok")]}]
    settings = setup(registry, timeout_s=1.0)
    start = trio.current_time()
    task, events, provider = await run_task(store, hub, tmp_path, project(script), turns, settings)
    assert trio.current_time() - start < 30
    assert task.status is TaskStatus.SUCCEEDED, task.error
    (finished,) = of(events, "setup.finished")
    assert finished["timed_out"] and finished["exit_code"] is None
    assert 1.0 <= finished["duration_s"] < 10
    assert "fetching the world" in "".join(d["text"] for d in of(events, "setup.output"))
    note = provider.systems[0]
    assert "was stopped at its time limit (1 s, setup_timeout_s)" in note
    assert "fetching the world" in note and "no network access at all" in note
    assert "still here" in results(events)["t1"]


async def test_a_failing_setup_is_told_to_the_model_and_the_task_goes_on(store, hub, tmp_path, registry):
    # What it leaves running in the background dies with its sandbox: the phase ends at once.
    script = "sleep 600 &\necho 'cannot build wheels' >&2\nexit 3\n"
    turns = [{"content": [text("I will fix the setup.")]}]
    task, events, provider = await run_task(store, hub, tmp_path, project(script), turns, setup(registry))
    assert task.status is TaskStatus.SUCCEEDED, task.error
    (finished,) = of(events, "setup.finished")
    assert finished["exit_code"] == 3 and not finished["timed_out"] and finished["duration_s"] < 30
    assert "failed with exit code 3" in provider.systems[0]
    assert "cannot build wheels" in provider.systems[0]


async def test_the_operator_can_let_the_agents_own_commands_through_the_proxy(store, hub, tmp_path, registry):
    fetch = (
        "python3 -c 'import urllib.request as u; "
        f'print(u.urlopen("http://{REGISTRY}:{registry.port}/simple/", timeout=10).read().decode())\''
    )
    turns = [{"content": [tool_use("t1", "bash", command=fetch)]}, {"content": [text("done")]}]
    files = {"README.md": "# no setup here\n"}
    settings = setup(registry, agent_network="proxy", command="echo operator-setup")
    task, events, _ = await run_task(store, hub, tmp_path, files, turns, settings)
    assert task.status is TaskStatus.SUCCEEDED, task.error
    (started,) = of(events, "setup.started")
    assert started["steps"] == ["setup_command"]
    assert "operator-setup" in "".join(d["text"] for d in of(events, "setup.output"))
    assert "tinypkg" in results(events)["t1"]


async def test_without_the_sandbox_the_setup_is_not_run_and_the_model_is_told(store, hub, tmp_path, registry):
    script = "touch ran-unconfined\n"
    turns = [
        {"content": [tool_use("t1", "bash", command="ls ran-unconfined 2>&1")]},
        {"content": [text("ok")]},
    ]
    settings = setup(registry)
    provider = Recording({"turns": turns})
    tools = ToolSettings(command_timeout_s=30, sandbox="off")
    async with agent_supervisor(store, hub, tmp_path, provider, setup=settings, tools=tools) as sup:
        alice = await store.upsert_user("alice")
        repo = str(bare_repo(tmp_path, project(script)))
        task, _ = await sup.submit(user_id=alice.id, repo_url=repo, prompt="Use tinypkg")
        await wait_status(hub, task.id, TaskStatus.SUCCEEDED, TaskStatus.FAILED)
    events = await store.read_events(task.id)
    assert [e.type for e in events if e.type.startswith("setup.")] == ["setup.finished"]
    (finished,) = of(events, "setup.finished")
    assert finished["skipped"] == "no sandbox" and finished["exit_code"] is None
    assert "was not run: it runs only inside the bubblewrap sandbox" in provider.systems[0]
    assert "No such file" in results(events)["t1"]
