"""A hostile tenant against a real ``agentd serve``: one daemon, many attack tasks, what came out.

Each :class:`Attack` is a bash script that the agent's bash tool runs in its workspace (the
scripted model's one tool call is ``bash attack.sh``; every attack repository carries its own
``attack.sh`` next to the buggy project of ``tests/agent_env.py``). The script arms the
workspace (``.git/config``, hooks, attributes, includes, submodules...) so that any git that
honours it *on the host* runs a program leaving a marker file in directories the sandbox cannot
see: the test's temp dir and the daemon's data dir. Then the model finishes and the daemon
delivers.

:class:`Campaign` builds the world (secrets in the daemon's environment and data dir, a victim
user's finished task, a smart-HTTP git server that wants the attacker's GitHub token, a decoy
remote on a second server), runs every attack as a task at once, follows them over the control
socket until they end, stops the daemon, and keeps everything a test needs to judge the outcome:
task rows, events, conversations, markers and the state of every remote. It asserts nothing.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import secrets as stdlib_secrets
import subprocess
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import trio
from cryptography.fernet import Fernet

from control.client import ControlClient
from daemon.git.process import TOKEN_USERNAME
from daemon.secrets import SecretBox
from daemon.store import open_store
from daemon.tokens import hash_token, new_token

from .agent_env import BUGGY_PROJECT, text, tool_use
from .daemon_process import DaemonProcess
from .fakes.git_http import GitHttpServer, make_bare_repo

# The model's whole part: run the repository's attack, then finish so that the daemon delivers.
SCRIPT = {
    "turns": [
        {"content": [text("Running the project's setup."), tool_use("t1", "bash", command="bash attack.sh")]},
        {"content": [text("Done: calc.add fixed.")]},
    ]
}
ARMED = "ATTACK-ARMED"  # the last line of every attack's output: it ran to the end
TASK_TIMEOUT_S = 240.0

# Runs first in every attack (``set -eu``: an attack that cannot arm itself says so).
_PRELUDE = r"""set -eu
W=$PWD
ATTACK=@NAME@
g() { git -c safe.directory='*' "$@"; }
cfg() { git config --file "$W/.git/config" "$@"; }
# mk KEY [pass]: print the path of a new program (in .git/, so never committed) that leaves the
# marker <dir>/<attack>.<KEY> in each marker dir, then exits 0, or with "pass" copies stdin to
# stdout (a filter that changes nothing). Those dirs exist only on the host: inside the sandbox
# the program writes into the sandbox's own /tmp, which nobody sees.
mk() {
  mkdir -p "$W/.git/x"
  f="$W/.git/x/$1"
  {
    echo '#!/bin/sh'
    for d in @MARKS@; do
      echo "mkdir -p '$d' 2>/dev/null && id > '$d/$ATTACK.$1' 2>/dev/null"
    done
    if [ "${2:-}" = pass ]; then echo 'exec cat'; else echo 'exit 0'; fi
  } > "$f"
  chmod 755 "$f"
  printf '%s' "$f"
}
fix() { sed -i 's/return a - b/return a + b/' calc.py; }
"""


@dataclass(frozen=True)
class Attack:
    """One task's attack. ``body`` is bash with placeholders ``@OWN_URL@`` (the task's remote),
    ``@DECOY_URL@``/``@DECOY_PATH@`` (another repository, over HTTP and as a host path),
    ``@DECOY_BASE@`` (that server's base URL), ``@DATA@`` (the daemon's data dir);
    ``creates``: globs of paths it may legitimately commit besides the project's (``{task}``
    stands for the task's id)."""

    name: str
    body: str
    creates: tuple[str, ...] = ()


@dataclass(frozen=True)
class Secrets:
    """What must never leave the daemon: the model API key and OAuth client secret in its
    environment, its Fernet keys (environment, and the key file in the data dir), the attacker's
    own GitHub token (used for the push, never shown), and a note only the victim wrote."""

    api_key: str
    client_secret: str
    env_key: str
    file_key: str
    github_token: str
    victim_note: str

    @classmethod
    def make(cls) -> Secrets:
        hex_ = stdlib_secrets.token_hex
        return cls(
            api_key=f"sk-ant-api03-{hex_(24)}",
            client_secret=f"ghcs_{hex_(20)}",
            env_key=Fernet.generate_key().decode(),
            file_key=Fernet.generate_key().decode(),
            github_token=f"gho_{hex_(18)}",
            victim_note=f"victim-private-{hex_(12)}",
        )

    def named(self) -> dict[str, str]:
        return dict(vars(self))


@dataclass
class Outcome:
    """One attack task as it ended: its row, every event, the conversation, its remote."""

    attack: Attack
    remote: Path
    url: str
    main: str  # its main branch's commit before the task
    task: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)

    def transcript(self) -> str:
        """The tool outputs as the events showed them, then the whole conversation (uncapped)."""
        outputs = [str(e["data"].get("output", "")) for e in self.events if e["event"] == "agent.tool_result"]
        return "\n".join(outputs) + "\n" + as_text(self.messages)


