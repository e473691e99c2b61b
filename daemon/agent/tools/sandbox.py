"""How the bash session is started: bubblewrap sandbox or plain process, minimal environment.

The sandbox (bubblewrap, ``bwrap``):

- ``--unshare-all``: new user, pid, network, ipc, uts and cgroup namespaces, so no network at
  all (only a private loopback with nothing listening) and no view of the host's processes;
- ``--die-with-parent``: the sandbox dies if the daemon dies;
- ``--cap-drop ALL``: bwrap keeps every capability when started by root unless told otherwise;
- read-only binds of ``/usr``, the ``/bin``, ``/sbin``, ``/lib*`` symlinks or directories, and an
  allowlist of ``/etc`` entries (no ``shadow``, ``pip.conf``, ``npmrc``, ``ssh``...);
- fresh ``/proc``, minimal ``/dev``, a private tmpfs ``/tmp`` holding ``HOME=/tmp/home``;
- the workspace bound read-write at its own host path (so the paths Claude sees in ``pwd``
  are the ones the editor tool accepts), and ``/`` itself remounted read-only.

Nothing else of the host is visible, so nothing else is writable.
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

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SANDBOX_HOME = "/tmp/home"

# /etc entries programs commonly need (dynamic loader, users for `id`/git, TLS roots, timezone,
# Debian alternatives, terminfo, language runtimes' system config). Globs allowed.
_ETC_ALLOWLIST = (
    "alternatives", "bash.bashrc", "ca-certificates", "ca-certificates.conf", "debian_version",
    "gitconfig", "group", "host.conf", "hosts", "inputrc", "ld.so.cache", "ld.so.conf",
    "ld.so.conf.d", "locale.alias", "localtime", "magic", "magic.mime", "mime.types",
    "nsswitch.conf", "os-release", "passwd", "perl", "profile", "protocols", "python3*",
    "services", "shells", "ssl", "terminfo", "timezone", "java-*",
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


def bwrap_argv(bwrap: str, workspace: Path) -> list[str]:
    """The bwrap command line (without the program to run) for ``workspace``."""
    ws = str(workspace)
    return [
        bwrap,
        "--unshare-all",
        "--die-with-parent",
        "--cap-drop", "ALL",
        *_system_binds(),
        "--proc", "/proc",
        "--dev", "/dev",
        "--tmpfs", "/tmp",
        "--dir", SANDBOX_HOME,
        "--bind", ws, ws,
        # After every mount point exists: the root tmpfs bwrap builds is writable otherwise.
        "--remount-ro", "/",
        "--chdir", ws,
        # No --new-session: it would move the shell out of our process group, and the TIOCSTI
        # attack it prevents needs a terminal, which the shell never has (stdin is a pipe).
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
        argv = [*bwrap_argv(bwrap, Path(tmp)), "bash", "-c", "true"]
        with trio.move_on_after(10):
            done = await trio.run_process(
                argv,
                check=False,
                capture_stdout=True,
                capture_stderr=True,
                stdin=subprocess.DEVNULL,
                env=shell_env(SANDBOX_HOME),
            )
            if done.returncode == 0:
                return SandboxProbe(True, "bwrap works", bwrap)
            err = done.stderr.decode("utf-8", errors="replace").strip()
            return SandboxProbe(
                False, f"bwrap failed (exit {done.returncode}): {err or 'no message'}", bwrap
            )
        return SandboxProbe(False, "bwrap did not finish within 10 s", bwrap)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, tmp, True)


def _probe_setup() -> tuple[str | None, str | None]:
    """``bwrap``'s path and a scratch dir to probe it in (both None without it); the host's
    binds are cached on the way."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None, None
    _system_binds()
    return bwrap, tempfile.mkdtemp(prefix="agentd-probe-")


def shell_argv(*, sandboxed: bool, bwrap: str | None, workspace: Path) -> list[str]:
    """The command line of the persistent shell."""
    bash = ["bash", "--noprofile", "--norc"]
    if sandboxed:
        assert bwrap is not None
        return [*bwrap_argv(bwrap, workspace), *bash]
    return [shutil.which("bash", path=DEFAULT_PATH) or "/bin/bash", *bash[1:]]
