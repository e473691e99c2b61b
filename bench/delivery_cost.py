"""What one task's delivery costs with git in the sandbox, against the host git it replaced.

    .venv/bin/python bench/delivery_cost.py [--deliveries 50] [--files 40] [--timeout 300] [--json]

Each delivery: a workspace made by ``prepare_workspace`` from a local bare repository (a small
project of ``--files`` files), a small edit (one file changed, one added), then the branch
committed and pushed to the bare repository. Only the delivery is timed; the clone and the edit
are not (the edit is made before the sandbox is entered, so the entry hands it over with the
clone, as the loop's entry hands over the clone). Two ways, interleaved one for one (the order
swapped every pair, so a host that speeds up or slows down weighs on both alike):

- **sandboxed** (agentd today): as ``AgentRunner.run`` does it, ``TaskSandbox`` entered (uid
  claimed and the workspace given to it when root, cgroup or rlimits), ``limit_reached()``,
  ``commit_and_push`` (the commit and a bundle made by git in bubblewrap, the bundle fetched
  into the owned repository, the push and the numstat from there), the sandbox left. Its parts
  are timed too: entry, ``commit_and_push``, exit.
- **host git** (the reference, ``host_git_commit_and_push`` below): ``commit_and_push`` as it
  was before the commit moved into the sandbox (issue 18), copied step for step: ``status``,
  ``symbolic-ref``, ``add -A``, ``diff --cached``, ``commit``, ``rev-parse``, the marker read,
  ``config --list`` checked, ``push`` from the workspace, the marker written, ``numstat``; every
  git on the host, started by today's ``run_git``. No sandbox: the loop had none for delivery.

Reported: p50 / p99 / mean of each over ``--deliveries``, the differences (sandboxed minus host
git), the CPU each took (this process and its children), and how the sandbox ran here. Not
pinned to a CPU: the time is the processes', which ``run_git`` releases from the pin anyway.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import emit, machine, percentile

from daemon.agent.factory import agent_settings
from daemon.agent.loop import AgentSettings
from daemon.agent.tools.sandbox import TaskSandbox
from daemon.agent.tools.task_sandbox import host_limits
from daemon.config import Settings
from daemon.errors import PermanentError
from daemon.git import CloneRequest, PushResult, Workspace, commit_and_push, prepare_workspace
from daemon.git.owned import parse_numstat
from daemon.git.process import GitAuth, run_git
from tests.fakes.git_http import git_out, make_bare_repo

MESSAGE = "Fix add\n\nThe agent's summary: add subtracted; it adds now, and a note says why."


# -- the reference: commit_and_push before issue 18 (all host git), step for step -------------

_MARKER = "agentd-workspace.json"
LOCAL_TIMEOUT = 120.0
PUSH_TIMEOUT = 300.0
_UNSAFE_PUSH_CONFIG = re.compile(
    r"^(include\.|includeif\.|url\.|http\.|credential|remote\.(?!origin\.[^.]+$)"
    r"|core\.(sshcommand|gitproxy|askpass|hookspath|fsmonitor)$|push\.gpgsign$|gpg\.)"
)


async def host_git_commit_and_push(
    ws: Workspace, message: str, *, token: str | None, timeout: float = PUSH_TIMEOUT
) -> PushResult | None:
    """The reference: ``commit_and_push`` of ``daemon/git/workspace.py`` before the commit moved
    into the sandbox, every git on the host in the workspace. Kept here only to be measured
    against; it is not safe against a hostile ``.git`` (that is why it was replaced)."""
    git = _local_git(ws.path)
    head = await _clean_head(ws)
    if head is None:
        await _ensure_on_branch(ws)
        await git("add", "-A")
        staged = await git("diff", "--cached", "--quiet", check=False)
        if staged.returncode == 1:
            await git("commit", "--quiet", "--no-verify", "--no-gpg-sign", "-m", message)
        elif staged.returncode != 0:
            raise PermanentError(f"git diff failed: {staged.stderr.strip()}")
        head = (await git("rev-parse", "HEAD")).stdout.decode().strip()
    if head == ws.base_commit:
        return None
    marker = ws.path / ".git" / _MARKER
    meta = await trio.to_thread.run_sync(_read_marker, marker)
    if meta is None:
        raise PermanentError("workspace lost its marker; not pushing", code="workspace_marker")
    if head != meta.get("pushed_commit"):
        await _check_push_config(ws)
        refspec = f"refs/heads/{ws.branch}:refs/heads/{ws.branch}"
        await run_git(
            ["push", "--quiet", "--no-verify", "--", ws.remote.url, refspec],
            cwd=ws.path,
            remote=ws.remote,
            auth=GitAuth(token=token),
            op="push",
            timeout=timeout,
        )
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(write_marker, ws, head)
    numstat = await git("diff", "--numstat", "-z", "--no-renames", ws.base_commit, head)
    files, added, removed = parse_numstat(numstat.stdout)
    return PushResult(
        branch=ws.branch, commit=head, files_changed=files, lines_added=added, lines_removed=removed
    )


async def _clean_head(ws: Workspace) -> str | None:
    status = await _local_git(ws.path)(
        "status",
        "--porcelain=v2",
        "--branch",
        "-z",
        "--untracked-files=normal",
        "--ignore-submodules=none",
        "--no-ahead-behind",
        check=False,
    )
    if status.returncode != 0:
        return None
    oid = branch = None
    for entry in status.stdout.decode(errors="replace").split("\0"):
        if entry.startswith("# branch.oid "):
            oid = entry[len("# branch.oid ") :]
        elif entry.startswith("# branch.head "):
            branch = entry[len("# branch.head ") :]
        elif entry and not entry.startswith("#"):
            return None
    if branch != ws.branch or oid is None or not re.fullmatch(r"[0-9a-f]{40,64}", oid):
        return None
    return oid


async def _ensure_on_branch(ws: Workspace) -> None:
    head = await _local_git(ws.path)("symbolic-ref", "--quiet", "--short", "HEAD", check=False)
    if head.returncode != 0 or head.stdout.decode().strip() != ws.branch:
        raise PermanentError(f"the workspace is no longer on its branch {ws.branch}", code="workspace_branch")


async def _check_push_config(ws: Workspace) -> None:
    listed = await _local_git(ws.path)("config", "--local", "--null", "--list", check=False)
    for entry in listed.stdout.decode(errors="replace").split("\0"):
        key = entry.partition("\n")[0].lower()
        if key and _UNSAFE_PUSH_CONFIG.match(key):
            raise PermanentError(f"the workspace's git config sets '{key}'", code="unsafe_git_config")


def _local_git(path: Path):
    async def git(*args: str, check: bool = True):
        return await run_git(list(args), cwd=path, timeout=LOCAL_TIMEOUT, check=check)

    return git


def _read_marker(marker: Path) -> dict | None:
    try:
        return json.loads(marker.read_text())
    except FileNotFoundError:
        return None


def write_marker(ws: Workspace, pushed_commit: str | None) -> None:
    """The record the old ``prepare_workspace`` left in ``.git`` (and the old push updated)."""
    meta = {
        "branch": ws.branch,
        "base_branch": ws.base_branch,
        "base_commit": ws.base_commit,
        "remote_url": ws.remote.url,
        "pushed_commit": pushed_commit,
    }
    marker = ws.path / ".git" / _MARKER
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, marker)


# -- the measurement ---------------------------------------------------------------------------


def project(files: int) -> dict[str, str]:
    """A small Python project: a README, the module with the bug, ``files`` more modules."""
    tree = {"README.md": "# calc\n\nA small calculator.\n", "calc.py": "def add(a, b):\n    return a - b\n"}
    for i in range(files):
        body = "".join(f"def f{j}(x):\n    return x + {j}\n" for j in range(20))
        tree[f"pkg/mod_{i:03d}.py"] = body
    return tree


def edit(path: Path) -> None:
    """What the agent did: one file changed, one added."""
    (path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (path / "NOTES.md").write_text("add() subtracted; it adds now.\n")


class Deliveries:
    """Workspaces cloned from one bare repository, delivered one way or the other, timed."""

    def __init__(self, bare: Path, settings: AgentSettings) -> None:
        self.bare, self.s = bare, settings
        self.count = 0
        self.sandbox_info: dict[str, Any] = {}

    async def workspace(self, kind: str) -> Workspace:
        self.count += 1
        s = self.s
        ws = await prepare_workspace(
            CloneRequest(f"{kind}-{self.count}", str(self.bare), "main", title=f"fix add {self.count}"),
            dataclasses.replace(s.clone_policy, allow_local=True, min_free_bytes=0),
        )
        await trio.to_thread.run_sync(edit, ws.path)
        return ws

    async def sandboxed(self) -> tuple[dict[str, float], PushResult | None]:
        ws = await self.workspace("sandboxed")
        s = self.s
        c0, t0 = _cpu(), time.perf_counter()
        async with TaskSandbox(ws.path, s.tools) as box:
            t1 = time.perf_counter()
            if (hit := await box.limit_reached()) is not None:
                raise hit
            pushed = await commit_and_push(
                ws,
                MESSAGE,
                token=None,
                confinement=box,
                identity=s.identity,
                ssh_key=s.ssh_key,
                allow_private=True,
            )
            t2 = time.perf_counter()
            self.sandbox_info = {
                "bubblewrap": box.sandboxed,
                "own_uid": box.owner is not None,
                "cgroup": (await host_limits()).cgroup is not None,
            }
        t3, c1 = time.perf_counter(), _cpu()
        await self.remove(ws)
        return {
            "total": t3 - t0,
            "enter": t1 - t0,
            "commit_and_push": t2 - t1,
            "exit": t3 - t2,
            "cpu": c1 - c0,
        }, pushed

    async def host_git(self) -> tuple[dict[str, float], PushResult | None]:
        ws = await self.workspace("host")
        await trio.to_thread.run_sync(write_marker, ws, None)
        c0, t0 = _cpu(), time.perf_counter()
        pushed = await host_git_commit_and_push(ws, MESSAGE, token=None)
        t1, c1 = time.perf_counter(), _cpu()
        await self.remove(ws)
        return {"total": t1 - t0, "cpu": c1 - c0}, pushed

    async def remove(self, ws: Workspace) -> None:
        for path in (ws.path, ws.owned):
            await trio.to_thread.run_sync(shutil.rmtree, path, True)


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (git, bwrap and theirs)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "p50_ms": round(percentile(ms, 0.50), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "max_ms": round(max(ms), 2),
    }


async def run(deliveries: int, files: int, timeout_s: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="agentd-delivery-", dir="/tmp"))
    try:
        with trio.fail_after(timeout_s):
            return await _measure(tmp, deliveries, files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def _measure(tmp: Path, deliveries: int, files: int) -> dict[str, Any]:
    """The deliveries, ``deliveries`` of each way interleaved, and their summary."""
    bare = make_bare_repo(tmp, branches={"main": project(files)})
    # The daemon's own settings, as `agentd serve` would build them (sandbox "auto").
    settings = agent_settings(Settings(data_dir=tmp / "data", allow_local_remotes=True, min_free_disk_mb=0))
    d = Deliveries(bare, settings)
    ways: dict[str, Callable[[], Awaitable[tuple[dict[str, float], PushResult | None]]]] = {
        "sandboxed": d.sandboxed,
        "host_git": d.host_git,
    }
    # Once each, untimed: what a daemon pays once per process (the sandbox probe, imports).
    for way in ways.values():
        await way()
    times: dict[str, dict[str, list[float]]] = {name: {} for name in ways}
    for i in range(deliveries):
        order = list(ways) if i % 2 == 0 else list(reversed(ways))
        for name in order:
            parts, pushed = await ways[name]()
            # Each delivery pushed the edit, and the remote has it (checked untimed).
            if pushed is None or sorted(pushed.files_changed) != ["NOTES.md", "calc.py"]:
                raise SystemExit(f"{name}: the delivery did not push the edit: {pushed}")
            there = await trio.to_thread.run_sync(git_out, bare, "rev-parse", pushed.branch)
            if there != pushed.commit:
                raise SystemExit(f"{name}: the remote's {pushed.branch} is at {there}, not {pushed.commit}")
            for part, seconds in parts.items():
                times[name].setdefault(part, []).append(seconds)
    cpu = {name: parts.pop("cpu") for name, parts in times.items()}
    new = {part: _ms(values) for part, values in times["sandboxed"].items()}
    old = _ms(times["host_git"]["total"])
    paired = [a - b for a, b in zip(times["sandboxed"]["total"], times["host_git"]["total"], strict=True)]
    return {
        "deliveries": deliveries,
        "files": files + 2,
        "sandboxed": new,
        "host_git": old,
        "difference": {
            "p50_ms": round(new["total"]["p50_ms"] - old["p50_ms"], 2),
            "p99_ms": round(new["total"]["p99_ms"] - old["p99_ms"], 2),
            "paired_median_ms": round(statistics.median(paired) * 1000, 2),
        },
        # This process's and its children's (git, bwrap) CPU over the timed part, mean.
        "cpu_ms": {name: round(statistics.fmean(v) * 1000, 1) for name, v in cpu.items()},
        "sandbox": d.sandbox_info,
        "load_avg": os.getloadavg(),
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=50, help="of each kind")
    parser.add_argument("--files", type=int, default=40, help="modules in the project, beside two")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the whole run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.deliveries < 1:
        parser.error("--deliveries must be at least 1")
    emit(trio.run(run, args.deliveries, args.files, args.timeout), args.json)


if __name__ == "__main__":
    main()
