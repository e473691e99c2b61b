"""The crash campaign at full size: many SIGKILLs of the real daemon at chosen points.

Usage: python bench/crash_campaign.py [--tasks 20] [--rounds 40] [--seed 1]
Prints the kills by point and any problem found; exits 1 when a problem is found.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.crash_campaign import run_campaign


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="agentd-crash-") as tmp:
        result = run_campaign(Path(tmp), tasks=args.tasks, rounds=args.rounds, seed=args.seed)
    print(
        f"{result.tasks} tasks, {result.kills} SIGKILLs in {time.perf_counter() - began:.0f} s; "
        f"kills by point: {result.kill_points}"
    )
    for problem in result.problems:
        print(f"PROBLEM: {problem}")
    print("all tasks ended correctly" if not result.problems else f"{len(result.problems)} problems")
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
