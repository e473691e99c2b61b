"""The task's own uid: handing the workspace to it without ever reaching outside, and killing
what runs as it. Changing owners and signalling another uid need root."""

from __future__ import annotations

import os
import subprocess

import pytest

from daemon.agent.tools import identity
from daemon.agent.tools.identity import claim_slot, count_tasks, own_and_measure, sweep_uid
from daemon.errors import PermanentError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")


@needs_root
def test_the_workspace_is_handed_over_without_following_links_out(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.key").write_text("k")
    shared = tmp_path / "bare-object"
    shared.write_text("x" * 5000)
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "sub" / "file").write_text("y" * 10_000)
    (ws / "link-dir").symlink_to(outside)
    (ws / "sub" / "link-file").symlink_to(outside / "secret.key")
    os.link(shared, ws / "hardlinked")  # as a local clone shares its objects
    owner = (600777, 600777)

    size = own_and_measure(ws, owner)

    for path in (ws, ws / "sub", ws / "sub" / "file", ws / "link-dir", ws / "sub" / "link-file"):
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == owner, path
    for path in (outside, outside / "secret.key", shared):
        assert os.lstat(path).st_uid == 0, path  # nothing outside, nothing shared with it
    assert size >= 10_000 + 5000
    assert own_and_measure(ws, None) == size  # measuring alone changes nothing


@needs_root
def test_sweep_kills_every_process_of_the_uid(tmp_path):
    slot = claim_slot(600_900, 50)
    assert slot is not None
    try:
        procs = [
            subprocess.Popen(
                ["sleep", "300"], user=slot.uid, group=slot.gid, extra_groups=[], start_new_session=True
            )
            for _ in range(3)
        ]
        assert count_tasks(slot.uid) == 3
        assert sweep_uid(slot.uid) >= 3
        for proc in procs:
            assert proc.wait(timeout=5) == -9
        assert count_tasks(slot.uid) == 0
    finally:
        slot.release()


def test_slots_are_distinct_until_released(monkeypatch):
    monkeypatch.setattr(identity, "_foreign", set())
    a = claim_slot(650_000, 2)
    b = claim_slot(650_000, 2)
    try:
        assert a is not None and b is not None and {a.uid, b.uid} == {650_000, 650_001}
        assert claim_slot(650_000, 2) is None  # all taken
        a.release()
        a.release()  # idempotent
        c = claim_slot(650_000, 2)
        assert c is not None and c.uid == 650_000
        c.release()
    finally:
        b.release()


def test_uids_running_other_processes_are_never_used(monkeypatch):
    monkeypatch.setattr(identity, "_foreign", {650_100})
    slot = claim_slot(650_100, 2)
    assert slot is not None and slot.uid == 650_101
    slot.release()


def test_a_tree_too_deep_to_walk_is_refused_clearly(tmp_path):
    ws = tmp_path / "ws"
    deep = ws
    for _ in range(identity.MAX_DEPTH + 5):
        deep = deep / "d"
    deep.mkdir(parents=True)
    with pytest.raises(PermanentError) as info:
        own_and_measure(ws, None)
    assert info.value.code == "workspace_too_deep"
    assert own_and_measure(ws / ("d/" * 10).rstrip("/"), None) > 0  # still fine below the cap
