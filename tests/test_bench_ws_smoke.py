"""The WebSocket and agent-load benchmarks still run, at a tiny size (figures not checked).

``ws_agentd_server.py`` and ``agent_load.py`` need only the project's venv and always run;
the side-by-side ``ws_delivery.py`` also needs ``bench/.venv-peers`` with ``websockets`` (the
peer server and the clients run there) and is skipped without it, saying how to get it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import trio
from trio_websocket import open_websocket_url

from .bench_support import BENCH, ROOT, run_bench

PEERS_PY = BENCH / ".venv-peers" / "bin" / "python"
sys.path.insert(0, str(BENCH))

import run_all
import ws_rows
from ws_common import Child, Histogram, now


def _peers_have_websockets() -> bool:
    if not PEERS_PY.exists():
        return False
    done = subprocess.run([str(PEERS_PY), "-c", "import websockets"], check=False, capture_output=True)
    return done.returncode == 0


def test_histogram_percentiles_are_bucket_upper_edges():
    hist = Histogram()
    for ms in (1.0, 2.0, 3.0, 50.0):
        hist.add(ms / 1000)
    merged = Histogram.from_json(json.loads(json.dumps(hist.to_json())))
    assert merged.count == 4
    assert merged.percentile_ms(0.5) == 3.1 and merged.max_ms() == 50.1


async def test_agentd_server_stamps_events_and_delivers_them_over_ws(tmp_path):
    server = Child(
        [sys.executable, str(BENCH / "ws_agentd_server.py"), "--tasks", "2", "--users", "1"],
        stderr_path=tmp_path / "server.err",
        cwd=ROOT,
    )
    try:
        info = await trio.to_thread.run_sync(server.expect, 60)
        task_id, user, after = info["tasks"][1]
        headers = [(b"Authorization", f"Bearer {info['tokens'][user]}".encode())]
        async with open_websocket_url(info["url"], extra_headers=headers) as ws:
            await ws.send_message(json.dumps({"type": "subscribe", "task_id": task_id, "after": after}))
            await ws.send_message('{"type":"ping"}')
            with trio.fail_after(10):
                while json.loads(await ws.get_message())["type"] != "pong":
                    pass
            start = now() + 0.2
            server.send({"cmd": "emit", "start": start, "seconds": 0.5, "tasks": 2, "rate": 10})
            got = []
            with trio.fail_after(10):
                while len(got) < 5:
                    message = json.loads(await ws.get_message())
                    if message["type"] == "event":
                        got.append(message)
        result = await trio.to_thread.run_sync(server.expect, 30)
        assert result["emitted"] == 10  # 2 tasks x 10/s x 0.5 s
        assert [m["seq"] for m in got] == list(range(after + 1, after + 6))
        assert all(m["task_id"] == task_id and m["data"]["t"] >= m["data"]["due"] >= start for m in got)
    finally:
        await trio.to_thread.run_sync(server.stop, 20)


def test_agent_load_runs_tasks_through_the_slow_fake_model():
    result = run_bench(
        "agent_load.py", "--tasks", 3, "--turns", 2, "--delay", 0.2, "--timeout", 60, "--steps"
    )
    assert result["statuses"] == {"succeeded": 3} and result["model_turns"] == 6
    assert result["lag_overall"]["samples"] > 0 and result["rss_peak_mib"] > 0
    assert result["store_writes_per_turn"] > 0
    steps = result["loop_steps"]  # the instrument saw the loop's batches
    assert result["loop_steps_conversation"]["batches"] <= steps["batches"]
    assert steps["batches"] > 0 and steps["batches_over_10ms"] <= steps["batches"]
    # The README row made of it (the WebSocket steps "failed" here: not run).
    rows = ws_rows.ws_suite(
        {"rounds": 1},
        Row=run_all.Row,
        py=lambda *a: list(map(str, a)),
        run_step=lambda label, argv: result if "agent_load" in argv[0] else None,
    )
    steady, whole = rows[-2:]
    assert "store writes per turn" in steady.agentd and "all waiting on the model" in steady.name
    p99 = result["lag_conversation"]["p99_ms"]
    assert steady.met == (p99 is not None and p99 < 10)
    assert "every workspace ready after" in whole.agentd and "whole run" in whole.name
    assert whole.met == (result["lag_overall"]["p99_ms"] < 10)


@pytest.mark.slow
@pytest.mark.skipif(
    not _peers_have_websockets(),
    reason="bench/.venv-peers without websockets: run bench/run_all.py --only ws once",
)
def test_ws_delivery_side_by_side_and_its_rows():
    result = run_bench(
        "ws_delivery.py",
        *("--size", "smoke", "--scenario", "a,idle", "--seconds", 1.5, "--warmup", 0.5),
        *("--baseline-seconds", 1, "--pinned-peer"),
        timeout=170,
    )
    for system in ("agentd", "websockets", "websockets-pinned"):
        a = result["a"][system]
        assert a["expected"] == 6 * 10 * 1.0 and a["delivered"] > 0 and a["latency"]["p99_ms"] is not None
    for system in ("agentd", "websockets"):
        assert result["idle"][system]["conns"] == 20
    assert "websockets-pinned" not in result["idle"]  # the pinned peer runs scenario a only
    assert result["a"]["agentd"]["server_to_sockets"]["samples"] > 0

    canned = {"a": result["a"], "b": result["a"], "idle": result["idle"]}
    rows = ws_rows.ws_suite(
        {"rounds": 1},
        Row=run_all.Row,
        py=lambda *a: list(map(str, a)),
        run_step=lambda label, argv: canned if "ws_delivery" in argv[0] else None,
    )
    assert len(rows) == 7 and all("failed" not in row.agentd for row in rows[:6])
    assert "in the server p99" in rows[0].agentd
    assert "`websockets` pinned" in rows[1].peer and rows[1].met is None
