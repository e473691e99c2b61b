"""bench/outbox.py still runs at a tiny size, on SQLite and on a throwaway PostgreSQL, and makes
its run_all rows (figures unchecked; two senders on one database deliver each row once)."""

from __future__ import annotations

import sys

import pytest

from .bench_support import BENCH, run_bench

sys.path.insert(0, str(BENCH))

import run_all

TINY = ("--deliveries", 20, "--tasks", 5, "--rounds", 1)
SIZE = {"outbox_deliveries": 20, "outbox_tasks": 5, "outbox_pg_tasks": 5}


def test_outbox_bench_delivers_every_one_once_and_makes_its_rows(monkeypatch):
    result = run_bench("outbox.py", *TINY)
    sent = result["deliveries"]
    assert sent["deliveries"] == sent["verified"] == sent["distinct_ids"] == 20 and sent["per_s"] > 0
    assert set(result["finish"]) == {"0", "1", "10"} and result["finish"]["10"]["samples"] == 5
    monkeypatch.setattr(run_all, "run_step", lambda label, argv: result)
    monkeypatch.setattr(run_all, "pg_unavailable", lambda: "not in this test")
    rate, cost, *pg = run_all.outbox_suite(SIZE)
    assert "/s" in rate.agentd and "µs" in cost.agentd and "webhooks of its owner" in cost.name
    assert [row.agentd for row in pg] == ["skipped: not in this test"] * 3


def test_outbox_bench_on_postgresql_delivers_each_row_once_with_two_senders(monkeypatch):
    reason = run_all.pg_unavailable()
    if reason:
        pytest.skip(reason)
    sqlite = run_bench("outbox.py", *TINY)
    pg = run_bench("outbox.py", "--store", "postgres", *TINY)
    assert pg["store"] == "postgres" and pg["deliveries"]["distinct_ids"] == 20
    both = pg["deliveries_2_senders"]
    assert both["requests"] == both["distinct_ids"] == 20
    answers = iter([sqlite, pg])
    monkeypatch.setattr(run_all, "run_step", lambda label, argv: next(answers))
    rows = run_all.outbox_suite(SIZE)
    assert [row.name.endswith("on PostgreSQL") for row in rows[2:4]] == [True, True]
    two = rows[4]
    assert "two senders" in two.name and two.met is True and "20 distinct ids in 20 requests" in two.agentd
