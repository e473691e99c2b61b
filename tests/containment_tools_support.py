"""The world of tests/test_containment_tools.py: a hostile agent against the tools of two real
``agentd serve`` processes, run at once (scripted model, bubblewrap required).

- The *editor* daemon (grace period ``GRACE_S``) runs
  - ``race``: the agent's sandbox keeps exchanging (atomic ``renameat2``) two directories of its
    workspace with symbolic links to the daemon's data dir (``secret.key``) and to a directory
    of the test's holding a secret, and a file with a link to that secret, while the model makes
    ``OPS_PER_KIND`` editor calls of each kind (view, create, str_replace, insert),
    ``CALLS_PER_TURN`` per turn, through them. The sandbox cannot see those directories; the
    editor runs on the host, so a link's target string is the attack;
  - ``special_cancel``: a FIFO, a FIFO held open by a process that never writes, a unix socket
    and a character device if ``mknod`` works in the sandbox, under every editor command; then a
    ``sleep 600`` that the task is cancelled out of over HTTP;
  - ``special_term``, alone at the end: the same, and the daemon gets SIGTERM during the sleep.
- The *limits* daemon (``LIMITS``: few processes, a small ``/tmp`` and workspace quota) runs a
  fork bomb, a ``/tmp`` filler and a workspace filler at once while ``/healthz`` is polled,
  then a plain fix.

One script per daemon serves all its tasks: each repository carries the shell scripts that the
scripted turns run (``bash attack.sh``, ``bash block.sh``...). :class:`ToolAttacks` builds the
world, runs it and keeps what came out (task rows, events, conversations, timings, the state of
the directories outside); it asserts nothing.
"""

from __future__ import annotations

import os
import random
import secrets as stdlib_secrets
import signal
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import trio
from cryptography.fernet import Fernet

from control.client import ControlClient
from daemon.agent.tools.identity import count_tasks
from daemon.store import open_store
from daemon.tokens import hash_token, new_token

from .agent_env import BUGGY_PROJECT, text, tool_use
from .containment_support import ARMED, _get, _submit, as_text
from .daemon_process import DaemonProcess
from .fakes.git_http import make_bare_repo

EDIT = "str_replace_based_edit_tool"
OPS_PER_KIND = 300
CALLS_PER_TURN = 100
GRACE_S = 2.0
CANCEL_WITHIN_S = 5.0
RUN_TIMEOUT_S = 300.0  # how long one task is followed; the whole run takes far less
LIMITS = ["sandbox_max_processes = 64", "sandbox_tmp_mb = 8", "workspace_quota_mb = 10"]

# -- the editor daemon's model: the same turns for every task, each repository its own scripts --

VIEW_PATHS = ("rd/secret.key", "ro/secret.txt", "rf.txt", "rd", "ro")
WRITE_PATHS = ("rd/plant.txt", "ro/plant.txt", "rf.txt")
SPECIAL = ("fifo", "held", "sock", "chardev")


def _race_calls() -> list[dict[str, Any]]:
    """``OPS_PER_KIND`` calls of each kind, interleaved (never the same call twice in a row)."""
    calls = []
    for i in range(OPS_PER_KIND):
        w = WRITE_PATHS[i % len(WRITE_PATHS)]
        calls += [
            tool_use(f"view-{i}", EDIT, command="view", path=VIEW_PATHS[i % len(VIEW_PATHS)]),
            tool_use(
                f"create-{i}",
                EDIT,
                command="create",
                path=f"{('rd', 'ro')[i % 2]}/new-{i}.txt",
                file_text=f"created {i}\n",
            ),
            tool_use(
                f"str_replace-{i}", EDIT, command="str_replace", path=w, old_str="alpha", new_str="alpha"
            ),
            tool_use(f"insert-{i}", EDIT, command="insert", path=w, insert_line=0, insert_text="x\n"),
        ]
    return calls


def _special_calls() -> list[dict[str, Any]]:
    calls = []
    for name in SPECIAL:
        calls += [
            tool_use(f"sp-view-{name}", EDIT, command="view", path=name),
            tool_use(
                f"sp-str_replace-{name}", EDIT, command="str_replace", path=name, old_str="a", new_str="b"
            ),
            tool_use(
                f"sp-insert-{name}", EDIT, command="insert", path=name, insert_line=0, insert_text="x\n"
            ),
            tool_use(f"sp-create-{name}", EDIT, command="create", path=name, file_text="x\n"),
        ]
    return calls


