"""What a ``TaskSandbox`` (``task_sandbox.py``) makes on the host: the task's cgroup, the
``passwd`` and ``group`` its uid is named in, scratch directories. Blocking: the sandbox runs
each in a worker thread.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

from .base import ToolSettings
from .limits import Cgroup2, TaskCgroup
from .sandbox import SANDBOX_HOME

__all__ = ["new_cgroup", "scratch_for", "scratch_workspace", "write_etc"]

_cgroup_names = itertools.count(1)


def new_cgroup(parent: Cgroup2, settings: ToolSettings) -> TaskCgroup:
    """A new task cgroup under ``parent``, under a name no other sandbox holds."""
    while True:
        try:
            return TaskCgroup(parent, f"sandbox-{os.getpid()}-{next(_cgroup_names)}", settings)
        except FileExistsError:
            continue


def write_etc(owner: tuple[int, int]) -> str:
    """A root-only directory with the host's passwd and group plus a line naming ``owner``
    (programs that look their user up, ssh or Python's getpass, then find one)."""
    uid, gid = owner
    path = tempfile.mkdtemp(prefix="agentd-etc-")
    passwd = f"agentd-sandbox:x:{uid}:{gid}:agentd sandbox:{SANDBOX_HOME}:/bin/bash\n"
    for name, line in (("passwd", passwd), ("group", f"agentd-sandbox:x:{gid}:\n")):
        try:
            with open(os.path.join("/etc", name)) as f:
                host = f.read()
        except OSError:
            host = ""
        with open(os.path.join(path, name), "w") as f:
            f.write(host + ("" if host.endswith("\n") or not host else "\n") + line)
        os.chmod(os.path.join(path, name), 0o644)
    return path


def scratch_workspace(root: Path) -> Path:
    """A fresh directory under ``root`` for ``describe_sandbox``'s trial sandbox."""
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".probe-", dir=root))  # '.': never taken for a task's


def scratch_for(owner: tuple[int, int]) -> str:
    """A fresh directory owned by ``owner``, for the uid probe's command to write in."""
    path = tempfile.mkdtemp(prefix="agentd-probe-")
    os.chown(path, *owner)
    return path
