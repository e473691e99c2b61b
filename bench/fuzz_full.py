"""The fuzzers at full size: the CI properties with many more examples and a random seed.

    .venv/bin/python bench/fuzz_full.py [--budget-s 600] [--max-scale 200] [--seed N] [--live]

Runs ``tests/test_fuzz_api.py``, ``test_fuzz_ws.py`` and ``test_fuzz_control.py`` in turn, each
in its own pytest process: first at CI size (which times it), then with ``AGENTD_FUZZ_SCALE``
(examples = CI examples x scale) chosen so the run fills its share of the time budget, and
``AGENTD_FUZZ_SEED`` (a random search, not CI's fixed one). Hypothesis has no time limit of its
own, so the budget is kept by this calibration: a run may overshoot its share somewhat.
``--live`` adds a pass of the HTTP fuzzer with the supervisor running tasks while the fuzzer
cancels and follows them up (CI keeps tasks queued). Prints a summary: per file the outcome,
the time, the failing examples Hypothesis reported, and the answers seen (status codes, error
codes, close codes) counted; the full pytest output goes to ``$TMPDIR/agentd-fuzz/*.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = ["tests/test_fuzz_api.py", "tests/test_fuzz_ws.py", "tests/test_fuzz_control.py"]
SHARE = {"tests/test_fuzz_api.py": 0.5, "tests/test_fuzz_ws.py": 0.2, "tests/test_fuzz_control.py": 0.3}


def run(path: str, *, scale: float, seed: int, budget_s: float, live: bool, logs: Path) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as stats_file:
        stats_path = Path(stats_file.name)
    env = dict(
        os.environ,
        AGENTD_FUZZ_SCALE=str(scale),
        AGENTD_FUZZ_SEED=str(seed),
        AGENTD_FUZZ_STATS=str(stats_path),
    )
    if live:
        env["AGENTD_FUZZ_LIVE_SUPERVISOR"] = "1"
    name = Path(path).stem + ("-live" if live else "")
    log = logs / f"fuzz-{name}.log"
    start = time.monotonic()
    # pytest-timeout per test, generous: the budget is for the whole file.
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        path,
        f"--timeout={int(budget_s)}",
    ]
    try:
        proc = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=budget_s + 60
        )
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        code = "timeout"
    elapsed = time.monotonic() - start
    log.write_text(output)
    tallies = json.loads(stats_path.read_text()) if stats_path.stat().st_size else {}
    stats_path.unlink(missing_ok=True)
    return {
        "file": name,
        "code": code,
        "elapsed_s": round(elapsed, 1),
        "log": log,
        "summary": _last_line(output),
        "failures": _failures(output),
        "tallies": tallies,
    }


def _last_line(output: str) -> str:
    lines = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    return lines[-1].strip("= ") if lines else "(no pytest summary)"


def _failures(output: str) -> list[str]:
    """Each 'Failing test case' block Hypothesis printed, cut to its first lines."""
    blocks = []
    for match in re.finditer(r"Failing test case:.*?(?=\n\s*\|?\s*\n|\Z)", output, re.DOTALL):
        blocks.append("\n".join(match.group(0).splitlines()[:12]))
    errors = re.findall(r"^\s*\|?\s*(\w+(?:Error|Exception|Timeout)[^\n]{0,200})$", output, re.MULTILINE)
    return blocks + sorted(set(errors))[:10]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=600.0)
    parser.add_argument("--max-scale", type=float, default=200.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--live", action="store_true", help="also fuzz the HTTP API with the supervisor running tasks"
    )
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    logs = Path(tempfile.gettempdir()) / "agentd-fuzz"
    logs.mkdir(parents=True, exist_ok=True)
    plan = [(path, False) for path in FILES]
    if args.live:
        plan.append(("tests/test_fuzz_api.py", True))
    shares = {(p, live): SHARE[p] * (0.5 if args.live and p.endswith("api.py") else 1) for p, live in plan}
    total = sum(shares.values())
    print(f"fuzz_full: seed {seed}, budget {args.budget_s:g} s")
    results = []
    for path, live in plan:
        budget = args.budget_s * shares[(path, live)] / total
        ci = run(path, scale=1, seed=seed, budget_s=budget, live=live, logs=logs)
        # About 1.5 s of each run is pytest and imports, not examples.
        scale = max(1.0, min(args.max_scale, budget / max(ci["elapsed_s"] - 1.5, 0.5)))
        result = run(path, scale=scale, seed=seed, budget_s=budget * 2, live=live, logs=logs)
        result["scale"] = scale
        results.append(result)
        print(
            f"\n== {result['file']} x{scale:.0f}: {result['summary']} "
            f"({result['elapsed_s']} s, exit {result['code']}; log {result['log']})"
        )
        for failure in result["failures"]:
            print("   " + failure.replace("\n", "\n   "))
        top = sorted(result["tallies"].items(), key=lambda kv: -kv[1])
        print(f"   answers seen: {sum(result['tallies'].values())} in {len(top)} kinds; most common:")
        for key, count in top[:15]:
            print(f"     {count:7d}  {key}")
    failed = [r for r in results if r["code"] != 0]
    print(f"\nfuzz_full: {len(results) - len(failed)} of {len(results)} runs clean, seed {seed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