RACE = _race_calls()
PER_KIND_PER_TURN = CALLS_PER_TURN // 4
# Each race turn starts a fresh bash session (restart) and in it a fresh swapper: a session
# lives a few seconds only, well within what the daemon keeps one alive (see ARM_SH).
EDITOR_SCRIPT = {
    "turns": [
        {"content": [text("Setting up."), tool_use("attack", "bash", command="bash attack.sh")]},
        {"content": _special_calls()},
        {"content": [tool_use("block", "bash", command="bash block.sh")]},
        *(
            {
                "content": [
                    tool_use(f"arm-{i // CALLS_PER_TURN}", "bash", command="bash arm.sh", restart=True),
                    *RACE[i : i + CALLS_PER_TURN],
                ]
            }
            for i in range(0, len(RACE), CALLS_PER_TURN)
        ),
        {"content": [tool_use("finish", "bash", command="bash finish.sh", restart=True)]},
        {"content": [text("Done: calc.add fixed.")]},
    ]
}
LIMITS_SCRIPT = {
    "turns": [
        {
            "content": [
                text("Running the project's setup."),
                tool_use("attack", "bash", command="bash attack.sh"),
            ]
        },
        {"content": [text("Done: calc.add fixed.")]},
    ]
}

# The swapper: atomic exchanges, so each name always exists, as a directory or as a link.
SWAP_PY = """import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
pairs = [(b"rd", b".rd-alt"), (b"ro", b".ro-alt"), (b"rf.txt", b".rf-alt")]
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    for a, b in pairs:
        if libc.renameat2(-100, a, -100, b, 2) != 0:  # AT_FDCWD, RENAME_EXCHANGE
            sys.exit("renameat2: " + os.strerror(ctypes.get_errno()))
"""
RACE_SH = f"""set -eu
for d in rd ro; do
  mkdir $d; echo 'inside decoy' > $d/secret.key; echo 'inside decoy' > $d/secret.txt
  echo alpha > $d/plant.txt
done
echo alpha > rf.txt
ln -s '@DATA@' .rd-alt; ln -s '@OUTSIDE@' .ro-alt; ln -s '@OUTSIDE@/secret.txt' .rf-alt
echo {ARMED}
"""
# A swapper lives as long as the bash session that started it (the sandbox's pid namespace), so
# each turn starts one in a new session. Why not one for the whole task: the daemon kills a
# session whose starting thread retired, ~10 s on (test_a_bash_session_outlives_the_worker_...).
# An edit that renamed its file over rf.txt while rf.txt was the link replaced the link (inside
# the workspace, as it should): make the link again.
ARM_SH = """[ -L rf.txt ] || [ -L .rf-alt ] || ln -sf '@OUTSIDE@/secret.txt' .rf-alt
python3 swap.py 60 > /dev/null 2>&1 &
echo SWAPPER started
"""
FINISH_SH = """rm -rf rd ro rf.txt .rd-alt .ro-alt .rf-alt fifo held sock chardev
sed -i 's/return a - b/return a + b/' calc.py
echo FINISHED
"""
RACE_FILES = {
    "attack.sh": RACE_SH,
    "swap.py": SWAP_PY,
    "arm.sh": ARM_SH,
    "finish.sh": FINISH_SH,
    "block.sh": "echo not blocking\n",
}
SPECIAL_SH = f"""set -u
mkfifo fifo held
# Holds "held" open, writing nothing: a read of it would wait forever.
sleep 300 3<>held >/dev/null 2>&1 &
python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind("sock")'
if mknod chardev c 1 3 2>/dev/null; then echo MKNOD-OK; else echo MKNOD-REFUSED; fi
ls -l fifo held sock
echo {ARMED}
"""
BLOCK_SH = "echo $$ > .blocking\nexec sleep 600\n"
FIX = "sed -i 's/return a - b/return a + b/' calc.py\n"
LIMIT_ATTACKS = {
    # In the background: inline, the script's own fork for the pipeline can lose to the bomb
    # and wait (bash retries for seconds); see test_a_bash_session_outlives_... for why that
    # once made such a task succeed.
    "fork_bomb": f"( :(){{ :|:& }};: ) &\necho {ARMED}\n",
    "tmp_filler": f'head -c 2G /dev/zero > /tmp/f; echo "head: $?"; df -k /tmp; echo {ARMED}\n',
    "workspace_filler": (
        f"for i in 1 2 3 4 5; do head -c 4M /dev/zero > fill$i; done; du -sk .; echo {ARMED}\n"
    ),
}
CODES = {
    "fork_bomb": ("pids_limit", "sandbox_max_processes"),
    "tmp_filler": ("tmp_full", "sandbox_tmp_mb"),
    "workspace_filler": ("quota_exceeded", "workspace_quota_mb"),
}


