"""Per-task limits of the tool sandbox: a delegated cgroup v2 where there is one, rlimits otherwise.

What holds where (``ToolSettings`` names the values):

- **cgroup v2** (the daemon's own cgroup is writable and offers ``pids`` and ``memory``: systemd
  with ``Delegate=yes``): the daemon moves itself into a ``daemon`` leaf of its cgroup (a cgroup
  with processes cannot hand controllers to children), and each task gets a sibling child with
  ``pids.max`` (every process and thread of the task, whatever its uid) and ``memory.max`` (the
  task's whole memory, page cache and its /tmp included; no swap). A process joins the task's
  cgroup before it execs anything (``cgroup_wrapper``), so nothing of the task runs outside it.
  ``pids.events`` says when the limit refused a fork.
- **rlimits** otherwise, set by util-linux ``prlimit`` in front of the command (no
  ``preexec_fn`` in a threaded daemon): ``RLIMIT_NPROC`` counts the processes of a real uid, so
  it is a per-task limit only when the task has a uid of its own (``identity.py``, the daemon
  root); as the daemon's user it counts every process of that user and is set above what the
  user runs when the task starts. ``RLIMIT_DATA`` bounds each process's memory (not the task's
  sum).
- Both: ``RLIMIT_CPU`` (seconds of CPU per process: SIGXCPU, then SIGKILL), ``RLIMIT_FSIZE``
  (bytes per file: SIGXFSZ), no core files, and bubblewrap's ``--size`` on ``/tmp``.

Probing blocks on /proc and /sys: call ``find_cgroup`` from a worker thread.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from .base import ToolSettings

__all__ = ["Cgroup2", "TaskCgroup", "cgroup_wrapper", "find_cgroup", "rlimit_prefix"]

_DAEMON_LEAF = "daemon"
_NEEDED = ("pids", "memory")


@dataclass(frozen=True)
class Cgroup2:
    """A delegated cgroup v2 directory whose children get ``pids`` and ``memory``."""

    base: Path


def find_cgroup(proc_self: Path = Path("/proc/self")) -> tuple[Cgroup2 | None, str]:
    """The delegated cgroup v2 subtree tasks can be placed in, set up for them, or None and why.

    Set up means: this process (and whatever else ran in its cgroup) moved into a ``daemon``
    leaf, and ``+pids +memory`` written to the cgroup's ``cgroup.subtree_control``. Idempotent:
    a process already in its ``daemon`` leaf finds the same base again.
    """
    mount = _cgroup2_mount(proc_self / "mountinfo")
    if mount is None:
        return None, "no cgroup v2 file system is mounted"
    own = _own_cgroup(proc_self / "cgroup")
    if own is None:
        return None, "this process is in no cgroup v2 hierarchy"
    here = mount / own.lstrip("/")
    if here.name == _DAEMON_LEAF and _enabled(here.parent):
        return Cgroup2(here.parent), f"cgroup v2 at {here.parent}"
    controllers = _read(here / "cgroup.controllers").split()
    missing = [c for c in _NEEDED if c not in controllers]
    if missing:
        return None, (
            f"cgroup v2 at {here} offers no {' or '.join(missing)} controller "
            "(not delegated: systemd's Delegate=yes gives them)"
        )
    if not os.access(here / "cgroup.subtree_control", os.W_OK) or not os.access(here, os.W_OK):
        return None, f"cgroup v2 at {here} is not writable by this process (not delegated)"
    if not _enabled(here):
        try:
            leaf = here / _DAEMON_LEAF
            leaf.mkdir(exist_ok=True)
            for pid in _read(here / "cgroup.procs").split():
                try:
                    (leaf / "cgroup.procs").write_text(pid)
                except ProcessLookupError:
                    pass  # exited meanwhile
            (here / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in _NEEDED))
        except OSError as exc:
            return None, f"could not set up cgroup v2 at {here}: {exc}"
    return Cgroup2(here), f"cgroup v2 at {here}"


def _cgroup2_mount(mountinfo: Path) -> Path | None:
    for line in _read(mountinfo).splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split()[4])
    return None


def _own_cgroup(cgroup_file: Path) -> str | None:
    for line in _read(cgroup_file).splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def _enabled(path: Path) -> bool:
    active = _read(path / "cgroup.subtree_control").split()
    return all(c in active for c in _NEEDED)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


class TaskCgroup:
    """One task's child cgroup: its limits, its members, its pids-limit counter.

    Blocking (cgroupfs writes, the kill loop): call from a worker thread.
    """

    def __init__(self, parent: Cgroup2, name: str, settings: ToolSettings) -> None:
        self.path = parent.base / name
        self.path.mkdir()
        try:
            (self.path / "pids.max").write_text(str(settings.max_processes))
            (self.path / "memory.max").write_text(str(settings.memory_bytes))
            if (self.path / "memory.swap.max").exists():
                (self.path / "memory.swap.max").write_text("0")
        except OSError:
            self.remove()
            raise

    def pids_limit_hit(self) -> bool:
        """Whether ``pids.max`` refused a fork since the cgroup was made."""
        for line in _read(self.path / "pids.events").splitlines():
            key, _, value = line.partition(" ")
            if key == "max":
                return int(value or 0) > 0
        return False

    def kill(self, deadline_s: float = 5.0) -> None:
        """Kill every process in the cgroup and the cgroups the task made under it
        (``cgroup.kill`` is recursive; before Linux 5.14, freeze and SIGKILL each of the top's).
        Its own ``cgroup.procs`` may be empty while a child cgroup holds processes: the
        subtree is empty when ``cgroup.events`` says ``populated 0``."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            pids = [int(p) for p in _read(self.path / "cgroup.procs").split() if int(p) > 0]
            if not pids and "populated 1" not in _read(self.path / "cgroup.events"):
                return
            try:
                (self.path / "cgroup.kill").write_text("1")
            except FileNotFoundError:  # before Linux 5.14
                _write_quiet(self.path / "cgroup.freeze", "1")
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                _write_quiet(self.path / "cgroup.freeze", "0")
            except OSError:
                return  # the cgroup is gone
            time.sleep(0.005)

    def remove(self) -> None:
        """Remove the (emptied) cgroup, the ones the task made under it first; a few tries
        while the killed processes are reaped."""
        children = sorted(
            (p for p in self.path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        )
        for child in children:
            try:
                child.rmdir()
            except OSError:
                pass
        for _ in range(200):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.005)


def _write_quiet(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError:
        pass


def cgroup_wrapper(sh: str, cgroup: Path) -> list[str]:
    """A prefix that puts the process in ``cgroup`` and then execs the rest of the command
    line; when the move fails, nothing runs (the shell exits with the error)."""
    return [sh, "-c", 'echo 0 > "$0" && exec "$@"', str(cgroup / "cgroup.procs")]


def rlimit_prefix(prlimit: str, settings: ToolSettings, *, nproc: int | None, memory: bool) -> list[str]:
    """``prlimit`` with the task's limits, then ``--`` (the command follows).

    ``nproc``: the ``RLIMIT_NPROC`` value (None: not set); ``memory``: set ``RLIMIT_DATA``
    (when no cgroup bounds the task's memory).
    """
    args = [prlimit]
    if nproc is not None:
        args.append(f"--nproc={nproc}")
    if memory:
        args.append(f"--data={settings.memory_bytes}")
    # CPU: SIGXCPU at the limit (a message a program or the model can act on), SIGKILL if a
    # process ignores it for 5 s more.
    cpu = settings.cpu_time_s
    args += [f"--cpu={cpu}:{cpu + 5}", f"--fsize={settings.file_size_bytes}", "--core=0", "--"]
    return args


def tool_paths() -> dict[str, str | None]:
    """Where ``prlimit``, ``setpriv`` and ``sh`` are (None: not installed)."""
    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return {name: shutil.which(name, path=path) for name in ("prlimit", "setpriv", "sh")}
