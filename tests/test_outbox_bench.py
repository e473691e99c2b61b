"""bench/outbox.py still runs at a tiny size and makes its run_all rows (figures unchecked)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import run_all

from tests.test_bench_smoke import run_bench


def test_outbox_bench_delivers_every_one_once_and_makes_its_rows(monkeypatch):
    result = run_bench("outbox.py", "--deliveries", 20, "--tasks", 5, "--rounds", 1)
    sent = result["deliveries"]
    assert sent["deliveries"] == sent["verified"] == sent["distinct_ids"] == 20 and sent["per_s"] > 0
    assert set(result["finish"]) == {"0", "1", "10"} and result["finish"]["10"]["samples"] == 5
    monkeypatch.setattr(run_all, "run_step", lambda label, argv: result)
    rate, cost = run_all.outbox_suite({"outbox_deliveries": 20, "outbox_tasks": 5})
    assert "/s" in rate.agentd and "µs" in cost.agentd and "webhooks of its owner" in cost.name