class Campaign:
    """Everything of one run; ``run()`` does it all (blocking), then read the fields."""

    def __init__(self, tmp: Path, attacks: list[Attack]) -> None:
        self.tmp = tmp
        self.attacks = attacks
        self.secrets = Secrets.make()
        self.data = tmp / "data"
        self.git_root = tmp / "git"  # served with the attacker's token
        self.decoy_root = tmp / "decoy-server"
        self.decoy_path = self.decoy_root / "decoy.git"
        self.marks = [tmp / "host-markers", self.data / "host-markers"]
        self.victim_remote = tmp / "local" / "victim.git"
        self.outcomes: dict[str, Outcome] = {}
        self.victim: dict[str, Any] = {}
        self.decoy_before: tuple[list[str], list[str]] = ([], [])
        self.decoy_requests: list[Any] = []
        self.daemon_exit: int | None = None
        self.daemon_log = ""
        self._api_tokens: dict[str, str] = {}

    # -- building the world ------------------------------------------------------------------

    def _config(self) -> Path:
        path = self.tmp / "agentd.toml"  # outside the data dir: the operator's, not a secret
        path.write_text(
            "\n".join(
                [
                    'sandbox = "required"',  # never a silent unsandboxed run
                    "concurrency = 4",
                    "max_attempts = 2",
                    "retry_base_s = 0.2",
                    "retry_cap_s = 0.5",
                    "rate_task_creates_burst = 200",
                    "tool_timeout_s = 90",
                    'github_web_host = "127.0.0.1"',  # the token-wanting git server is "GitHub" here
                ]
            )
            + "\n"
        )
        return path

    async def _seed(self) -> None:
        """Users and tokens, through the real store, before the daemon opens it."""
        store = await open_store(self.data)
        try:
            for login in ("mallory", "victim"):
                user = await store.upsert_user(login)
                token = new_token()
                await store.add_token(user.id, hash_token(token))
                self._api_tokens[login] = token
                if login == "mallory":
                    box = SecretBox([self.secrets.env_key, self.secrets.file_key])
                    await store.set_github_token(user.id, box.encrypt(self.secrets.github_token))
        finally:
            await store.aclose()

    def _script_for(self, attack: Attack, own_url: str, decoy_base: str) -> str:
        values = {
            "@NAME@": attack.name,
            "@MARKS@": " ".join(str(m) for m in self.marks),
            "@OWN_URL@": own_url,
            "@DECOY_URL@": f"{decoy_base}/decoy.git",
            "@DECOY_PATH@": str(self.decoy_path),
            "@DECOY_BASE@": decoy_base,
            "@DATA@": str(self.data),
        }
        script = _PRELUDE + attack.body + f"\necho {ARMED}\n"
        for key, value in values.items():
            script = script.replace(key, value)
        assert not re.search(r"@[A-Z_]+@", script), f"unknown placeholder in {attack.name}"
        return script

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> None:
        """Build everything, run every task to its end, stop the daemon (blocking)."""
        self._build()
        gitd = GitHttpServer(self.git_root, username=TOKEN_USERNAME, token=self.secrets.github_token)
        decoy = GitHttpServer(self.decoy_root)  # no auth: whatever reaches it is accepted
        with gitd as git_url, decoy as decoy_base:
            for attack in self.attacks:
                url = f"{git_url}/{attack.name}.git"
                script = self._script_for(attack, url, decoy_base)
                remote = make_bare_repo(
                    self.git_root,
                    f"{attack.name}.git",
                    branches={"main": {**BUGGY_PROJECT, "attack.sh": script}},
                )
                self.outcomes[attack.name] = Outcome(attack, remote, url, refs(remote)["refs/heads/main"])
            with self._daemon() as daemon:
                try:
                    trio.run(self._drive, daemon)
                finally:
                    self.daemon_exit = daemon.stop(timeout=120)
                    self.daemon_log = "".join(daemon.log)
            self.decoy_requests = list(decoy.requests)

    def _build(self) -> None:
        self.data.mkdir(parents=True)
        # The key file a daemon made before its keys moved to the environment: still the
        # rotation's old key, still in the data dir.
        key_file = self.data / "secret.key"
        key_file.write_text(self.secrets.file_key + "\n")
        key_file.chmod(0o600)
        trio.run(self._seed)
        make_bare_repo(
            self.decoy_root, "decoy.git", branches={"main": {"DECOY.md": "another user's repository\n"}}
        )
        # An attacker's own repository would take the shallow clone's commits: a push that
        # reaches it must change it, not be refused for an unrelated reason.
        _git(self.decoy_path, "config", "receive.shallowUpdate", "true")
        self.decoy_before = repo_state(self.decoy_path)
        victim_work = f"echo '{self.secrets.victim_note}' > victim-notes.txt\n"
        make_bare_repo(
            self.victim_remote.parent,
            self.victim_remote.name,
            branches={"main": {**BUGGY_PROJECT, "attack.sh": victim_work}},
        )

    def _daemon(self) -> DaemonProcess:
        daemon = DaemonProcess(
            self.data,
            script=SCRIPT,
            args=["--config", str(self._config())],
            extra_env={
                "AGENTD_SECRET_KEYS": f"{self.secrets.env_key},{self.secrets.file_key}",
                "AGENTD_GITHUB_CLIENT_ID": "Iv1.containment",
                "AGENTD_GITHUB_CLIENT_SECRET": self.secrets.client_secret,
            },
        )
        # Set after the constructor, which drops it to keep Claude's provider out: the
        # scripted model runs, and the key is in the daemon's environment all the same.
        daemon.env["ANTHROPIC_API_KEY"] = self.secrets.api_key
        return daemon

    async def _drive(self, daemon: DaemonProcess) -> None:
        """Submit and follow every task. A task still running after ``TASK_TIMEOUT_S`` is left
        as it is (its row says so) rather than failing the whole run."""
        async with (
            httpx2.AsyncClient(base_url=daemon.url, timeout=30) as http,
            await ControlClient.connect(daemon.socket) as control,
        ):
            # The victim's task first: its workspace, prompt and events are in the data dir
            # before any attack delivers.
            victim_id = await _submit(
                http,
                self._api_tokens["victim"],
                str(self.victim_remote),
                f"Write down {self.secrets.victim_note}",
            )
            await _follow(control, victim_id)
            self.victim = await _get(http, self._api_tokens["victim"], f"/api/tasks/{victim_id}")
            token = self._api_tokens["mallory"]
            ids = {
                name: await _submit(http, token, o.url, f"Fix calc.add ({name})")
                for name, o in self.outcomes.items()
            }

            async def follow(name: str, task_id: str) -> None:
                outcome = self.outcomes[name]
                outcome.events = await _follow(control, task_id)
                outcome.task = await _get(http, token, f"/api/tasks/{task_id}")
                outcome.messages = (await _get(http, token, f"/api/tasks/{task_id}/messages"))["messages"]

            async with trio.open_nursery() as nursery:
                for name, task_id in ids.items():
                    nursery.start_soon(follow, name, task_id)


