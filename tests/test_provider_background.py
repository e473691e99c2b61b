"""The Claude provider is built in the background once the daemon serves, and a task run by the
daemon with it (the real SDK against the fake Messages API) waits for it if it must."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from daemon import service
from daemon.agent.factory import BuiltInBackground, build_provider
from daemon.agent.model import ModelReply, ModelRequest, Usage
from daemon.config import Settings
from daemon.errors import ConfigError, PermanentError
from daemon.service import Daemon
from daemon.thirdparty.anthropic_sdk import reexports

from .daemon_process import DaemonProcess, short_socket_dir
from .fakes.anthropic_api import FakeAnthropicAPI, message, text
from .fakes.git_http import make_bare_repo

ROOT = Path(__file__).resolve().parents[1]
REQUEST = ModelRequest(system="s", tools=[], messages=[{"role": "user", "content": "hi"}], max_tokens=10)


class Echo:
    name = "echo"

    async def complete(self, request, on_text_delta=None):
        return ModelReply(
            content=[{"type": "text", "text": "ok"}], stop_reason="end_turn", usage=Usage(), model="m"
        )


async def test_callers_that_come_first_wait_for_one_build_off_the_event_loop():
    may_finish = threading.Event()
    builds: list[int] = []

    def build():
        builds.append(threading.get_ident())
        may_finish.wait(10)
        return Echo()

    provider = BuiltInBackground("echo", build)
    replies = []

    async def call() -> None:
        replies.append(await provider.complete(REQUEST))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(provider.warm_up)
        for _ in range(3):
            nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        assert replies == []  # they wait for the build
        may_finish.set()
    assert len(builds) == 1 and builds[0] != threading.get_ident()
    assert [r.content for r in replies] == [[{"type": "text", "text": "ok"}]] * 3


async def test_a_failed_build_is_the_callers_permanent_error_and_the_next_call_tries_again():
    attempts = []

    def build():
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("no SDK today")
        return Echo()

    provider = BuiltInBackground("echo", build)
    with pytest.raises(PermanentError, match="model echo: could not be loaded: RuntimeError: no SDK today"):
        await provider.complete(REQUEST)
    assert (await provider.complete(REQUEST)).stop_reason == "end_turn"
    assert len(attempts) == 2


async def test_a_caller_cancelled_while_it_waits_leaves_the_provider_to_the_next():
    may_finish = threading.Event()
    provider = BuiltInBackground("echo", lambda: may_finish.wait(10) and Echo())
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as waited:

            async def cancel_once_waiting() -> None:
                await trio.testing.wait_all_tasks_blocked()  # the caller waits for the build
                waited.cancel()

            nursery.start_soon(cancel_once_waiting)
            await provider.complete(REQUEST)
    assert waited.cancelled_caught
    may_finish.set()
    assert (await provider.complete(REQUEST)).stop_reason == "end_turn"


def test_the_daemon_builds_claude_in_the_background(tmp_path):
    settings = Settings(data_dir=tmp_path, model="anthropic", anthropic_api_key="sk-ant-test")
    assert isinstance(build_provider(settings), BuiltInBackground)


def test_nothing_before_serving_imports_the_sdk(tmp_path):
    # A fresh interpreter does what `agentd serve` does before it serves: its imports, then
    # the runner with Claude configured.
    code = (
        "import sys; import daemon.cli, daemon.service\n"
        "from daemon.agent.factory import build_runner\n"
        "from daemon.config import Settings\n"
        f"build_runner(Settings(data_dir={str(tmp_path)!r}, model='anthropic', anthropic_api_key='k'))\n"
        "print(sorted(m for m in sys.modules if m == 'anthropic' or m.startswith('anthropic.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "url, says",
    [
        ("http://[::1", "anthropic_base_url: Invalid port"),
        ("ftp://api.example", "anthropic_base_url: needs http:// or https://"),
        ("api.example:443", "anthropic_base_url: needs http:// or https://"),
    ],
)
def test_a_bad_base_url_stops_the_daemon_before_it_serves(tmp_path, url, says):
    settings = Settings(data_dir=tmp_path, model="anthropic", anthropic_api_key="k", anthropic_base_url=url)
    with pytest.raises(ConfigError, match=says):
        build_provider(settings)


@pytest.mark.parametrize("variable, what", [("SSL_CERT_FILE", "file"), ("SSL_CERT_DIR", "directory")])
def test_a_missing_ca_file_stops_the_daemon_before_it_serves(tmp_path, monkeypatch, variable, what):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv(variable, str(tmp_path / "nowhere"))
    says = f"config: TLS for the model's API: {variable}: no such {what}: {tmp_path / 'nowhere'}"
    with pytest.raises(ConfigError, match=re.escape(says)):
        build_provider(Settings(data_dir=tmp_path, model="anthropic", anthropic_api_key="k"))


async def test_the_collector_is_tuned_again_once_loaded_unless_a_task_runs():
    class Stub:
        def __init__(self, running: int) -> None:
            self.model_loaded = trio.Event()
            self.supervisor = SimpleNamespace(stats=lambda: {"running": running})

    for running, tuned in ((0, True), (1, False)):
        daemon, calls = Stub(running), []
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(service, "tune_gc_for_serving", lambda: calls.append(1))  # noqa: B023
            async with trio.open_nursery() as nursery:
                nursery.start_soon(service.tune_gc_once_loaded, daemon)
                await trio.testing.wait_all_tasks_blocked()
                assert calls == []
                daemon.model_loaded.set()
        assert calls == ([1] if tuned else [])


async def test_a_task_runs_on_claude_through_the_daemon(tmp_path):
    api = FakeAnthropicAPI(api_key="sk-ant-test")
    api.push(message(text("Nothing needs changing.")))
    bare = make_bare_repo(tmp_path)
    async with trio.open_nursery() as servers:
        url = await servers.start(api.serve)
        settings = Settings(
            data_dir=tmp_path / "data",
            http="127.0.0.1:0",
            control_socket=short_socket_dir() / "agentd.sock",
            model="anthropic",
            anthropic_api_key="sk-ant-test",
            anthropic_base_url=url,
            allow_local_remotes=True,
            min_free_disk_mb=0,
            max_attempts=1,
            pin_loop_cpu=False,
        )
        daemon = Daemon(settings)
        finished = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.serve)
            daemon.hub.add_global_listener(
                lambda events: any(e.type == "task.finished" for e in events) and finished.set()
            )
            user = await daemon.store.upsert_user("alice")
            task, _ = await daemon.supervisor.submit(
                user_id=user.id, repo_url=str(bare), prompt="look around"
            )
            with trio.fail_after(30):
                await finished.wait()
            done = await daemon.store.get_task(task.id)
            assert done.status.value == "succeeded", done
            assert len(api.requests) == 1 and api.requests[0].path == "/v1/messages"
            assert daemon.supervisor.runner.provider._provider is not None  # built, once
            daemon.request_stop()
        servers.cancel_scope.cancel()


@pytest.mark.slow
def test_agentd_serve_with_claude_loads_the_provider_once_it_serves(tmp_path):
    daemon = DaemonProcess(
        tmp_path / "data", anthropic_key="sk-ant-test", extra_env={"ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}
    ).start()
    try:
        assert daemon.wait_for_log("model provider anthropic loaded")  # in a second or two
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    lines = "".join(daemon.log)
    assert lines.index("agentd serving on") < lines.index("model provider anthropic loaded")


LEAN_RUN = """
import json, sys
import trio
from daemon.agent.factory import build_provider
from daemon.agent.model import ModelRequest
from daemon.config import Settings
from daemon.errors import PermanentError
from tests.fakes.anthropic_api import FakeAnthropicAPI, bad_request, message, text, tool_use

