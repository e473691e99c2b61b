"""`agentd demo`, the README's first command, run for real as a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from .daemon_process import ROOT

pytestmark = pytest.mark.slow


def test_agentd_demo_fixes_the_bug_and_shows_the_diff():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ANTHROPIC_API_KEY", None)
    result = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for expected in (
        "task.created",
        "workspace.ready",
        "agent.tool_call",
        "test_calc: all tests passed",
        "git.pushed",
        "task.finished",
        "task succeeded",
        "-    return a - b",
        "+    return a + b",
    ):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    # Event lines are "<seq right-aligned in 4>  HH:MM:SS  <type>" (control/render.py, the lines
    # agentctl tail prints too); a commit hash line is not one.
    seqs = [int(m.group(1)) for m in re.finditer(r"^ {0,3}(\d+)  \d\d:\d\d:\d\d  [a-z]+\.[a-z_]+", out, re.M)]
    assert seqs == list(range(1, len(seqs) + 1))
