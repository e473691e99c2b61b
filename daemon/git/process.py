"""Running git: environment, credentials, timeouts, and what its failures mean.

Every git subprocess of agentd goes through :func:`run_git`. The token of an https remote
reaches git only through ``GIT_ASKPASS``: a tiny script that prints an environment variable
set on that one git process, so it is never in a URL, a config file or an argument list.
Whatever git writes to stderr is redacted before it is put in an exception, and what a failure
means is ``failures.classify_git_error``'s to say.
"""

from __future__ import annotations

import atexit
import base64
import functools
import os
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NotRequired, TypedDict

import trio

from daemon.cpu_pin import release as release_cpu
from daemon.errors import PermanentError, TransientError
from daemon.git.addresses import ResolvedRemote, git_pin_config, ssh_pin_options
from daemon.git.failures import classify_git_error
from daemon.git.remote import Remote, redact

__all__ = ["TOKEN_USERNAME", "GitAuth", "GitResult", "classify_git_error", "run_git"]

# Nice 19, the lowest priority: a git process weighs 1/68 of a daemon thread (10 would be 1/9).
GIT_NICE = 19

# GitHub accepts any user name with a PAT and wants this one with app installation tokens.
TOKEN_USERNAME = "x-access-token"
_TOKEN_ENV = "AGENTD_GIT_TOKEN"
_USERNAME_ENV = "AGENTD_GIT_USERNAME"

_ASKPASS_SCRIPT = f"""#!/bin/sh
# agentd: answers git's credential prompts from the environment of this git process only.
case "$1" in
  Username*) printf '%s\\n' "${{{_USERNAME_ENV}}}" ;;
  *) printf '%s\\n' "${{{_TOKEN_ENV}}}" ;;
esac
"""
_askpass_dir: Path | None = None

# Settings from any config level (including a repo config the agent could have edited) that
# could run a program or send the credentials elsewhere; command-line -c wins over all of them.
_SAFE_CONFIG = (
    "credential.helper=",  # empty resets the list: no helper stores the token
    "core.askPass=",
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "protocol.ext.allow=never",
    "protocol.fd.allow=never",
)


@dataclass(frozen=True)
class GitAuth:
    """Credentials for one remote: a token for https, an operator key file for ssh."""

    token: str | None = None
    ssh_key: Path | None = None

    def secrets(self) -> list[str]:
        if not self.token:
            return []
        basic = base64.b64encode(f"{TOKEN_USERNAME}:{self.token}".encode()).decode()
        return [self.token, basic]


@dataclass(frozen=True)
class GitResult:
    returncode: int
    stdout: bytes
    stderr: str  # already redacted


def _askpass_path() -> Path:
    """The askpass script, written once per process into a private 0700 directory."""
    global _askpass_dir
    if _askpass_dir is None or not (_askpass_dir / "askpass.sh").exists():
        _askpass_dir = Path(tempfile.mkdtemp(prefix="agentd-git-"))
        atexit.register(shutil.rmtree, _askpass_dir, ignore_errors=True)
        script = _askpass_dir / "askpass.sh"
        script.write_text(_ASKPASS_SCRIPT)
        script.chmod(stat.S_IRWXU)
    return _askpass_dir / "askpass.sh"


