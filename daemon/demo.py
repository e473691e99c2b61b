"""``agentd demo``: the whole pipeline, offline, in one command.

It makes a temporary data dir and a bare git repository holding a small project whose test
fails, starts the daemon, creates a user over the control socket, submits a task over HTTP,
follows its events over the WebSocket as they come, then shows the pushed branch and its diff.
With ANTHROPIC_API_KEY set, Claude does the work instead of the script.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TextIO

import httpx2
import trio
from trio_websocket import open_websocket_url

from control import ControlClient
from control.render import event_line

from .config import load_settings
from .errors import ConfigError
from .git.process import git_env
from .service import Daemon

PROJECT = {
    "README.md": "# calc\n\nA tiny calculator. Run `python3 test_calc.py` to test it.\n",
    "calc.py": 'def add(a, b):\n    """Return the sum of a and b."""\n    return a - b\n',
    "test_calc.py": (
        "from calc import add\n\n"
        "assert add(2, 3) == 5, f'add(2, 3) returned {add(2, 3)}, expected 5'\n"
        "assert add(-1, 1) == 0\n"
        "print('test_calc: all tests passed')\n"
    ),
}
PROMPT = "The test in test_calc.py fails. Find the bug, fix it, and run the test to check."


def _tool(id: str, name: str, **input: str) -> dict[str, object]:
    return {"type": "tool_use", "id": id, "name": name, "input": input}


SCRIPT = {
    "turns": [
        {
            "content": [
                {"type": "text", "text": "I'll run the test first to see how it fails."},
                _tool("t1", "bash", command="python3 test_calc.py"),
            ]
        },
        {
            "content": [
                {"type": "text", "text": "add() returns -1 for (2, 3). Let me read calc.py."},
                _tool("t2", "str_replace_based_edit_tool", command="view", path="calc.py"),
            ]
        },
        {
            "content": [
                {"type": "text", "text": "It subtracts instead of adding. Fixing it."},
                _tool(
                    "t3",
                    "str_replace_based_edit_tool",
                    command="str_replace",
                    path="calc.py",
                    old_str="return a - b",
                    new_str="return a + b",
                ),
            ]
        },
        {"content": [_tool("t4", "bash", command="python3 test_calc.py")]},
        {
            "content": [
                {
                    "type": "text",
                    "text": "Fixed add() in calc.py: it subtracted b instead of "
                    "adding it. test_calc.py now passes.",
                }
            ]
        },
    ]
}


def _git(cwd: Path, *args: str) -> str:
    # The pushed branch is the agent's work: no hooks, no pager, and not the demo's environment.
    return subprocess.run(
        [
            "git",
            "-c",
            "user.name=agentd demo",
            "-c",
            "user.email=demo@localhost",
            "-c",
            "core.hooksPath=/dev/null",
            *args,
        ],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env=git_env(None, None, allow_local=True),
    ).stdout


def make_project(root: Path) -> Path:
    """A bare repository (the "remote") holding the buggy project on ``main``."""
    work, bare = root / "project", root / "remote.git"
    work.mkdir()
    for name, text in PROJECT.items():
        (work / name).write_text(text)
    _git(work, "init", "-q", "-b", "main")
    _git(work, "add", "-A")
    _git(work, "commit", "-q", "-m", "A calculator with a failing test")
    _git(root, "clone", "-q", "--bare", str(work), str(bare))
    return bare


async def follow(url: str, token: str, task_id: str, out: TextIO) -> None:
    """Print every event of the task from seq 1 until ``task.finished``."""
    ws_url = url.replace("http://", "ws://", 1) + "/ws"
    headers = [(b"authorization", f"Bearer {token}".encode())]
    async with open_websocket_url(ws_url, extra_headers=headers) as ws:
        await ws.send_message(json.dumps({"type": "subscribe", "task_id": task_id, "after": 0}))
        while True:
            message = json.loads(await ws.get_message())
            if message.get("type") == "error":
                raise RuntimeError(f"websocket error: {message.get('message')}")
            if message.get("type") != "event" or message.get("seq") is None:
                continue
            print(event_line(message), file=out, flush=True)
            if message.get("event") == "task.finished":
                return


async def run_pipeline(root: Path, out: TextIO) -> bool:
    """Run the demo under ``root``; True when the task succeeded and its branch was pushed."""
    bare = make_project(root)
    use_claude = bool(os.environ.get("ANTHROPIC_API_KEY"))
    script = root / "script.json"
    script.write_text(json.dumps(SCRIPT))
    settings = load_settings(
        flags={
            "data_dir": root / "data",
            "http": "127.0.0.1:0",
            "control_socket": root / "agentd.sock",
            "allow_local_remotes": True,
            "model": "anthropic" if use_claude else "scripted",
            "script": None if use_claude else script,
            "grace_period_s": 5.0,
        }
    )
    daemon = Daemon(settings)
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(daemon.serve)
        url = urls[0]
        print(f"agentd is serving on {url} with the {settings.model_name} model", file=out)
        async with await ControlClient.connect(settings.control_socket_path) as control:
            token = (await control.call("users.add", login="demo"))["token"]
        async with httpx2.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
            reply = await http.post("/api/tasks", json={"repo_url": str(bare), "prompt": PROMPT})
            reply.raise_for_status()
            task_id = reply.json()["id"]
            print(f"submitted task {task_id}: {PROMPT}\n", file=out)
            await follow(url, token, task_id, out)
            task = (await http.get(f"/api/tasks/{task_id}")).json()
        daemon.request_stop()
    print(f"\ntask {task['status']}" + (f": {task['error']}" if task.get("error") else ""), file=out)
    if task["status"] != "succeeded" or not task.get("branch"):
        return False
    branch = task["branch"]
    print(f"\nbranch {branch} pushed to {bare}:\n", file=out)
    print(_git(bare, "log", "--format=%h %s", f"main..{branch}"), file=out)
    print(_git(bare, "diff", f"main...{branch}"), file=out)
    return True


def run_demo(*, keep: bool = False, out: TextIO = sys.stdout) -> int:
    root = Path(tempfile.mkdtemp(prefix="agentd-demo-"))
    exit_code = 1
    try:
        exit_code = 0 if trio.run(run_pipeline, root, out) else 1
    except* ConfigError as group:
        print(f"agentd demo: {group.exceptions[0]}", file=sys.stderr)
        exit_code = 2
    except* Exception as group:  # noqa: BLE001 - the CLI's last word: any failure, told and exit 1
        print(f"agentd demo failed: {group.exceptions[0]!r}", file=sys.stderr)
    finally:
        if keep:
            print(f"kept {root}", file=out)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return exit_code
