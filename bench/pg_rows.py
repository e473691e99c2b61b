"""The README rows for the queue on PostgreSQL: agentd on 1, 2, 3 node processes vs pgqueuer.

``run_all.py`` calls ``pg_suite(size, ...)`` like its other suites, passing its own ``Row``,
``run_step``, ``py`` and the peers' interpreter, so that this module needs nothing from it at
import time. One throwaway server for the suite (``pg_server.py``, durable defaults), a fresh
database per measurement; ``size["rounds"]`` rounds, the systems interleaved in each.

Two rows have targets, each a ratio of figures from the same run: agentd on one node against
pgqueuer (at least 0.5×), and three nodes against one (at least 1×: more nodes are not slower).
Each cell gives the best round and, with more than one, the spread of the rounds; the cost row
gives what the model in the README's performance notes is built from.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pg_server import pg_server, unavailable_reason

PG_TARGET, NODES_TARGET = 0.5, 1.0


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _spread(values: list[float]) -> str:
    """``best (n rounds: low to high)``, or the one figure."""
    if len(values) < 2:
        return _fmt(values[0])
    return f"{_fmt(max(values))} ({len(values)} rounds: {_fmt(min(values))} to {_fmt(max(values))})"


def pg_suite(
    size: dict[str, Any],
    *,
    Row: Any,
    run_step: Callable[[str, list[str]], dict[str, Any] | None],
    py: Callable[..., list[str]],
    peers_py: Path | str,
) -> list[Any]:
    """Rows: agentd 1 node vs pgqueuer (target), 2 nodes (reference), 3 nodes vs 1 node
    (target), the cost per task and per claim round, agentd on SQLite beside, and pgqueuer's end
    to end and latency figures (references)."""
    n, c, rate = size["jobs"], size["concurrency"], size["rate"]
    shape = f"{n:,} no-op jobs, concurrency {c} per node"
    title = f"Queue on PostgreSQL, SAQ's shape: enqueue all then process ({shape}), jobs/s"
    reason = unavailable_reason()
    if reason:
        print(f"  pg: skipped: {reason}", file=sys.stderr)
        return [Row(f"{title}: agentd 1/2/3 nodes vs pgqueuer", f"skipped: {reason}")]
    rounds: list[dict[str, dict[str, Any] | None]] = []
    with pg_server() as server:
        steps = {
            "agentd": lambda: run_step(
                "pg: agentd nodes",
                py(
                    "queue_pg_nodes.py",
                    "--pg",
                    server,
                    "--nodes",
                    size["pg_nodes"],
                    "--jobs",
                    n,
                    "--concurrency",
                    c,
                ),
            ),
            # The SQLite figure of the same run (its latency part kept short: not used here).
            "sqlite": lambda: run_step(
                "pg: agentd on sqlite",
                py("queue_agentd.py", "--jobs", n, "--concurrency", c, "--latency-jobs", 20, "--rate", rate),
            ),
            "pgqueuer": lambda: run_step(
                "pg: pgqueuer",
                py(
                    "peers/pgqueuer_bench.py",
                    "--pg",
                    server,
                    "--jobs",
                    n,
                    "--concurrency",
                    c,
                    "--latency-jobs",
                    size["latency_jobs"],
                    "--rate",
                    rate,
                    python=peers_py,
                ),
            ),
        }
        for _ in range(size["rounds"]):
            rounds.append({name: step() for name, step in steps.items()})
    return _rows(Row, size, title, shape, rounds)


def _ratio_cell(ratios: list[float]) -> str:
    return f"; per round {min(ratios):.2f} to {max(ratios):.2f}×" if len(ratios) > 1 else ""


def _rows(
    Row: Any, size: dict[str, Any], title: str, shape: str, rounds: list[dict[str, dict[str, Any] | None]]
) -> list[Any]:
    """The rows from each round's results (None: that step failed). A target's ratio is the
    median of the rounds' own ratios: each compares figures of one round, taken minutes apart
    at most on a machine whose speed drifts; best-of figures beside them, with their spread."""
    counts = size["pg_nodes"].split(",")
    runs = {name: [r[name] for r in rounds if r.get(name)] for name in ("agentd", "sqlite", "pgqueuer")}
    pgq = [r["process_only"]["jobs_per_s"] for r in runs["pgqueuer"]]
    theirs = max(pgq) if pgq else None
    peer = f"{_spread(pgq)} (pgqueuer)" if pgq else "failed (pgqueuer)"
    by_count = {count: [r["nodes"][count] for r in runs["agentd"] if count in r["nodes"]] for count in counts}
    rates = {count: [m["jobs_per_s"] for m in found] for count, found in by_count.items()}
    twice = [m for found in by_count.values() for m in found if not m.get("exactly_once", True)]
    warning = (
        f" (**a task ran more than once: {twice[0]['running_events']} starts of "
        f"{twice[0]['tasks_started']} tasks**)"
        if twice
        else ""
    )
    rows = []
    for count in counts:
        label = f"{title}: agentd {count} node{'s' if count != '1' else ''} vs pgqueuer"
        if not rates[count]:
            rows.append(Row(label, "failed", peer))
            continue
        if count != "1":
            rows.append(
                Row(
                    label,
                    _spread(rates[count]) + warning,
                    peer,
                    max(rates[count]) / theirs if theirs else None,
                )
            )
            continue
        ratios = [
            r["agentd"]["nodes"]["1"]["jobs_per_s"] / r["pgqueuer"]["process_only"]["jobs_per_s"]
            for r in rounds
            if r.get("agentd") and r.get("pgqueuer") and "1" in r["agentd"]["nodes"]
        ]
        ratio = statistics.median(ratios) if ratios else None
        met = ratio is not None and ratio >= PG_TARGET
        cell = _spread(rates[count]) + _ratio_cell(ratios) + warning
        rows.append(Row(label, cell, peer, ratio, f"≥ {PG_TARGET:g}× pgqueuer", met))
    last = counts[-1]
    if last != "1" and rates.get("1") and rates[last]:
        # Each run measures every node count back to back: the ratio of each run.
        ratios = [m[last]["jobs_per_s"] / m["1"]["jobs_per_s"] for m in (r["nodes"] for r in runs["agentd"])]
        rows.append(
            Row(
                f"Queue on PostgreSQL, SAQ's shape ({shape}), jobs/s: "
                f"agentd {last} nodes vs 1 node (same run)",
                _spread(rates[last]) + _ratio_cell(ratios),
                f"{_spread(rates['1'])} (agentd, 1 node)",
                statistics.median(ratios),
                f"≥ {NODES_TARGET:g}× one node",
                statistics.median(ratios) >= NODES_TARGET,
            )
        )
    rows.extend(_cost_rows(Row, shape, counts, by_count))
    mine = [r["process_only"]["jobs_per_s"] for r in runs["sqlite"]]
    rows.append(
        Row(
            f"Queue, SAQ's shape ({shape}), jobs/s: agentd on SQLite, 1 node (same run) "
            "vs pgqueuer on PostgreSQL",
            _spread(mine) if mine else "failed",
            peer,
            max(mine) / theirs if mine and theirs else None,
        )
    )
    if runs["pgqueuer"]:
        end_to_end = max(r["throughput"]["jobs_per_s"] for r in runs["pgqueuer"])
        lat = min((r["latency"] for r in runs["pgqueuer"]), key=lambda x: x["p99_ms"])
        rows.append(
            Row(
                f"Queue on PostgreSQL end to end ({size['jobs']:,} no-op jobs, concurrency "
                f"{size['concurrency']}), jobs/s: pgqueuer (reference)",
                "not measured on PostgreSQL",
                f"{_fmt(end_to_end)} (pgqueuer)",
            )
        )
        rows.append(
            Row(
                f"Enqueue-to-start on PostgreSQL at {size['rate']} jobs/s, p50 / p99 ms: "
                "pgqueuer (reference)",
                "not measured on PostgreSQL",
                f"{lat['p50_ms']:.2f} / {lat['p99_ms']:.2f} (pgqueuer)",
            )
        )
    return rows


def _cost_rows(
    Row: Any, shape: str, counts: list[str], by_count: dict[str, list[dict[str, Any]]]
) -> list[Any]:
    """What a task costs, the median of the runs: per claim round (statement time, tasks), and
    the CPU of the nodes and of the server's processes serving them, per task."""
    rows = []
    for count in (counts[0], counts[-1]) if len(counts) > 1 else counts:
        costs = [m["cost"] for m in by_count[count] if "cost" in m]
        if not costs:
            continue

        def median(key: str, costs: list[dict[str, Any]] = costs) -> float:
            return statistics.median(c[key] for c in costs)

        rows.append(
            Row(
                f"Queue on PostgreSQL ({shape}), agentd {count} node{'s' if count != '1' else ''}: "
                "cost (reference; the model in the performance notes)",
                f"claim round {median('statement_ms_per_round'):.2f} ms for "
                f"{median('tasks_per_round'):.1f} tasks; "
                f"{median('writes_per_task'):.2f} writes a task; CPU a task: nodes "
                f"{median('node_cpu_us_per_task'):.0f} µs, server {median('server_cpu_us_per_task'):.0f} µs",
            )
        )
    return rows