@dataclass
class Ran:
    """One task as it ended (or as it was when the run stopped following it)."""

    task: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    remote: Path | None = None
    finished_at: float | None = None  # when task.finished arrived (trio.current_time)
    cancel_s: float | None = None  # HTTP cancel -> task.finished

    def results(self) -> dict[str, dict[str, Any]]:
        """tool_use id -> its agent.tool_result event's data, plus ``took_s``: from the call's
        event to the result's (the daemon's clock)."""
        calls = {e["data"]["id"]: e["ts"] for e in self.events if e["event"] == "agent.tool_call"}
        return {
            e["data"]["id"]: {**e["data"], "took_s": e["ts"] - calls.get(e["data"]["id"], e["ts"])}
            for e in self.events
            if e["event"] == "agent.tool_result"
        }

    def transcript(self) -> str:
        return as_text(self.events) + as_text(self.messages) + as_text(self.task)


def snapshot(top: Path) -> dict[str, tuple]:
    """Every entry under ``top`` (itself included): type, mode, owner, size, mtime, inode, content."""
    found = {}
    for path in [top, *sorted(top.rglob("*"))]:
        st = path.lstat()
        body = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        found[str(path.relative_to(top))] = (
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_size,
            st.st_mtime_ns,
            st.st_ino,
            body,
        )
    return found


