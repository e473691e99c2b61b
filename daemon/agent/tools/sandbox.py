"""How the tools' commands are confined: the bubblewrap sandbox, its probe, the minimal environment.

The sandbox (bubblewrap, ``bwrap``):

- new pid, network, ipc, uts and cgroup namespaces, so no network at all (only a private
  loopback with nothing listening) and no view of the host's processes;
- as the daemon's user, also a new user namespace (``--unshare-all``); when the daemon is root
  and the task has a uid of its own (``identity.py``), bwrap runs privileged instead and
  ``setpriv`` switches to that uid inside, for good (no capabilities, not even in the bounding
  set, no groups, ``no_new_privs``): the uid must be the real one on the host, so that files
  are owned by it and ``RLIMIT_NPROC`` counts the task alone;
- ``--die-with-parent``: the sandbox dies with its parent, the lifeline shell that dies with
  the daemon's process (``lifeline.py``: not with the worker thread that started it);
- ``--cap-drop ALL``: bwrap keeps every capability when started by root unless told otherwise;
- read-only binds of ``/usr``, the ``/bin``, ``/sbin``, ``/lib*`` symlinks or directories, and an
  allowlist of ``/etc`` entries (no ``shadow``, ``pip.conf``, ``npmrc``, ``ssh``...);
- fresh ``/proc``, minimal ``/dev``, private tmpfs ``/tmp`` (``--size``: the task's limit) holding
  ``HOME=/tmp/home``, and a small private ``/dev/shm``;
- the workspace bound read-write at its own host path (so the paths Claude sees in ``pwd``
  are the ones the editor tool accepts), and ``/`` itself remounted read-only.

Nothing else of the host is visible, so nothing else is writable. ``TaskSandbox``
(``task_sandbox.py``, re-exported here) puts this together with the task's uid and limits.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trio

from daemon.git.process import kill_group

from .lifeline import lifeline_argv, lifeline_fd

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SANDBOX_HOME = "/tmp/home"
# Where the task's egress proxy socket appears in the sandbox, and the loopback port its bridge
# offers it on (the sandbox has a network namespace of its own: no port is shared).
PROXY_SOCKET = "/run/agentd-proxy.sock"
PROXY_PORT = 3128
_BRIDGE = (Path(__file__).parent / "proxy_bridge.py").read_text()  # at import: read once
# /dev/shm is a tmpfs of its own (POSIX semaphores and shared memory need it writable): this
# small, so that it is no second /tmp.
_SHM_BYTES = 64 * 1024 * 1024
# What privileged bwrap keeps so that it can enter the workspace (owned by the task's uid, maybe
# mode 0700) and setpriv can switch to that uid; setpriv then drops them all for good.
_SETPRIV_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_DAC_READ_SEARCH")

# /etc entries programs commonly need (dynamic loader, users for `id`/git, TLS roots, timezone,
# Debian alternatives, terminfo, language runtimes' system config). Globs allowed.
_ETC_ALLOWLIST = (
    "alternatives",
    "bash.bashrc",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "gitconfig",
    "group",
    "host.conf",
    "hosts",
    "inputrc",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "locale.alias",
    "localtime",
    "magic",
    "magic.mime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "passwd",
    "perl",
    "profile",
    "protocols",
    "python3*",
    "services",
    "shells",
    "ssl",
    "terminfo",
    "timezone",
    "java-*",
)


def shell_env(home: str) -> dict[str, str]:
    """The whole environment of the shell: nothing is inherited from the daemon.

    Inheriting would leak ``ANTHROPIC_API_KEY``, ``AGENTD_*`` and whatever else the operator
    set; the agent gets a fixed, boring environment instead.
    """
    return {
        "PATH": DEFAULT_PATH,
        "HOME": home,
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "SHELL": "/bin/bash",
        "PAGER": "cat",
        "GIT_PAGER": "cat",
        "GIT_TERMINAL_PROMPT": "0",
        "NO_COLOR": "1",
        # Keep __pycache__ out of the workspace (and out of the diff the daemon pushes).
        "PYTHONDONTWRITEBYTECODE": "1",
    }


@functools.lru_cache(maxsize=1)
def _system_binds() -> tuple[str, ...]:
    # Cached: the host layout does not change while the daemon runs, and this touches the disk.
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for pattern in _ETC_ALLOWLIST:
        for path in sorted(glob.glob(os.path.join("/etc", pattern))):
            args += ["--ro-bind", path, path]
    return tuple(args)


def bwrap_argv(
    bwrap: str,
    workspace: Path,
    *,
    tmp_bytes: int | None = None,
    owner: tuple[int, int] | None = None,
    etc_dir: Path | None = None,
    proxy_socket: Path | None = None,
) -> list[str]:
    """The bwrap command line (without the program to run) for ``workspace``.

    ``tmp_bytes`` bounds ``/tmp``. ``owner``: the daemon is root and the command will switch to
    that uid/gid inside (``setpriv_argv``): bwrap runs privileged, without a user namespace
    (the uid must be the real one on the host, for file ownership and ``RLIMIT_NPROC``), and
    keeps only the capabilities ``setpriv`` needs to drop to it, which it then drops for good.
    ``etc_dir`` holds ``passwd`` and ``group`` naming that uid, shown instead of the host's.
    ``proxy_socket``: the task's egress proxy (``egress_proxy.py``), bound in read-only at
    ``PROXY_SOCKET``; the network namespace stays empty (``proxy_argv`` bridges to it).
    """
    ws = str(workspace)
    if owner is None:
        # No user namespaces inside it: a nested one would give the task every capability
        # again there, and with them the kernel's namespaced attack surface.
        namespaces = [
            "--unshare-all",
            *(["--unshare-user", "--disable-userns"] if _can_disable_userns(bwrap) else []),
        ]
        caps = ["--cap-drop", "ALL"]
    else:
        namespaces = [
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ]
        caps = ["--cap-drop", "ALL", *(x for cap in _SETPRIV_CAPS for x in ("--cap-add", cap))]
    tmp_size = ["--size", str(tmp_bytes)] if tmp_bytes is not None else []
    shm_size = ["--size", str(min(tmp_bytes, _SHM_BYTES))] if tmp_bytes is not None else []
    # Directories bwrap makes for mount points are mode 0700 (root's): the task's uid must be
    # able to walk through /etc and down to the workspace.
    parents = [
        x
        for parent in reversed(workspace.parents)
        if str(parent) != "/"
        for x in ("--perms", "0755", "--dir", str(parent))
    ]
    proxy = []
    if proxy_socket is not None:
        proxy = ["--perms", "0755", "--dir", "/run", "--ro-bind", str(proxy_socket), PROXY_SOCKET]
    etc = []
    if etc_dir is not None:
        etc = [
            "--ro-bind",
            str(etc_dir / "passwd"),
            "/etc/passwd",
            "--ro-bind",
            str(etc_dir / "group"),
            "/etc/group",
        ]
    return [
        bwrap,
        *namespaces,
        "--die-with-parent",
        *caps,
        "--perms",
        "0755",
        "--dir",
        "/etc",
        *_system_binds(),
        *etc,
        "--proc",
        "/proc",
        # bwrap leaves the new /proc's sysctls writable (its own check cannot see procfs is).
        "--ro-bind",
        "/proc/sys",
        "/proc/sys",
        "--dev",
        "/dev",
        # Sticky and world-writable: the sandbox's uid is not the one bwrap creates them as.
        "--perms",
        "1777",
        *tmp_size,
        "--tmpfs",
        "/tmp",
        "--perms",
        "1777",
        *shm_size,
        "--tmpfs",
        "/dev/shm",
        "--perms",
        "0777",
        "--dir",
        SANDBOX_HOME,
        *parents,
        *proxy,
        "--bind",
        ws,
        ws,
        # After every mount point exists: the root tmpfs bwrap builds is writable otherwise.
        "--remount-ro",
        "/",
        "--chdir",
        ws,
        # No --new-session: it would move the shell out of our process group, and the TIOCSTI
        # attack it prevents needs a terminal, which the shell never has (stdin is a pipe).
    ]


def proxy_argv() -> list[str]:
    """What goes in front of a sandboxed command that may reach the egress proxy: the bridge
    (``proxy_bridge.py``, run by the sandbox's ``python3``) listening on ``PROXY_PORT``."""
    return ["python3", "-I", "-S", "-c", _BRIDGE, PROXY_SOCKET, str(PROXY_PORT)]


def proxy_env() -> dict[str, str]:
    """The environment that sends pip, npm, cargo, go, gem, curl and git through the bridge."""
    url = f"http://127.0.0.1:{PROXY_PORT}"
    env = dict.fromkeys(("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"), url)
    return {**env, "NO_PROXY": "localhost,127.0.0.1,::1", "no_proxy": "localhost,127.0.0.1,::1"}


def setpriv_argv(setpriv: str, owner: tuple[int, int]) -> list[str]:
    """Inside the sandbox: become ``owner`` for good (no groups, no capabilities, not even in
    the bounding set, and no gaining any through setuid or file capabilities)."""
    uid, gid = owner
    return [
        setpriv,
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
    ]


@dataclass(frozen=True)
class SandboxProbe:
    """Whether bubblewrap works on this host; ``reason`` says why not."""

    usable: bool
    reason: str
    bwrap: str | None = None


_probe: SandboxProbe | None = None


async def probe_sandbox() -> SandboxProbe:
    """Find out once per process whether ``bwrap`` can run a shell here; cached afterwards.

    Cancellation: the probe process (if started) is killed and the result not cached.
    """
    global _probe
    if _probe is None:
        _probe = await _run_probe()
        if not _probe.usable:
            log.warning("bash sandbox unavailable: %s", _probe.reason)
    return _probe


async def _run_probe() -> SandboxProbe:
    # Finding bwrap, a scratch dir and the host's binds touch the disk: in a worker thread.
    bwrap, tmp = await trio.to_thread.run_sync(_probe_setup)
    if bwrap is None or tmp is None:
        return SandboxProbe(False, "bwrap (bubblewrap) is not installed")
    try:
        argv = [*bwrap_argv(bwrap, Path(tmp), tmp_bytes=1 << 20), "bash", "-c", "true"]
        done = await run_probe_command(argv)
        if done is None:
            return SandboxProbe(False, "bwrap did not finish within 10 s", bwrap)
        if done.returncode == 0:
            return SandboxProbe(True, "bwrap works", bwrap)
        err = done.stderr.decode("utf-8", errors="replace").strip()
        return SandboxProbe(False, f"bwrap failed (exit {done.returncode}): {err or 'no message'}", bwrap)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, tmp, True)


