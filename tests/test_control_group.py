"""``control_socket_group``: members of the group use the control socket, others do not.

A member is a process whose primary group or one of whose supplementary groups is the group,
as the kernel reports it for the connection. The peers here are real processes of an
unprivileged uid (``nobody``) started with and without the group; that needs root (to create a
group and to start processes as another user), and a Python outside /root for them to run.
Two layers are shown apart: the socket file's mode (0660, the group's) keeps non-members from
connecting at all, and the daemon's own check refuses them even where the mode would let them.
"""

from __future__ import annotations

import grp
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
import trio

from control.protocol import encode_request
from daemon.control_server import ControlServer
from daemon.socket_access import peer_groups, unreachable_by_group

NOBODY = 65534
# The peer runs as nobody, who may not enter /root (where a pyenv Python may live).
PEER_PYTHON = next(
    (
        p
        for p in ("/usr/bin/python3", "/usr/local/bin/python3")
        if os.access(p, os.X_OK) and not os.path.realpath(p).startswith("/root/")
    ),
    None,
)
PEER = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
try:
    s.sendall(sys.argv[2].encode())
except OSError:
    pass  # a refused peer may find the connection closed already; the reply is there to read
data = b""
while not data.endswith(b"\\n"):
    try:
        chunk = s.recv(65536)
    except OSError:
        break
    if not chunk:
        break
    data += chunk
print(data.decode().strip())
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a group and another uid")


def test_peer_groups_are_the_connected_process_groups():
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert peer_groups(a) >= {os.getegid(), *os.getgroups()}


def test_a_directory_the_group_cannot_search_is_found(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    assert unreachable_by_group(private / "s.sock", 4242) == private
    os.chmod(private, 0o711)
    assert unreachable_by_group(private / "s.sock", 4242) != private


@pytest.fixture
def group():
    if os.geteuid() != 0:
        pytest.skip("needs root: a group and another uid")
    if shutil.which("groupadd") is None or PEER_PYTHON is None:
        pytest.skip("needs groupadd and a system python3 that nobody may run")
    name = f"agentd-t{uuid.uuid4().hex[:8]}"
    subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
    try:
        yield grp.getgrnam(name)
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True)


@pytest.fixture
def base_dir():
    directory = Path(tempfile.mkdtemp(prefix="actl-", dir="/tmp"))
    os.chmod(directory, 0o755)  # nobody may enter the test's directory; the server's is below
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


async def status(args):
    return {"state": "running"}


async def as_nobody(path: Path, extra_groups: list[int], primary: int = NOBODY) -> str:
    """What a process of uid nobody gets when it sends ``status`` on ``path``."""
    done = await trio.run_process(
        [PEER_PYTHON, "-I", "-S", "-c", PEER, str(path), encode_request(1, "status").decode()],
        user=NOBODY,
        group=primary,
        extra_groups=extra_groups,
        cwd="/",
        capture_stdout=True,
        capture_stderr=True,
        env={},
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode().strip()


def result_of(line: str) -> dict:
    return json.loads(line)


@needs_root
async def test_members_are_admitted_and_others_refused(group, base_dir):
    path = base_dir / "run" / "agentd.sock"
    server = ControlServer(path, {"status": status}, group=group.gr_name)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        sock, directory = os.stat(path), os.stat(path.parent)
        assert (stat.S_IMODE(sock.st_mode), sock.st_gid) == (0o660, group.gr_gid)
        assert (stat.S_IMODE(directory.st_mode), directory.st_gid) == (0o710, group.gr_gid)

        member = result_of(await as_nobody(path, [group.gr_gid]))
        assert member["result"] == {"state": "running"}
        primary = result_of(await as_nobody(path, [], primary=group.gr_gid))
        assert primary["result"] == {"state": "running"}
        assert await as_nobody(path, []) == "EACCES"  # the file's mode keeps them out

        # Were the mode ever looser, the daemon's own check still refuses a non-member.
        os.chmod(path, 0o666)
        os.chmod(path.parent, 0o711)
        refused = result_of(await as_nobody(path, []))
        assert refused["error"]["code"] == "forbidden"
        assert f"uid {NOBODY} may not use" in refused["error"]["message"]
        assert f"members of group {group.gr_name}" in refused["error"]["message"]
        assert result_of(await as_nobody(path, [group.gr_gid]))["result"] == {"state": "running"}
        nursery.cancel_scope.cancel()


@needs_root
async def test_without_a_group_setting_a_member_is_still_refused(group, base_dir):
    path = base_dir / "agentd.sock"
    server = ControlServer(path, {"status": status})
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        os.chmod(path, 0o666)  # only the daemon's check is left
        refused = result_of(await as_nobody(path, [group.gr_gid]))
        assert refused["error"]["code"] == "forbidden"
        nursery.cancel_scope.cancel()


@needs_root
async def test_a_socket_directory_the_group_cannot_enter_is_named_at_start(group, base_dir, caplog):
    private = base_dir / "private"
    private.mkdir(mode=0o700)
    path = private / "agentd.sock"
    with caplog.at_level(logging.WARNING, logger="agentd.control"):
        async with trio.open_nursery() as nursery:
            await nursery.start(ControlServer(path, {"status": status}, group=group.gr_name).serve)
            assert await as_nobody(path, [group.gr_gid]) == "EACCES"
            nursery.cancel_scope.cancel()
    assert f"members of group {group.gr_name} cannot reach the control socket {path}" in caplog.text
    assert f"may not enter {private}" in caplog.text