REQUEST = ModelRequest(system="s", tools=[], messages=[{"role": "user", "content": "hi"}], max_tokens=10)

async def main():
    api = FakeAnthropicAPI(api_key="sk-ant-test")
    api.push(message(text("Looking."), tool_use("t1", "bash", {"command": "ls"})), bad_request())
    async with trio.open_nursery() as servers:
        url = await servers.start(api.serve)
        settings = Settings(model="anthropic", anthropic_api_key="sk-ant-test", anthropic_base_url=url)
        provider = build_provider(settings)
        reply = await provider.complete(REQUEST)
        try:
            await provider.complete(REQUEST)
            refused = None
        except PermanentError as exc:
            refused = str(exc)
        servers.cancel_scope.cancel()
    import anthropic
    modules = [m for m in sys.modules if m == "anthropic" or m.startswith("anthropic.")]
    print(json.dumps({
        "content": reply.content, "stop_reason": reply.stop_reason, "refused": refused,
        "modules": len(modules), "loader": type(anthropic.__spec__.loader).__name__,
        "same_class": anthropic.APIStatusError is sys.modules["anthropic._exceptions"].APIStatusError,
    }))

trio.run(main)
"""


def test_the_daemon_imports_only_the_sdk_modules_its_calls_use(tmp_path):
    # A fresh interpreter, as `agentd serve`: the provider is built the daemon's way, then used.
    done = subprocess.run(
        [sys.executable, "-c", LEAN_RUN], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["content"] == [
        {"type": "text", "text": "Looking."},
        {"type": "tool_use", "id": "t1", "name": "bash", "input": {"command": "ls"}},
    ]
    assert result["stop_reason"] == "tool_use"
    assert result["refused"].startswith("anthropic: 400 invalid_request_error")
    assert result["loader"] == "_LeanLoader" and result["same_class"]
    # The whole SDK is about 3,300 modules; its client and what the calls use, about 1,100.
    assert result["modules"] < 1600, result["modules"]


def test_a_lean_package_resolves_its_names_on_use_and_runs_its_init_for_any_other():
    code = (
        "import sys\n"
        "from daemon.thirdparty.anthropic_sdk import import_lean\n"
        "assert import_lean() and not import_lean()  # once: later calls find it imported\n"
        "import anthropic\n"
        "before = len(sys.modules)\n"
        "assert anthropic.types.Message.__name__ == 'Message'\n"
        "assert anthropic.types.beta.BetaMessage.__name__ == 'BetaMessage'\n"
        "assert 'anthropic.lib.vertex' not in sys.modules\n"
        "print(anthropic.AnthropicVertex.__module__)  # a star import's name: the real __init__ runs\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "anthropic.lib.vertex._client"


def test_the_sdk_packages_made_lean_only_reexport_their_submodules_names():
    """The contract ``import_lean`` relies on (anthropic 2.17.0): the ``__init__`` of every
    package under ``anthropic.types`` holds only imports from its submodules and ``__all__``; the
    top package's other statements are the ones the glue does itself (logging) or leaves out."""
    spec = importlib.util.find_spec("anthropic")
    assert spec is not None and spec.submodule_search_locations
    top = Path(spec.submodule_search_locations[0])
    inits = sorted((top / "types").rglob("__init__.py"))
    assert len(inits) > 10
    for init in inits:
        for node in ast.parse(init.read_text()).body:
            assert isinstance(node, ast.ImportFrom) and (node.level == 1 or node.module == "__future__"), (
                f"{init}: {ast.unparse(node)[:80]}"
            )
    others = [
        ast.unparse(node).splitlines()[0]
        for node in ast.parse((top / "__init__.py").read_text()).body
        if not isinstance(node, (ast.Import, ast.ImportFrom, ast.If))
        and not (isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "__all__")
    ]
    assert others == ["_setup_logging()", "__locals = locals()", "for __name in __all__:"]
    assert reexports((top / "types" / "__init__.py").read_text())["Message"] == ("message", "Message")
    assert reexports((top / "__init__.py").read_text())["types"] == ("types", None)
