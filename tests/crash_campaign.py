"""Crash campaign: SIGKILL the real daemon at chosen points of scripted tasks, restart, check.

Each round starts ``agentd serve``, follows one unfinished task over the control socket and kills
the daemon with SIGKILL when a randomly chosen point of that task is reached: right after it
starts running (during the clone), on a tool call (mid command), on a random event (mid append),
or on the agent's last text (right before the push). After the rounds, one last run lets every
task finish. Then every task must have succeeded, its events must be seq 1..N without a gap, the
database must pass ``integrity_check``, and every pushed branch must hold exactly one commit with
the expected content (never two runs mixed, never pushed twice with different content).
Used by ``tests/test_crash_campaign.py`` (reduced) and ``bench/crash_campaign.py`` (full size).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import apsw
import trio

from daemon.store import SqliteStore

from .agent_env import BUGGY_PROJECT, FIX_CALC_EDIT, bare_repo, text, tool_use
from .daemon_process import DaemonProcess

SCRIPT = {
    "turns": [
        {"content": [text("Looking around."), tool_use("t1", "bash", command="ls; sleep 0.3; echo done")]},
        {"content": [FIX_CALC_EDIT]},
        {"content": [tool_use("t3", "bash", command="python3 test_calc.py >> checks.log; cat checks.log")]},
        {"content": [text("Fixed add(); the test passes.")]},
    ]
}
POINTS = ("running", "tool_call", "random_event", "last_text")


@dataclass
class CampaignResult:
    tasks: int
    rounds: int
    kills: int
    kill_points: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


async def _create_tasks(data: Path, repo: str, count: int) -> list[str]:
    store = await SqliteStore.open(data)
    try:
        user = await store.upsert_user("crash")
        ids = []
        for i in range(count):
            task, _ = await store.create_task(user_id=user.id, repo_url=repo, prompt=f"Fix add() #{i}")
            ids.append(task.id)
        return ids
    finally:
        await store.aclose()


async def _snapshot(data: Path, ids: list[str]):
    store = await SqliteStore.open(data)
    try:
        return {tid: (await store.get_task(tid), await store.read_events(tid, 0, 100_000)) for tid in ids}
    finally:
        await store.aclose()


def _kill_point(rng: random.Random, event: dict, point: str, nth: int, seen: int) -> bool:
    kind = event.get("event")
    if point == "running":
        return kind == "task.status" and event["data"].get("status") == "running"
    if point == "tool_call":
        return kind == "agent.tool_call"
    if point == "last_text":
        return kind == "agent.text" and "passes" in event["data"].get("text", "")
    return seen >= nth


def _round(daemon: DaemonProcess, task_id: str, after: int, point: str, nth: int, rng: random.Random) -> bool:
    """Follow ``task_id`` from ``after`` and SIGKILL the daemon at ``point``; False if it ended first."""
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "control.cli",
            "--socket",
            str(daemon.socket),
            "--json",
            "tail",
            task_id,
            "--after",
            str(after),
        ],
        env=daemon.env,
        stdout=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    killed = False
    assert follower.stdout is not None
    for seen, line in enumerate(follower.stdout, 1):
        event = json.loads(line)
        if _kill_point(rng, event, point, nth, seen):
            daemon.proc.kill()  # type: ignore[union-attr]
            killed = True
            break
    daemon.kill()
    follower.kill()
    follower.wait(30)
    return killed


def run_campaign(root: Path, *, tasks: int, rounds: int, seed: int = 1) -> CampaignResult:
    rng = random.Random(seed)
    data = root / "data"
    bare = bare_repo(root)
    ids = trio.run(_create_tasks, data, str(bare), tasks)
    result = CampaignResult(tasks=tasks, rounds=rounds, kills=0)
    env = {"AGENTD_CONCURRENCY": "1"}
    points = list(POINTS)
    rng.shuffle(points)
    for round_no in range(rounds):
        snapshot = trio.run(_snapshot, data, ids)
        open_tasks = [task for task, _ in snapshot.values() if not task.status.is_terminal]
        if not open_tasks:
            break
        # The oldest open task runs first: its next steps are the ones this round can reach.
        target = min(open_tasks, key=lambda task: (task.created_at, task.id))
        point = points[round_no % len(points)]
        with DaemonProcess(data, script=SCRIPT, extra_env=env) as daemon:
            if _round(daemon, target.id, target.last_seq, point, rng.randint(1, 12), rng):
                result.kills += 1
                result.kill_points[point] = result.kill_points.get(point, 0) + 1
    with DaemonProcess(data, script=SCRIPT, extra_env=env) as daemon:
        for tid in ids:
            done = daemon.agentctl("--json", "tail", tid, timeout=300)
            if done.returncode != 0:
                result.problems.append(f"{tid}: tail failed: {done.stderr.strip()}")
        daemon.stop()
    _verify(data, bare, ids, result)
    return result


def _verify(data: Path, bare: Path, ids: list[str], result: CampaignResult) -> None:
    snapshot = trio.run(_snapshot, data, ids)
    for tid, (task, events) in snapshot.items():
        if task.status.value != "succeeded":
            result.problems.append(f"{tid}: ended {task.status.value}: {task.error}")
        seqs = [e.seq for e in events]
        if seqs != list(range(1, len(seqs) + 1)):
            result.problems.append(f"{tid}: events not gap-free: {seqs[:10]}...")
        if not task.branch:
            result.problems.append(f"{tid}: no branch pushed")
            continue
        log = subprocess.run(
            ["git", "rev-list", f"main..{task.branch}"], cwd=bare, capture_output=True, text=True, check=False
        ).stdout.split()
        if len(log) != 1:
            result.problems.append(f"{tid}: branch has {len(log)} commits, expected 1")
        if log and log[0] != (task.diff or {}).get("commit"):
            result.problems.append(f"{tid}: the branch tip {log[0]} is not the recorded commit")
        shown = subprocess.run(
            ["git", "show", f"{task.branch}:calc.py"], cwd=bare, capture_output=True, text=True, check=False
        ).stdout
        # The fix is in, unless its edit was interrupted by a kill: then the (scripted, so
        # unadaptive) agent was told so and went on without it; either way, never half-done.
        edit_interrupted = any(
            e.type == "agent.tool_result" and e.data["id"] == "t2" and e.data["is_error"] for e in events
        )
        if "return a + b" not in shown and not (edit_interrupted and "return a - b" in shown):
            result.problems.append(f"{tid}: pushed content is wrong: {shown!r}")
        pushed = [e.data["commit"] for e in events if e.type == "git.pushed"]
        if len(pushed) != 1:
            result.problems.append(f"{tid}: {len(pushed)} git.pushed events: {pushed}")
    conn = apsw.Connection(str(data / "agentd.db"))
    try:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    if check != "ok":
        result.problems.append(f"integrity_check: {check}")


__all__ = ["BUGGY_PROJECT", "CampaignResult", "run_campaign"]
