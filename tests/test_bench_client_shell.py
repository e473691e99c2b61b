"""bench/client_shell.py still runs: a real ``agentd serve``, the shell fetched twice, the JSON
that ``bench/run_all.py`` reads, and the table's row made from it. The figures are not checked
(a CI machine's speed says nothing)."""

from __future__ import annotations

import sys

import pytest

from .bench_support import BENCH, run_bench

sys.path.insert(0, str(BENCH))

import run_all


@pytest.mark.slow
def test_the_shell_is_fetched_cold_and_makes_a_row(monkeypatch):
    result = run_bench("client_shell.py", "--runs", 2)
    assert result["runs"] == 2 and result["max_ms"] >= result["p50_ms"] > 0
    # The page, and what it names that the client directory holds.
    assert "/" in result["names"] and "/manifest.webmanifest" in result["names"]
    assert any(name.endswith(".js") for name in result["names"])
    assert result["files"] == len(result["names"]) and result["bytes"] > 0
    monkeypatch.setattr(run_all, "run_step", lambda label, argv: result)
    (row,) = run_all.client_suite({"shell_runs": 2})
    assert row.target == "< 1 s" and row.met is (result["p50_ms"] < 1000)
    assert f"{result['files']} files" in row.name
