"""Running a benchmark script the way ``bench/run_all.py`` does, for the smoke tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def run_bench(script: str, *args: object, timeout: float = 100) -> dict:
    """Run ``bench/<script> *args --json`` in the project venv; return the JSON of its last line.

    Fails the test (with the script's stderr) if it exits non-zero; ``subprocess.TimeoutExpired``
    after ``timeout`` seconds.
    """
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *map(str, args), "--json"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])
