"""The queue benchmark on PostgreSQL still runs, at a tiny size (figures not checked), and its
README rows come out of one run: agentd on 1 and 3 node processes against the session's test
server (tests/pg.py), then ``pg_rows.pg_suite`` fed that result beside a pgqueuer one, so the
peers' venv is not needed here."""

from __future__ import annotations

import contextlib
import sys

import pytest

from .bench_support import BENCH, run_bench

sys.path.insert(0, str(BENCH))

import pg_rows
import run_all

pytestmark = pytest.mark.slow


def test_the_nodes_bench_runs_and_its_rows_hold_each_ratio_of_one_run(pg_server, monkeypatch):
    result = run_bench(
        "queue_pg_nodes.py",
        *("--pg", pg_server.dsn(), "--nodes", "1,3", "--jobs", 30, "--concurrency", 4, "--timeout", 60),
        timeout=150,
    )
    for count in ("1", "3"):
        measured = result["nodes"][count]
        assert measured["exactly_once"] and measured["jobs"] == 30 and measured["jobs_per_s"] > 0
        cost = measured["cost"]
        assert cost["claim_rounds"] >= 1 and cost["tasks_per_round"] > 0 and cost["node_cpu_us_per_task"] > 0
    assert len(result["nodes"]["3"]["runs_per_node"]) >= 2  # the nodes shared the work

    one, three = (result["nodes"][count]["jobs_per_s"] for count in ("1", "3"))
    pgqueuer = {
        "process_only": {"jobs_per_s": 2 * one},
        "throughput": {"jobs_per_s": one},
        "latency": {"p50_ms": 1.0, "p99_ms": 2.0},
    }
    answers = {"pg: agentd nodes": result, "pg: agentd on sqlite": {"process_only": {"jobs_per_s": 9}}}
    monkeypatch.setattr(pg_rows, "unavailable_reason", lambda: None)
    monkeypatch.setattr(pg_rows, "pg_server", lambda: contextlib.nullcontext(pg_server.dsn()))
    rows = pg_rows.pg_suite(
        {**run_all.SIZES["quick"], "pg_nodes": "1,3"},
        Row=run_all.Row,
        run_step=lambda label, argv: answers.get(label, pgqueuer),
        py=run_all.py,
        peers_py=sys.executable,
    )
    by_name = {row.name.split("jobs/s: ")[-1]: row for row in rows}
    vs_pgqueuer = by_name["agentd 1 node vs pgqueuer"]
    assert (
        vs_pgqueuer.ratio == pytest.approx(0.5)
        and vs_pgqueuer.met
        and vs_pgqueuer.target == "≥ 0.5× pgqueuer"
    )
    nodes = by_name["agentd 3 nodes vs 1 node (same run)"]
    assert nodes.ratio == pytest.approx(three / one) and nodes.met == (three >= one)
    assert nodes.target == "≥ 1× one node"
    costs = [row for row in rows if "cost" in row.name]
    assert len(costs) == 2 and all("claim round" in row.agentd for row in costs)
