"""``TaskSandbox``: one task's confinement (sandbox, identity, limits) for its tools and its git.

The pieces: bubblewrap (``sandbox.py``), a uid of the task's own when the daemon is root
(``identity.py``), limits from a delegated cgroup v2 or rlimits (``limits.py``) and whether the
task hit them (``limit_checks.py``). What runs as whom, and which limit holds where, is said in
those modules and in the README. What it makes on the host (its cgroup, its ``/etc`` files,
scratch directories): ``task_sandbox_fs.py``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trio

from daemon.errors import PermanentError, TransientError
from daemon.git.process import ProcessOptions

from .base import ToolSettings
from .identity import Slot, claim_slot, count_tasks, own_and_measure, sweep_uid
from .lifeline import lifeline_argv, lifeline_fd
from .limit_checks import LimitChecks
from .limits import Cgroup2, TaskCgroup, cgroup_wrapper, find_cgroup, rlimit_prefix, tool_paths
from .procs import kill_sandboxes
from .sandbox import (
    SANDBOX_HOME,
    bwrap_argv,
    probe_sandbox,
    proxy_argv,
    proxy_env,
    run_probe_command,
    setpriv_argv,
    shell_env,
)
from .task_sandbox_fs import new_cgroup, scratch_for, scratch_workspace, write_etc

__all__ = ["HostLimits", "TaskSandbox", "describe_sandbox", "host_limits"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostLimits:
    """What this host offers for limits and identity; probed once per process."""

    cgroup: Cgroup2 | None
    cgroup_reason: str
    prlimit: str | None
    setpriv: str | None
    sh: str | None
    root: bool


_host: HostLimits | None = None
# Whether bwrap + setpriv to a task uid works here: None until the first task that wants it.
_identity: tuple[bool, str] | None = None
_described = False


async def host_limits() -> HostLimits:
    """This host's cgroup v2 delegation and tools, probed once (in a worker thread)."""
    global _host
    if _host is None:
        _host = await trio.to_thread.run_sync(_probe_host)
    return _host


def _probe_host() -> HostLimits:
    cgroup, reason = find_cgroup()
    paths = tool_paths()
    return HostLimits(cgroup, reason, paths["prlimit"], paths["setpriv"], paths["sh"], os.geteuid() == 0)


