"""The cgroup v2 side of the limits, on a file tree laid out like a delegated cgroup.

This host's cgroup v2 has no controllers (cgroup v1 holds them), as in CI, so the kernel's part
(the limits themselves) is not exercised here; what agentd writes and reads is.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trio

from daemon.agent.tools import TaskSandbox, ToolSettings, task_sandbox
from daemon.agent.tools.limits import Cgroup2, TaskCgroup, cgroup_wrapper, find_cgroup, rlimit_prefix

SERVICE = "system.slice/agentd.service"


def fake_proc(tmp_path: Path, own: str, *, fstype: str = "cgroup2") -> Path:
    """A /proc/self with the cgroup2 mount at ``tmp_path/cg`` and the process in ``own``."""
    proc = tmp_path / "proc"
    proc.mkdir(exist_ok=True)
    (proc / "mountinfo").write_text(
        "22 1 0:21 / /proc rw - proc proc rw\n"
        f"30 22 0:26 / {tmp_path / 'cg'} rw,nosuid - {fstype} cgroup2 rw,nsdelegate\n"
    )
    (proc / "cgroup").write_text(f"0::/{own}\n")
    return proc


def fake_cgroup(
    path: Path, controllers: str = "cpu io memory pids", procs: str = "4242\n", enabled: str = ""
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.controllers").write_text(controllers + "\n")
    (path / "cgroup.subtree_control").write_text(enabled)
    (path / "cgroup.procs").write_text(procs)
    return path


def test_a_delegated_cgroup_is_set_up_for_tasks(tmp_path):
    service = fake_cgroup(tmp_path / "cg" / SERVICE)
    found, reason = find_cgroup(fake_proc(tmp_path, SERVICE))
    assert found == Cgroup2(service) and str(service) in reason
    # The daemon moved into a leaf, controllers handed down to the children.
    assert (service / "daemon" / "cgroup.procs").read_text() == "4242"
    assert (service / "cgroup.subtree_control").read_text() == "+pids +memory"


def test_a_daemon_already_in_its_leaf_finds_the_same_base(tmp_path):
    service = fake_cgroup(tmp_path / "cg" / SERVICE, enabled="memory pids\n")
    fake_cgroup(service / "daemon", controllers="memory pids")
    found, _ = find_cgroup(fake_proc(tmp_path, f"{SERVICE}/daemon"))
    assert found == Cgroup2(service)


@pytest.mark.parametrize(
    "controllers, why", [("cpu io", "no pids or memory controller"), ("cpu memory", "no pids controller")]
)
def test_without_the_controllers_rlimits_are_used_and_the_reason_given(tmp_path, controllers, why):
    fake_cgroup(tmp_path / "cg" / SERVICE, controllers=controllers)
    found, reason = find_cgroup(fake_proc(tmp_path, SERVICE))
    assert found is None and why in reason and "Delegate=yes" in reason


def test_without_cgroup2_rlimits_are_used(tmp_path):
    found, reason = find_cgroup(fake_proc(tmp_path, SERVICE, fstype="cgroup"))
    assert found is None and reason == "no cgroup v2 file system is mounted"


def test_a_task_cgroup_gets_its_limits_and_reports_the_pids_limit(tmp_path):
    base = Cgroup2(fake_cgroup(tmp_path / "cg" / SERVICE))
    cgroup = TaskCgroup(base, "sandbox-1", ToolSettings(max_processes=64, memory_bytes=256 << 20))
    assert (cgroup.path / "pids.max").read_text() == "64"
    assert (cgroup.path / "memory.max").read_text() == str(256 << 20)
    (cgroup.path / "pids.events").write_text("max 0\n")
    assert not cgroup.pids_limit_hit()
    (cgroup.path / "pids.events").write_text("max 17\n")
    assert cgroup.pids_limit_hit()


def test_the_wrapper_joins_the_cgroup_before_running_anything(tmp_path):
    cgroup = tmp_path / "task"
    cgroup.mkdir()
    ran = subprocess.run(
        [*cgroup_wrapper("/bin/sh", cgroup), "echo", "ran"], capture_output=True, text=True, check=False
    )
    assert ran.stdout == "ran\n" and (cgroup / "cgroup.procs").read_text() == "0\n"
    # A cgroup it cannot join: nothing runs.
    gone = subprocess.run(
        [*cgroup_wrapper("/bin/sh", tmp_path / "gone"), "echo", "ran"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert gone.returncode != 0 and gone.stdout == ""


def test_rlimits_prefix():
    s = ToolSettings(max_processes=100, memory_bytes=128 << 20, cpu_time_s=30, file_size_bytes=10 << 20)
    assert rlimit_prefix("/usr/bin/prlimit", s, nproc=100, memory=True) == [
        "/usr/bin/prlimit",
        "--nproc=100",
        f"--data={128 << 20}",
        "--cpu=30:35",
        f"--fsize={10 << 20}",
        "--core=0",
        "--",
    ]
    # Under a cgroup: memory is the cgroup's; no NPROC without a uid of the task's own.
    assert rlimit_prefix("prlimit", s, nproc=None, memory=False) == [
        "prlimit",
        "--cpu=30:35",
        f"--fsize={10 << 20}",
        "--core=0",
        "--",
    ]


async def test_a_task_sandbox_under_cgroup_v2_places_its_commands_in_its_cgroup(tmp_path, monkeypatch):
    base = fake_cgroup(tmp_path / "cg" / SERVICE)
    host = await task_sandbox.host_limits()
    monkeypatch.setattr(
        task_sandbox,
        "_host",
        task_sandbox.HostLimits(
            Cgroup2(base), "cgroup v2 (test)", host.prlimit, host.setpriv, host.sh, host.root
        ),
    )
    ws = tmp_path / "ws"
    ws.mkdir()
    async with TaskSandbox(ws, ToolSettings(sandbox="off", max_processes=64)) as box:
        [cgroup] = [p for p in base.iterdir() if p.name.startswith("sandbox-")]
        assert (cgroup / "pids.max").read_text() == "64"
        argv, options = box.command(["sh", "-c", "echo ran"])
        assert argv[:4] == cgroup_wrapper(host.sh, cgroup)
        assert not any(a.startswith(("--data=", "--nproc=")) for a in argv)
        done = await trio.run_process(argv, capture_stdout=True, **options)
        assert done.stdout == b"ran\n" and (cgroup / "cgroup.procs").read_text() == "0\n"
        (cgroup / "cgroup.procs").write_text("")  # the fake has no kernel to empty it
        (cgroup / "pids.events").write_text("max 1\n")
        error = await box.limit_reached()
        assert error is not None and error.code == "pids_limit"
        for file in cgroup.iterdir():  # what the kernel's cgroupfs would not need
            file.unlink()
    assert not cgroup.exists()
