"""The bubblewrap sandbox: no network, only the workspace (and a private /tmp) writable.

Tests that need a working bwrap are skipped, with the probe's reason, when it is not usable.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from daemon.agent.tools import Toolbox, ToolSettings, probe_sandbox, sandbox
from daemon.errors import PermanentError


@pytest.fixture
def bwrap_usable():
    # A sync fixture: a skip raised inside trio loses its reason under pytest-trio.
    probe = trio.run(probe_sandbox)
    if not probe.usable:
        pytest.skip(f"bubblewrap is not usable here: {probe.reason}")


@pytest.fixture
async def sandboxed(bwrap_usable, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    async with Toolbox(ws, ToolSettings(sandbox="required", command_timeout_s=10)) as tb:
        yield tb


async def bash(tb: Toolbox, command: str) -> str:
    result = await tb.run("bash", {"command": command})
    return result.output


CONNECT = "(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo CONNECTED || echo REFUSED"


async def test_no_network_inside_the_sandbox(sandboxed, tmp_path):
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        assert await bash(sandboxed, CONNECT.format(port=port)) == "REFUSED\n"
        # The same command reaches the listener without the sandbox: the check is real.
        (tmp_path / "plain").mkdir()
        async with Toolbox(tmp_path / "plain", ToolSettings(sandbox="off")) as plain:
            assert await bash(plain, CONNECT.format(port=port)) == "CONNECTED\n"
    finally:
        for listener in listeners:
            await listener.aclose()


async def test_workspace_is_writable_and_shared_with_the_host(sandboxed):
    assert await bash(sandboxed, "mkdir -p d && echo hi > d/f && cat d/f") == "hi\n"
    assert (sandboxed.workspace / "d" / "f").read_text() == "hi\n"
    assert sandboxed.sandboxed is True


@pytest.mark.parametrize("target", ["/etc/agentd-test", "/usr/agentd-test", "/agentd-test"])
async def test_system_paths_are_read_only(sandboxed, target):
    out = await bash(sandboxed, f"touch {target} && echo WROTE || echo FAILED")
    assert out.endswith("FAILED\n")
    assert not os.path.exists(target)


async def test_host_home_is_invisible_and_unwritable(sandboxed):
    home = os.path.expanduser("~")
    target = f"{home}/agentd-sandbox-test"
    out = await bash(sandboxed, f"echo x > {target} && echo WROTE || echo FAILED; ls {home}")
    assert "FAILED" in out and "WROTE" not in out
    assert not os.path.exists(target)


async def test_tmp_is_private(sandboxed):
    name = f"agentd-private-{os.getpid()}"
    assert await bash(sandboxed, f"echo x > /tmp/{name} && cat /tmp/{name}") == "x\n"
    assert not os.path.exists(f"/tmp/{name}")


async def test_no_capabilities_and_no_host_processes(sandboxed):
    out = await bash(sandboxed, "grep CapEff /proc/self/status; ls /proc | grep -c '^[0-9]'")
    cap_line, count = out.splitlines()
    assert cap_line.split()[1] == "0000000000000000"
    assert int(count) < 10  # bwrap, bash, the pipeline: not the host's processes


async def test_secret_files_of_etc_are_not_visible(sandboxed):
    out = await bash(sandboxed, "ls /etc/shadow /etc/ssh 2>&1; test -r /etc/passwd && echo pw")
    assert "No such file" in out and "pw\n" in out


async def test_required_without_bwrap_fails_the_task_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "_probe", sandbox.SandboxProbe(False, "bwrap is missing"))
    async with Toolbox(tmp_path, ToolSettings(sandbox="required")) as tb:
        with pytest.raises(PermanentError) as info:
            await tb.run("bash", {"command": "echo hi"})
    assert "bwrap is missing" in info.value.message
    assert info.value.code == "sandbox_unavailable"


async def test_auto_without_bwrap_falls_back_to_a_plain_shell(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "_probe", sandbox.SandboxProbe(False, "bwrap is missing"))
    async with Toolbox(tmp_path, ToolSettings(sandbox="auto")) as tb:
        assert (await tb.run("bash", {"command": "echo hi"})).output == "hi\n"
        assert tb.sandboxed is False


async def test_probe_is_cached(monkeypatch):
    first = await probe_sandbox()
    monkeypatch.setattr(sandbox.shutil, "which", lambda *a, **k: pytest.fail("probed again"))
    assert await probe_sandbox() is first


def test_bwrap_command_line_binds_only_what_it_should(tmp_path):
    argv = sandbox.bwrap_argv("/usr/bin/bwrap", tmp_path)
    joined = " ".join(argv)
    assert "--unshare-all" in argv and "--die-with-parent" in argv
    assert "--cap-drop ALL" in joined
    assert f"--bind {tmp_path} {tmp_path}" in joined
    writable = [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]
    assert writable == [str(tmp_path)]
    assert "--share-net" not in argv
    assert "/etc/shadow" not in argv
    assert argv.index("--remount-ro") > argv.index("--bind")


def test_bwrap_command_line_for_a_task_uid(tmp_path):
    """Privileged bwrap (the uid must be the host's), only what setpriv needs, then setpriv."""
    ws = tmp_path / "data" / "ws"
    argv = sandbox.bwrap_argv(
        "/usr/bin/bwrap", ws, tmp_bytes=8 << 20, owner=(600123, 600123), etc_dir=tmp_path
    )
    joined = " ".join(argv)
    assert "--unshare-all" not in argv and "--unshare-user" not in argv
    assert {"--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"} <= set(argv)
    kept = [argv[i + 1] for i, a in enumerate(argv) if a == "--cap-add"]
    assert kept == ["CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_DAC_READ_SEARCH"]
    assert argv.index("--cap-drop") < argv.index("--cap-add")
    assert "--size 8388608 --tmpfs /tmp" in joined
    assert f"--ro-bind {tmp_path}/passwd /etc/passwd" in joined
    # The uid walks down to the workspace through directories it may enter.
    assert f"--perms 0755 --dir {tmp_path / 'data'} --bind {ws} {ws}" in joined
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"] == [str(ws)]
    assert sandbox.setpriv_argv("/usr/bin/setpriv", (600123, 600124)) == [
        "/usr/bin/setpriv",
        "--reuid=600123",
        "--regid=600124",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
    ]


async def test_workspace_path_with_symlinked_parent_works(bwrap_usable, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    async with Toolbox(Path(tmp_path / "link"), ToolSettings(sandbox="required")) as tb:
        assert await bash(tb, "pwd; touch made") == f"{real}\n"
    assert (real / "made").exists()


def test_without_a_task_uid_no_user_namespace_can_be_made_inside():
    """In bwrap's own user namespace (a daemon that is not root), a nested one would give the
    task every capability back there."""
    import shutil

    from daemon.agent.tools.sandbox import _can_disable_userns, bwrap_argv

    bwrap = shutil.which("bwrap")
    if bwrap is None or not _can_disable_userns(bwrap):
        pytest.skip("this bwrap has no --disable-userns (0.8 and later)")
    argv = bwrap_argv(bwrap, Path("/tmp/ws"))
    assert "--disable-userns" in argv and "--unshare-user" in argv
    at = argv.index("--proc")
    assert argv[at + 2 : at + 5] == ["--ro-bind", "/proc/sys", "/proc/sys"]