class TaskSandbox(LimitChecks):
    """One task's confinement: sandbox, identity and limits, for its tools and its git.

    ``async with TaskSandbox(workspace, settings) as box``: on entry bubblewrap is probed
    (``PermanentError`` ``sandbox_unavailable`` when ``sandbox="required"`` and it is not
    usable), a uid is claimed when the daemon is root (``TransientError`` ``sandbox_busy``
    when the range is exhausted) and the workspace given to it, and the task's cgroup made
    where cgroup v2 is delegated. ``box.command(argv)`` then says how to start any process of
    the task, in a process group of its own that is killed with SIGKILL to stop it
    (``lifeline.py``). On exit every process left of that uid or cgroup, and every bwrap set up
    for the workspace (``procs.kill_sandboxes``), is killed and the uid released.

    Attributes: ``sandboxed`` (bubblewrap in use), ``owner`` ((uid, gid) the processes run as,
    None: the daemon's own), ``workspace`` (its real path, once entered).

    Cancellation: entry and exit run their blocking parts in worker threads; a cancelled entry
    undoes what it did, exit is shielded.
    """

    def __init__(self, workspace: Path, settings: ToolSettings = ToolSettings()) -> None:
        # Resolved to its real path on entry (a file system call: in a worker thread).
        self.workspace = Path(os.path.abspath(workspace))
        self.settings = settings
        self.sandboxed = False
        self.owner: tuple[int, int] | None = None
        self._bwrap: str | None = None
        self._host: HostLimits | None = None
        self._slot: Slot | None = None
        self._etc: str | None = None  # root-only dir with the sandbox's passwd and group
        self._home: str | None = None  # HOME of unsandboxed commands, outside the workspace
        self._cgroup: TaskCgroup | None = None
        self._nproc: int | None = None
        self._hit: PermanentError | None = None
        self._ran = False  # command() was called: there may be processes to sweep at exit
        self._lifeline = False  # command() puts the lifeline shell in front of bwrap
        #: The egress proxy's socket that sandboxed commands reach while set (``command``).
        self.proxy: Path | None = None

    async def __aenter__(self) -> TaskSandbox:
        try:
            await self._setup()
        except BaseException:
            await self._teardown()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._teardown()

    def command(self, argv: list[str], *, proxy: Path | None = None) -> tuple[list[str], ProcessOptions]:
        """The full command line for ``argv`` and the keyword options to start it with
        (``trio.run_process``/``open_process``: ``env``, ``cwd``, and ``pass_fds`` under
        bubblewrap: the lifeline, ``lifeline.py``). Start it in a process group of its own
        (``start_new_session`` or ``process_group=0``) and stop it by SIGKILL to that group:
        bwrap killed alone, or sent a signal its sandbox's pid 1 may ignore, can leave that
        pid 1 behind.

        Under bubblewrap: the limits' prefix, bwrap with the workspace bound read-write at its
        own path (the working directory) and, with an ``owner``, the switch to it. Without
        bubblewrap (``sandbox="off"``, or ``auto`` where it is unusable) ``argv`` runs
        unconfined but still with the minimal environment and the limits.

        ``proxy`` (or, when None, ``self.proxy``): the egress proxy's unix socket, bound into the
        sandbox with a bridge to it in front of ``argv`` and ``HTTP(S)_PROXY`` set; without one
        the sandbox has no network at all. Unconfined commands get no proxy: they have the host's.
        """
        proxy = proxy or self.proxy
        host = self._host
        if host is None:
            raise RuntimeError("TaskSandbox.command() outside `async with`")
        self._ran = True
        s = self.settings
        prefix: list[str] = []
        if self._cgroup is not None and host.sh is not None:
            prefix += cgroup_wrapper(host.sh, self._cgroup.path)
        if host.prlimit is not None:
            nproc = s.max_processes if self.owner is not None else self._nproc
            prefix += rlimit_prefix(host.prlimit, s, nproc=nproc, memory=self._cgroup is None)
        if not self.sandboxed:
            return [*prefix, *argv], {"env": shell_env(self._home or "/"), "cwd": self.workspace}
        assert self._bwrap is not None
        etc = Path(self._etc) if self._etc is not None and self.owner is not None else None
        full = [
            *prefix,
            *bwrap_argv(
                self._bwrap,
                self.workspace,
                tmp_bytes=s.tmp_bytes,
                owner=self.owner,
                etc_dir=etc,
                proxy_socket=proxy,
            ),
        ]
        if self.owner is not None:
            assert host.setpriv is not None
            full += setpriv_argv(host.setpriv, self.owner)
        options: ProcessOptions = {"env": shell_env(SANDBOX_HOME), "cwd": self.workspace}
        if proxy is not None:
            full += proxy_argv()
            options["env"].update(proxy_env())
        full += argv
        if (guarded := lifeline_argv(full)) is not None:  # dies with the daemon's process
            full = guarded
            options["pass_fds"] = (lifeline_fd(),)
            self._lifeline = True
        return full, options

    async def workspace_usage(self) -> int:
        """Bytes the workspace holds; with an ``owner``, files the daemon wrote there (the
        editor's) are given to it on the way. Cancellation: the walk completes first."""
        return await trio.to_thread.run_sync(own_and_measure, self.workspace, self.owner)

    async def _setup(self) -> None:
        s = self.settings
        self.workspace = Path(await trio.to_thread.run_sync(os.path.realpath, self.workspace))
        if s.sandbox != "off":
            probe = await probe_sandbox()
            if probe.usable:
                self.sandboxed, self._bwrap = True, probe.bwrap
            elif s.sandbox == "required":
                raise PermanentError(
                    'commands must run in the bubblewrap sandbox (sandbox = "required") but it '
                    f"is not usable on this host: {probe.reason}. Install bubblewrap, allow "
                    'unprivileged user namespaces, or set sandbox to "auto" or "off".',
                    code="sandbox_unavailable",
                )
        self._host = host = await host_limits()
        if self.sandboxed and host.root and host.setpriv is not None and s.uid_count > 0:
            await self._claim_identity()
        if self.sandboxed and host.root and self.owner is None:
            # Without a uid of its own, the task would be root inside a user namespace mapped
            # onto the host's root: files it makes are root's, and what procfs lets root do
            # (sysctls) is open to it. Fail closed.
            raise PermanentError(
                "the daemon runs as root but tasks cannot get a uid of their own "
                f"({_identity_reason(s, host)}); refusing to run a task as root. Give them a "
                "uid range (sandbox_uid_base, sandbox_uid_count > 0), install setpriv "
                "(util-linux), or run the daemon as an unprivileged user.",
                code="sandbox_unavailable",
            )
        if host.cgroup is not None and host.sh is not None:
            self._cgroup = await trio.to_thread.run_sync(new_cgroup, host.cgroup, s)
        elif self.owner is None and not host.root:
            # NPROC as the daemon's user counts all its processes: allow this many more.
            self._nproc = s.max_processes + await trio.to_thread.run_sync(count_tasks, os.getuid())
        if not self.sandboxed:
            self._home = await trio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="agentd-home-"))
        _describe_once(self)

    async def _claim_identity(self) -> None:
        global _identity
        s = self.settings
        if _identity is not None and not _identity[0]:
            return
        slot = await trio.to_thread.run_sync(claim_slot, s.uid_base, s.uid_count)
        if slot is None:
            raise TransientError(
                f"every sandbox uid ({s.uid_base}..{s.uid_base + s.uid_count - 1}) is in use; "
                "the task is tried again later (raise sandbox_uid_count to run more at once)",
                code="sandbox_busy",
            )
        self._slot = slot
        owner = (slot.uid, slot.gid)
        self._etc = await trio.to_thread.run_sync(write_etc, owner)
        if _identity is None:
            probed = await self._try_identity(owner)
            if not probed[0]:
                log.warning("sandbox identity unavailable: %s", probed[1])
                self._slot = None
                slot.release()
                if "did not finish" not in probed[1]:  # a slow host is asked again next time
                    _identity = probed
                return
            _identity = probed
        await trio.to_thread.run_sync(own_and_measure, self.workspace, owner)
        self.owner = owner

    async def _try_identity(self, owner: tuple[int, int]) -> tuple[bool, str]:
        """Whether a command runs the way tasks will, as ``owner``, and its file is owner's."""
        scratch = await trio.to_thread.run_sync(scratch_for, owner)
        try:
            assert self._bwrap is not None and self._host is not None
            assert self._host.setpriv is not None and self._etc is not None
            argv = [
                *bwrap_argv(
                    self._bwrap, Path(scratch), tmp_bytes=1 << 20, owner=owner, etc_dir=Path(self._etc)
                ),
                *setpriv_argv(self._host.setpriv, owner),
                "bash",
                "-c",
                "touch ok",
            ]
            done = await run_probe_command(argv, cwd=scratch)
            if done is None:
                return False, "bwrap + setpriv did not finish within 10 s"
            made = await trio.to_thread.run_sync(os.lstat, os.path.join(scratch, "ok"))
            if done.returncode == 0 and made.st_uid == owner[0]:
                return True, f"uid {owner[0]}"
            err = done.stderr.decode("utf-8", errors="replace").strip()
            return False, f"bwrap + setpriv failed (exit {done.returncode}): {err or '-'}"
        except OSError as exc:
            return False, f"bwrap + setpriv failed: {exc}"
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(shutil.rmtree, scratch, True)

    async def _teardown(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._release)

    def _release(self) -> None:
        cgroup, self._cgroup = self._cgroup, None
        if cgroup is not None:
            cgroup.kill()
            cgroup.remove()
        if self.sandboxed and self._ran:
            # bwrap's own processes run as the daemon's user (or root), in no task cgroup where
            # none is delegated: one whose monitor was killed alone mid-start waits for ever.
            kill_sandboxes(str(self.workspace))
        slot, self._slot = self._slot, None
        if slot is not None:
            if self.owner is not None and self._ran:
                sweep_uid(slot.uid)
            slot.release()
        for attr in ("_etc", "_home"):
            path = getattr(self, attr)
            setattr(self, attr, None)
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)