async def _submit(http: httpx2.AsyncClient, token: str, repo_url: str, prompt: str) -> str:
    reply = await http.post(
        "/api/tasks",
        json={"repo_url": repo_url, "prompt": prompt},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


async def _get(http: httpx2.AsyncClient, token: str, path: str) -> Any:
    reply = await http.get(path, headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 200, reply.text
    return reply.json()


async def _follow(control: ControlClient, task_id: str) -> list[dict[str, Any]]:
    """The task's events until ``task.finished`` (the control socket's ``tail``), or those
    that came within ``TASK_TIMEOUT_S``."""
    events: list[dict[str, Any]] = []
    with trio.move_on_after(TASK_TIMEOUT_S):
        async with aclosing(control.stream("tasks.tail", id=task_id, after=0)) as stream:
            async for event in stream:
                events.append(event)
    return events


# -- reading what reached a remote (test-owned bare repositories: plain host git is safe) -----


def _git(repo: Path, *args: str) -> bytes:
    return subprocess.run(
        ["git", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(repo)},
    ).stdout


def refs(repo: Path) -> dict[str, str]:
    """ref name -> commit."""
    out = _git(repo, "for-each-ref", "--format=%(refname) %(objectname)").decode()
    return dict(line.split(" ", 1) for line in out.splitlines())


def repo_state(repo: Path) -> tuple[list[str], list[str]]:
    """(refs, every object id) of a repository: equal before and after means untouched."""
    objects = _git(repo, "cat-file", "--batch-all-objects", "--batch-check=%(objectname)")
    return sorted(f"{k} {v}" for k, v in refs(repo).items()), sorted(objects.decode().split())


def tree(repo: Path, ref: str) -> list[tuple[str, str]]:
    """(mode, path) of every entry of ``ref``'s tree, recursively (gitlinks included)."""
    out = _git(repo, "ls-tree", "-r", "-z", "--full-tree", ref).decode(errors="replace")
    entries = []
    for record in filter(None, out.split("\0")):
        meta, path = record.split("\t", 1)
        entries.append((meta.split()[0], path))
    return entries


def every_object(repo: Path) -> bytes:
    """The content of every object in ``repo`` (commits, trees, blobs; reachable or not)."""
    return _git(repo, "cat-file", "--batch-all-objects", "--batch")


def markers(dirs: list[Path], prefix: str = "") -> dict[str, str]:
    """Marker files found on the host (``<attack>.<key>`` -> what ``id`` said there)."""
    found = {}
    for directory in dirs:
        if directory.is_dir():
            for entry in directory.iterdir():
                if entry.name.startswith(prefix):
                    found[f"{directory}/{entry.name}"] = entry.read_text(errors="replace").strip()
    return found


def outside_paths(paths: list[str], allowed: list[str]) -> list[str]:
    """The paths matching none of the ``allowed`` globs."""
    return [p for p in paths if not any(fnmatch.fnmatchcase(p, glob) for glob in allowed)]


def found_secrets(blob: bytes | str, named: dict[str, str]) -> list[str]:
    """The names of the secrets that occur in ``blob``."""
    data = blob if isinstance(blob, bytes) else blob.encode()
    return [name for name, value in named.items() if value.encode() in data]


def as_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
