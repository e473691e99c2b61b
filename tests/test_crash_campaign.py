"""The crash campaign in its reduced size (the full run is bench/crash_campaign.py)."""

from __future__ import annotations

import pytest

from .crash_campaign import run_campaign

pytestmark = pytest.mark.slow


def test_tasks_survive_sigkill_at_every_kind_of_point(tmp_path):
    result = run_campaign(tmp_path, tasks=6, rounds=6, seed=7)
    assert result.problems == []
    assert result.kills >= 4
    assert len(result.kill_points) >= 3