async def describe_sandbox(settings: ToolSettings, scratch_root: Path) -> None:
    """Find out now what confinement tasks get on this host, and log it (one line: sandbox,
    identity, limits), as the first task would otherwise. ``agentd serve`` runs it in the
    background once serving. A failure is logged, never raised (the first task meets it
    again). Cancellation: the sandbox is left and the scratch workspace removed."""
    path = await trio.to_thread.run_sync(scratch_workspace, Path(scratch_root))
    try:
        async with TaskSandbox(path, settings):
            pass
    except Exception as exc:  # noqa: BLE001 - logged, never raised: the first task meets it again
        log.warning("tool sandbox: %s", exc)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, path, True)


def _identity_reason(settings: ToolSettings, host: HostLimits) -> str:
    if settings.uid_count <= 0:
        return "sandbox_uid_count is 0"
    if host.setpriv is None:
        return "setpriv is not installed"
    if _identity is not None and not _identity[0]:
        return _identity[1]
    return "the uid probe did not succeed"


def _describe_once(box: TaskSandbox) -> None:
    """Log, once per process, which sandbox, identity and limits are in force."""
    global _described
    if _described:
        return
    _described = True
    host = box._host
    assert host is not None
    sandbox = "bubblewrap" if box.sandboxed else "none (commands run unconfined)"
    if box.owner is not None:
        who = f"a uid of its own per task (from {box.settings.uid_base})"
    else:
        who = f"the daemon's user (uid {os.getuid()})"
    if host.cgroup is not None:
        limits = f"{host.cgroup_reason} (pids, memory per task) + rlimits (cpu, file size)"
    elif host.prlimit is None:
        limits = "none: prlimit (util-linux) is not installed"
    elif box.owner is not None:
        limits = f"rlimits, processes per task uid ({host.cgroup_reason})"
    elif host.root:
        limits = (
            f"rlimits without a process limit (RLIMIT_NPROC does not count root's "
            f"processes; tasks get no uid of their own) ({host.cgroup_reason})"
        )
    else:
        limits = f"rlimits, processes counted for the daemon's whole user ({host.cgroup_reason})"
    log.info("tool sandbox: %s; commands run as %s; limits: %s", sandbox, who, limits)