class ToolAttacks:
    """The world (data dirs, secrets, repositories), both daemons and everything that came out."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.token = new_token()
        hex_ = stdlib_secrets.token_hex
        self.outside = tmp / "outside"
        self.api_key = f"sk-ant-api03-{hex_(24)}"
        self.secret_key = Fernet.generate_key().decode()
        self.outside_secret = f"outside-secret-{hex_(12)}"
        # Names only a listing of those directories could show.
        self.outside_name = f"outside-only-{hex_(6)}.txt"
        self.data_name = f"data-only-{hex_(6)}.txt"
        self.uid_base = 1_200_000 + random.randrange(700) * 1000  # clear of other runs here
        self.editor: dict[str, Ran] = {}
        self.limits: dict[str, Ran] = {}
        self.healthz: list[tuple[int | str, float]] = []  # during the limit attacks
        self.healthz_after: int | str = ""
        self.before: dict[str, Any] = {}
        self.after: dict[str, Any] = {}
        self.term_s: float | None = None
        self.exits: dict[str, int | None] = {}
        self.logs: dict[str, str] = {}
        self.term_task: dict[str, Any] = {}
        self.leftover: dict[str, int] = {}

    def secrets(self) -> dict[str, str]:
        return {
            "secret.key": self.secret_key,
            "outside secret": self.outside_secret,
            "API key": self.api_key,
            "outside listing": self.outside_name,
            "data dir listing": self.data_name,
        }

    def _data(self, name: str) -> Path:
        return self.tmp / name / "data"

    def _prepare(self, name: str, lines: list[str]) -> DaemonProcess:
        data = self._data(name)
        data.mkdir(parents=True)
        (data / "secret.key").write_text(self.secret_key + "\n")
        (data / "secret.key").chmod(0o600)
        (data / "plant.txt").write_text("alpha\n")
        (data / self.data_name).write_text("data dir\n")

        async def seed() -> None:
            store = await open_store(data)
            try:
                user = await store.upsert_user("mallory")
                await store.add_token(user.id, hash_token(self.token))
            finally:
                await store.aclose()

        trio.run(seed)
        config = self.tmp / name / "agentd.toml"
        config.write_text(
            "\n".join(
                [
                    'sandbox = "required"',
                    "concurrency = 6",
                    "rate_task_creates_burst = 100",
                    "max_attempts = 1",
                    f"grace_period_s = {GRACE_S}",
                    f"sandbox_uid_base = {self._base(name)}",
                    "sandbox_uid_count = 32",
                    "budget_max_usd = 1000",
                    "budget_cap_usd = 1000",
                    "budget_max_tokens = 20000000",
                    *lines,
                ]
            )
            + "\n"
        )
        script = EDITOR_SCRIPT if name == "editor" else LIMITS_SCRIPT
        daemon = DaemonProcess(data, script=script, args=["--config", str(config)])
        daemon.env["ANTHROPIC_API_KEY"] = self.api_key  # in its environment, unused (scripted)
        return daemon

    def _base(self, name: str) -> int:
        return self.uid_base + (0 if name == "editor" else 100)

    def _repo(self, name: str, files: dict[str, str]) -> Path:
        values = {"@DATA@": str(self._data("editor")), "@OUTSIDE@": str(self.outside)}
        for key, value in values.items():
            files = {path: body.replace(key, value) for path, body in files.items()}
        return make_bare_repo(
            self.tmp / "remotes", f"{name}.git", branches={"main": {**BUGGY_PROJECT, **files}}
        )

    def run(self) -> None:
        """Build everything, run both daemons' tasks, stop the daemons (blocking)."""
        self.outside.mkdir()
        (self.outside / "secret.txt").write_text(self.outside_secret + "\n")
        (self.outside / "plant.txt").write_text("alpha\n")
        (self.outside / self.outside_name).write_text("outside\n")
        editor, limits = self._prepare("editor", []), self._prepare("limits", LIMITS)
        race_repo = self._repo("race", RACE_FILES)
        special_repos = {
            n: self._repo(n, {"attack.sh": SPECIAL_SH, "block.sh": BLOCK_SH})
            for n in ("special_cancel", "special_term")
        }
        limit_repos = {n: self._repo(n, {"attack.sh": body}) for n, body in LIMIT_ATTACKS.items()}
        limit_repos["benign"] = self._repo("benign", {"attack.sh": FIX + "python3 test_calc.py\n"})
        self.before = {"outside": snapshot(self.outside), "data": self._data_state()}
        with editor, limits:
            try:
                trio.run(self._drive, editor, limits, {"race": race_repo, **special_repos}, limit_repos)
            finally:
                if limits.proc is not None and limits.proc.poll() is None:
                    self.exits["limits"] = limits.stop(timeout=60)
                if editor.proc is not None and editor.proc.poll() is None:
                    self.exits["editor"] = editor.stop(timeout=60)
                self.logs = {"editor": "".join(editor.log), "limits": "".join(limits.log)}
        self.after = {"outside": snapshot(self.outside), "data": self._data_state()}
        if os.geteuid() == 0:
            self.leftover = {
                n: sum(count_tasks(uid) for uid in range(self._base(n), self._base(n) + 32))
                for n in ("editor", "limits")
            }

        async def read_term_task() -> None:
            store = await open_store(self._data("editor"))
            try:
                task = await store.get_task(self.editor["special_term"].task["id"])
                self.term_task = task.public() if task is not None else {}
            finally:
                await store.aclose()

        trio.run(read_term_task)

    def _data_state(self) -> dict[str, Any]:
        """The editor daemon's data dir: its planted files exactly, and its top-level names."""
        data = self._data("editor")
        planted = {n: snapshot(data / n)["."] for n in ("secret.key", "plant.txt", self.data_name)}
        return {"planted": planted, "names": sorted(p.name for p in data.iterdir())}

    async def _drive(
        self,
        editor: DaemonProcess,
        limits: DaemonProcess,
        editor_repos: dict[str, Path],
        limit_repos: dict[str, Path],
    ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._editor_side, editor, editor_repos)
            nursery.start_soon(self._limits_side, limits, limit_repos)

    async def _editor_side(self, daemon: DaemonProcess, repos: dict[str, Path]) -> None:
        async with (
            httpx2.AsyncClient(base_url=daemon.url, timeout=30) as http,
            await ControlClient.connect(daemon.socket) as control,
        ):
            self.editor = {name: Ran(remote=repo) for name, repo in repos.items()}
            ids = {
                name: await _submit(http, self.token, str(repo), f"Fix calc.add ({name})")
                for name, repo in repos.items()
                if name != "special_term"
            }
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow, http, control, ids["race"], self.editor["race"])
                nursery.start_soon(self._cancel_when_blocked, daemon, http, control, ids["special_cancel"])
            # The last task, alone: once it sleeps in its sandbox, stop the daemon.
            term, term_id = (
                self.editor["special_term"],
                await _submit(http, self.token, str(repos["special_term"]), "Fix calc.add (special_term)"),
            )
            await self._blocked(daemon, term_id)
            term.events = (await _get(http, self.token, f"/api/tasks/{term_id}/events?limit=1000"))["events"]
            term.task = await _get(http, self.token, f"/api/tasks/{term_id}")
            term.messages = (await _get(http, self.token, f"/api/tasks/{term_id}/messages"))["messages"]
        started = time.monotonic()
        self.exits["editor"] = await trio.to_thread.run_sync(daemon.stop, signal.SIGTERM, 60)
        self.term_s = time.monotonic() - started

    async def _blocked(self, daemon: DaemonProcess, task_id: str) -> None:
        """Until the task's ``sleep 600`` runs: its block.sh writes .blocking just before (no
        event says that a command is running, only that it was called)."""
        marker = daemon.data_dir / "workspaces" / task_id / ".blocking"
        with trio.fail_after(RUN_TIMEOUT_S):
            while not await trio.to_thread.run_sync(marker.exists):  # noqa: ASYNC110 - see above
                await trio.sleep(0.05)

    async def _cancel_when_blocked(
        self, daemon: DaemonProcess, http: httpx2.AsyncClient, control: ControlClient, task_id: str
    ) -> None:
        ran = self.editor["special_cancel"]
        await self._blocked(daemon, task_id)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow, http, control, task_id, ran)
            started = trio.current_time()
            reply = await http.post(
                f"/api/tasks/{task_id}/cancel", headers={"Authorization": f"Bearer {self.token}"}
            )
            assert reply.status_code == 202, reply.text
        if ran.finished_at is not None:
            ran.cancel_s = ran.finished_at - started

    async def _follow(self, http: httpx2.AsyncClient, control: ControlClient, task_id: str, ran: Ran) -> None:
        """Events until ``task.finished`` (``ran.finished_at`` says when it came), then the row
        and the conversation."""
        with trio.move_on_after(RUN_TIMEOUT_S):
            async with aclosing(control.stream("tasks.tail", id=task_id, after=0)) as stream:
                async for event in stream:
                    ran.events.append(event)
                    if event["event"] == "task.finished":
                        ran.finished_at = trio.current_time()
                        break
        ran.task = await _get(http, self.token, f"/api/tasks/{task_id}")
        ran.messages = (await _get(http, self.token, f"/api/tasks/{task_id}/messages"))["messages"]

    async def _limits_side(self, daemon: DaemonProcess, repos: dict[str, Path]) -> None:
        async with (
            httpx2.AsyncClient(base_url=daemon.url, timeout=30) as http,
            await ControlClient.connect(daemon.socket) as control,
        ):
            attacks = {n: r for n, r in repos.items() if n != "benign"}
            self.limits = {name: Ran(remote=repo) for name, repo in repos.items()}
            async with trio.open_nursery() as outer:
                outer.start_soon(self._poll_healthz, daemon.url)
                async with trio.open_nursery() as nursery:
                    for name, repo in attacks.items():
                        task_id = await _submit(http, self.token, str(repo), f"Fix calc.add ({name})")
                        nursery.start_soon(self._follow, http, control, task_id, self.limits[name])
                outer.cancel_scope.cancel()
            self.healthz_after = (await http.get("/healthz")).status_code
            task_id = await _submit(http, self.token, str(repos["benign"]), "Fix calc.add (benign)")
            await self._follow(http, control, task_id, self.limits["benign"])
        self.exits["limits"] = await trio.to_thread.run_sync(daemon.stop, signal.SIGTERM, 60)

    async def _poll_healthz(self, url: str) -> None:
        """/healthz every 20 ms, on a connection of its own, until cancelled."""
        async with httpx2.AsyncClient(base_url=url, timeout=10) as http:
            while True:
                started = time.monotonic()
                try:
                    status: int | str = (await http.get("/healthz")).status_code
                except httpx2.HTTPError as exc:
                    status = repr(exc)
                self.healthz.append((status, time.monotonic() - started))
                await trio.sleep(0.02)