async def run_probe_command(
    argv: list[str], cwd: str | None = None
) -> subprocess.CompletedProcess[bytes] | None:
    """Run a probe's ``argv`` with the sandbox's environment and its output captured; None when
    it does not finish within 10 s. It runs as a task's commands do: behind the lifeline (it
    dies with the daemon's process), in a process group of its own; cancelled or timed out, that
    whole group is killed with SIGKILL, never bwrap alone (``lifeline.py`` says why)."""
    guarded = lifeline_argv(argv)
    with trio.move_on_after(10):
        return await trio.run_process(
            argv if guarded is None else guarded,
            check=False,
            capture_stdout=True,
            capture_stderr=True,
            stdin=subprocess.DEVNULL,
            env=shell_env(SANDBOX_HOME),
            cwd=cwd,
            pass_fds=() if guarded is None else (lifeline_fd(),),
            process_group=0,
            deliver_cancel=kill_group,
        )
    return None


@functools.lru_cache(maxsize=4)
def _can_disable_userns(bwrap: str) -> bool:
    """Whether this bwrap has ``--disable-userns`` (0.8 and later)."""
    try:
        done = subprocess.run(
            [bwrap, "--help"],
            capture_output=True,
            text=True,
            timeout=10,
            env={"PATH": DEFAULT_PATH},
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return "--disable-userns" in done.stdout + done.stderr


def _probe_setup() -> tuple[str | None, str | None]:
    """``bwrap``'s path and a scratch dir to probe it in (both None without it); the host's
    binds are cached on the way."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None, None
    _system_binds()
    _can_disable_userns(bwrap)
    return bwrap, tempfile.mkdtemp(prefix="agentd-probe-")


# The per-task confinement built on the above; re-exported here, where it is expected (the
# package's __init__ imports this module first, so the cycle resolves in this order).
from .task_sandbox import (  # noqa: E402
    HostLimits as HostLimits,
    TaskSandbox as TaskSandbox,
    host_limits as host_limits,
)
