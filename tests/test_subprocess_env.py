"""Every process the daemon starts gets an environment built for it, never the daemon's own:
the daemon's environment holds the model's API key and the secret keys."""

from __future__ import annotations

import sys
import threading

import pytest

from daemon.states import TaskStatus

from .agent_env import FIX_SCRIPT, agent_supervisor, bare_repo
from .helpers import wait_status

pytestmark = pytest.mark.slow

SECRETS = {
    "ANTHROPIC_API_KEY": "sk-ant-env-must-not-leak",
    "AGENTD_SECRET_KEYS": "fernet-key-must-not-leak",
    "AGENTD_GITHUB_CLIENT_SECRET": "client-secret-must-not-leak",
}
_started: dict[str, object] = {"on": False, "seen": [], "lock": threading.Lock()}


def _audit(event: str, args: tuple) -> None:
    if event == "subprocess.Popen" and _started["on"]:
        _executable, argv, _cwd, env = args
        with _started["lock"]:
            _started["seen"].append((list(argv), env))


async def test_no_process_of_a_whole_task_inherits_the_daemons_environment(store, hub, tmp_path, monkeypatch):
    if not _started.get("hooked"):
        sys.addaudithook(_audit)  # hooks cannot be removed: this one is idle outside the test
        _started["hooked"] = True
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    bare = bare_repo(tmp_path, None)
    _started.update(on=True, seen=[])
    try:
        async with agent_supervisor(store, hub, tmp_path, script=FIX_SCRIPT) as sup:
            alice = await store.upsert_user("alice")
            task, _ = await sup.submit(user_id=alice.id, repo_url=str(bare), prompt="Fix add()")
            await wait_status(hub, task.id, TaskStatus.SUCCEEDED, TaskStatus.FAILED)
    finally:
        _started["on"] = False
    assert (await store.get_task(task.id)).status is TaskStatus.SUCCEEDED
    seen = _started["seen"]
    programs = {argv[0].rsplit("/", 1)[-1] for argv, _ in seen}
    assert {"git", "bash"} <= programs, programs  # the clone, the fetch, the push; the sandbox
    for argv, env in seen:
        assert env is not None, f"{argv[:3]} inherits the daemon's environment"
        leaked = [name for name, value in SECRETS.items() if value in env.values()]
        assert not leaked and not any(
            k.startswith("AGENTD_") and k != "AGENTD_GIT_TOKEN" and k != "AGENTD_GIT_USERNAME" for k in env
        ), (argv[:3], env)