# What a git on the host may take from the daemon's environment: where to find programs and
# the operator's network setup (proxies, CA bundles), never anything else (API keys, secret
# keys, AGENTD_*, GIT_* that would redirect git).
_PASSED_THROUGH = (
    "PATH",
    "HOME",
    "TZ",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def git_env(
    remote: Remote | None,
    auth: GitAuth | None,
    *,
    allow_local: bool = False,
    pin: ResolvedRemote | None = None,
) -> dict[str, str]:
    """The whole environment of a git subprocess on the host, built from nothing: a path, a
    home, proxy and CA settings, English messages (classification reads them), never a prompt,
    and no system or global git config (only what agentd passes with ``-c`` counts)."""
    env = {k: os.environ[k] for k in _PASSED_THROUGH if k in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(
        LC_ALL="C",
        LANG="C",
        LANGUAGE="C",
        GIT_TERMINAL_PROMPT="0",
        GIT_ASKPASS="",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
    )
    # Belt and braces over parse_remote: git itself refuses any other transport.
    allowed = ["https", "ssh"] + (["file", "http"] if allow_local else [])
    env["GIT_ALLOW_PROTOCOL"] = ":".join(allowed)
    auth = auth or GitAuth()
    if remote is not None and remote.kind in ("https", "http") and auth.token:
        env["GIT_ASKPASS"] = str(_askpass_path())
        env[_USERNAME_ENV] = TOKEN_USERNAME
        env[_TOKEN_ENV] = auth.token
    if remote is not None and remote.kind == "ssh":
        env["GIT_SSH_COMMAND"] = ssh_command(auth.ssh_key, ssh_pin_options(pin) if pin else ())
    return env


def ssh_command(key: Path | None, pin_options: Sequence[str] = ()) -> str:
    """``GIT_SSH_COMMAND``: the operator's key only, new hosts accepted once, never a prompt;
    ``pin_options`` (``ssh_pin_options``) hold ssh to the address that was checked."""
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new"]
    if key is not None:
        cmd += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
    return shlex.join(cmd + list(pin_options))


async def run_git(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    remote: Remote | None = None,
    auth: GitAuth | None = None,
    op: str | None = None,
    timeout: float = 60.0,
    check: bool = True,
    allow_local: bool | None = None,
    stdin: int | None = None,
    pin: ResolvedRemote | None = None,
    stdout_cap: int | None = None,
) -> GitResult:
    """Run ``git <args>`` off the Trio loop and return its output, stderr redacted.

    With ``check`` a non-zero exit raises the error :func:`classify_git_error` picks for
    ``op`` (default: the git subcommand). Running longer than ``timeout`` seconds raises
    TransientError. ``pin``, from :func:`daemon.git.addresses.resolve_remote` for ``remote``,
    holds git (curl, ssh) to the addresses that were checked and turns http redirects off.
    ``stdout_cap``: stdout past its first ``stdout_cap`` bytes is read and dropped.

    Cancellation: git runs in its own process group, and the whole group (git plus its
    remote helpers, ssh, askpass) is sent SIGKILL at once; the cancellation then propagates.
    Git runs at background CPU priority (``background_priority``).
    """
    auth = auth or GitAuth()
    if allow_local is None:
        allow_local = remote is not None and remote.kind in ("local", "http")
    argv = ["git"]
    for setting in _SAFE_CONFIG:
        argv += ["-c", setting]
    if pin is not None:
        argv += git_pin_config(pin)
    argv += list(args)
    op = op or next((a for a in args if not a.startswith("-")), "command")
    try:
        with trio.fail_after(timeout):
            make_env = functools.partial(git_env, remote, auth, allow_local=allow_local, pin=pin)
            # With a token, the askpass script is looked for (and written) on disk: off the loop.
            env = await trio.to_thread.run_sync(make_env) if auth.token else make_env()
            returncode, stdout, raw_stderr = await run_in_group(
                argv, cwd, env, stdin=stdin, stdout_cap=stdout_cap
            )
    except trio.TooSlowError:
        raise TransientError(f"git {op} timed out after {timeout:g} s", code="git_timeout") from None
    except FileNotFoundError:
        raise PermanentError("git is not installed on this server", code="git_missing") from None
    stderr = redact(raw_stderr.decode(errors="replace"), auth.secrets())
    if check and returncode != 0:
        raise classify_git_error(op, returncode, stderr, host=remote.host if remote is not None else None)
    return GitResult(returncode, stdout, stderr)


class ProcessOptions(TypedDict):
    """How to start a process in a task's confinement (``TaskSandbox.command``): the keyword
    arguments of ``trio.run_process``/``open_process`` it needs. Without ``cwd`` the caller
    picks the directory (``export_bundle``: the workspace)."""

    env: dict[str, str]
    cwd: NotRequired[Path]
    pass_fds: NotRequired[tuple[int, ...]]


# What is kept of a git's stderr: its first and last halves. A hostile server (sideband
# messages) or bundle (an error line per bogus object) can make git write megabytes of it.
STDERR_CAP = 64 * 1024


async def run_in_group(
    argv: list[str],
    cwd: Path | None,
    env: dict[str, str],
    *,
    stdin: bytes | int | None = None,
    stdout: int | None = None,
    pass_fds: Sequence[int] = (),
    stdout_cap: int | None = None,
) -> tuple[int, bytes, bytes]:
    """Run ``argv`` in a process group of its own at background priority; return its exit
    status, its stdout (b"" when ``stdout`` is a descriptor it writes to directly) and its
    stderr, of which the first and last ``STDERR_CAP / 2`` bytes are kept. ``stdin``: bytes
    written to it, a descriptor it reads, or None (``/dev/null``); ``pass_fds`` stay open in
    the process; of stdout past ``stdout_cap`` bytes nothing is kept (it is read to its end).

    Cancellation: the whole group (git and its helpers, or a sandbox) is sent SIGKILL and
    reaped, then the cancellation propagates.
    """
    proc = await trio.lowlevel.open_process(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE if isinstance(stdin, bytes) else subprocess.DEVNULL if stdin is None else stdin,
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE,
        process_group=0,
        pass_fds=pass_fds,
    )
    out, err = bytearray(), _Capped(STDERR_CAP)

    def keep_out(chunk: bytes | bytearray) -> None:
        room = len(chunk) if stdout_cap is None else stdout_cap - len(out)
        out.extend(chunk[: max(room, 0)])

    try:
        background_priority(proc)
        try:
            async with trio.open_nursery() as nursery:
                if isinstance(stdin, bytes):
                    assert proc.stdin is not None  # a pipe: stdin=PIPE above
                    nursery.start_soon(_feed, proc.stdin, stdin)
                if proc.stdout is not None:
                    nursery.start_soon(_drain, proc.stdout, keep_out)
                assert proc.stderr is not None  # a pipe: stderr=PIPE above
                await _drain(proc.stderr, err.feed)
        except BaseExceptionGroup as group:  # one task failed: its error is the caller's
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        return await proc.wait(), bytes(out), err.bytes()
    except BaseException:
        with trio.CancelScope(shield=True):
            await kill_group(proc)
            await proc.wait()
        raise


async def _feed(stream: trio.abc.SendStream, data: bytes) -> None:
    async with stream:
        try:
            await stream.send_all(data)
        except trio.BrokenResourceError:
            pass  # it ended without reading it all: its exit status says why


async def _drain(stream: trio.abc.ReceiveStream, keep: Callable[[bytes | bytearray], object]) -> None:
    async with stream:
        while chunk := await stream.receive_some(65536):
            keep(chunk)


class _Capped:
    """The first and last ``cap / 2`` bytes of a stream, whatever its length."""

    def __init__(self, cap: int) -> None:
        self._half = cap // 2
        self._head = bytearray()
        self._tail = bytearray()
        self._cut = False

    def feed(self, chunk: bytes | bytearray) -> None:
        room = self._half - len(self._head)
        self._head += chunk[:room]
        self._tail += chunk[max(room, 0) :]
        if len(self._tail) > 2 * self._half:
            del self._tail[: -self._half]
            self._cut = True

    def bytes(self) -> bytes:
        if not self._cut and len(self._tail) <= self._half:
            return bytes(self._head + self._tail)
        return bytes(self._head) + b"\n[...]\n" + bytes(self._tail[-self._half :])


def background_priority(process: trio.Process) -> None:
    """Give git's group nice ``GIT_NICE``, so that it yields the CPU to the daemon's threads.

    Git stays in the daemon's session (``process_group=0``, not a new session): with
    autogroups, or one cgroup for the service, it then competes only with the daemon itself,
    and its nice decides that. In sessions of their own, two hundred clones at once left the
    Trio thread a two-hundredth of the CPU. Set just after the start: what git forks later
    inherits it; a command short enough to end before that costs next to nothing anyway.
    """
    try:
        os.setpriority(os.PRIO_PGRP, process.pid, GIT_NICE)
    except OSError:  # already gone
        pass
    release_cpu(process.pid)  # not on the event loop's CPU (daemon/cpu_pin.py)


async def kill_group(process: trio.Process) -> None:
    """SIGKILL to ``process``'s whole group (it leads one of its own)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:  # pragma: no cover - pid reused by another user's process
        process.kill()
