"""The benchmarks still run: each agentd-side benchmark at a tiny size, through its own CLI.

The figures are not checked (a CI machine's speed says nothing); what is checked is that every
script runs end to end and prints the JSON that ``bench/run_all.py`` reads, and that the table
lands between the README markers and nowhere else. The peers (SAQ, arq, DBOS) live in their own
venv and are not run here.
"""

from __future__ import annotations

import shutil
import sys

import pytest

from .bench_support import BENCH, run_bench

sys.path.insert(0, str(BENCH))

import run_all


def test_queue_gives_throughput_process_only_and_latency():
    result = run_bench("queue_agentd.py", "--jobs", 20, "--latency-jobs", 10, "--rate", 500)
    assert result["throughput"]["jobs"] == 20 and result["throughput"]["jobs_per_s"] > 0
    assert result["process_only"]["jobs"] == 20
    assert result["latency"]["p99_ms"] >= result["latency"]["p50_ms"] > 0


def test_durable_steps_run_one_by_one_and_concurrently():
    result = run_bench("durable_steps.py", "--tasks", 8, "--concurrency", 4)
    assert result["one_by_one"]["tasks"] == 8 and result["concurrent"]["tasks"] == 8


def test_event_appends_compare_group_commit_with_one_commit_per_event(monkeypatch):
    result = run_bench(
        "event_appends.py",
        "--events",
        200,
        "--writers",
        10,
        "--single-events",
        50,
        "--batched-per-call",
        5,
        "--synchronous",
        "FULL",
    )
    full = result["runs"]["FULL"]
    assert full["group"]["events"] == 200 and full["group"]["commits"] >= 1
    assert full["group_batched"]["events_per_call"] == 5
    assert full["single"]["events"] == 50
    assert result["trio_floor"]["tasks"] == 10 and result["trio_floor"]["cpu_us_per_call"] > 0
    # The table's row says what one event per awaited call costs at the least, from this run.
    monkeypatch.setattr(run_all, "run_step", lambda label, argv: result)
    group_row, batched_row = run_all.appends_suite(
        {"rounds": 1, "events": 0, "writers": 0, "single_events": 0}
    )
    floor = result["trio_floor"]["cpu_us_per_call"] + full["group_batched"]["cpu_us_per_event"]
    assert f"floor {floor:.1f} µs" in group_row.agentd and "park/resume" in group_row.agentd
    assert "5 events per call" in batched_row.name


def test_delivery_cost_times_both_ways_and_makes_its_row(monkeypatch):
    result = run_bench("delivery_cost.py", "--deliveries", 2, "--files", 2)
    new, old = result["sandboxed"], result["host_git"]
    assert result["deliveries"] == 2 and new["total"]["p99_ms"] >= new["total"]["p50_ms"] > 0
    assert set(new) == {"total", "enter", "commit_and_push", "exit"} and old["p50_ms"] > 0
    difference = new["total"]["p50_ms"] - old["p50_ms"]
    assert result["difference"]["p50_ms"] == pytest.approx(difference, abs=0.02)
    monkeypatch.setattr(run_all, "run_step", lambda label, argv: result)
    (row,) = run_all.delivery_suite({"deliveries": 2})
    assert row.target == "+≤ 50 ms" and row.met == (result["difference"]["p50_ms"] <= 50)
    assert f"{new['total']['p50_ms']:.1f} / " in row.agentd and "host git" in row.peer


def test_cache_share_runs_a_task_and_makes_its_row(monkeypatch):
    result = run_bench("cache_share.py", "--quick")
    assert result["status"] == "succeeded" and result["turns"] == 8
    assert 0 < result["read_share_turns_2_on"] < 1 and result["cost_usd"] > 0
    assert result["with_clearing"]["status"] == "succeeded"
    assert result["context_management"] == "off" and result["with_clearing"]["context_management"] == "client"
    monkeypatch.setattr(run_all, "run_step", lambda label, argv: result)
    without, with_clearing = run_all.cache_suite({})
    for row, run in ((without, result), (with_clearing, result["with_clearing"])):
        assert row.target == "≥ 90%" and row.met == (run["read_share_turns_2_on"] >= 0.9)
        assert f"${run['cost_usd']:.4f} per task" in row.agentd and "context clearing" in row.name


@pytest.mark.slow
def test_restart_ready_builds_the_db_and_times_both_starts():
    result = run_bench("restart_ready.py", "--tasks", 20, "--events", 400, "--repeats", 1)
    assert result["db"] == {**result["db"], "tasks": 20, "events": 400}
    assert result["full"]["in_process_s"] > 0 and result["full"]["serve_s"] > 0


@pytest.mark.slow
def test_memory_measures_idle_daemons_and_running_tasks_and_makes_its_rows(monkeypatch):
    result = run_bench("memory.py", "--quick")
    for idle in ("idle_scripted", "idle_claude", "idle_claude_whole_sdk"):
        assert result[idle]["mib"] >= result[idle]["min_mib"] > 10, idle
    # The whole SDK (imported at the interpreter's start, as before) takes more than the lean import.
    assert result["idle_claude_whole_sdk"]["mib"] > result["idle_claude"]["mib"]
    running = result["running"]
    assert running["tasks"] == 2 and running["processes"] > 2  # the daemon and its sandboxes
    assert running["tree"]["mib"] > running["daemon_mib"] > 10 and running["tree_pss_mib"] > 0
    monkeypatch.setattr(run_all, "run_step", lambda label, argv: result)
    lean_row, scripted_row, running_row = run_all.memory_suite({"memory_tasks": 2, "memory_settle_s": 0.5})
    assert lean_row.target == "< 100 MiB" and lean_row.met == (result["idle_claude"]["mib"] < 100)
    assert f"{result['idle_claude_whole_sdk']['mib']} MiB (whole SDK)" == lean_row.peer
    assert f"{result['idle_scripted']['mib']} MiB" in scripted_row.agentd
    assert "2 running tasks" in running_row.name and f"{running['tree']['mib']} MiB" in running_row.agentd


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_redis_server_answers_and_is_stopped():
    import socket

    from redis_server import redis_server

    with redis_server() as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(16).startswith(b"+PONG")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


def test_table_replaces_only_the_marked_readme_block(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(f"# agentd\nbefore\n{run_all.BEGIN}\nold table\n{run_all.END}\nafter\n")
    monkeypatch.setattr(run_all, "README", readme)
    rows = [run_all.Row("Queue, jobs/s", "2,000", "600 (SAQ)", 3.3, "≥ 2× SAQ", True), *run_all.PENDING]
    block = run_all.render(rows, "quick", 1.0, (0.21, 0.35))
    run_all.write_readme(block)
    text = readme.read_text()
    assert text.startswith("# agentd\nbefore\n") and text.endswith(f"{run_all.END}\nafter\n")
    assert "old table" not in text and "| Queue, jobs/s | 2,000 | 600 (SAQ) | 3.30× |" in text
    assert text.count("not run yet") == len(run_all.PENDING)
    assert "0.21 s before the run, 0.35 s after" in text


def test_readme_without_markers_is_refused(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text("# agentd\n")
    monkeypatch.setattr(run_all, "README", readme)
    with pytest.raises(SystemExit):
        run_all.write_readme("table")
    assert readme.read_text() == "# agentd\n"
