"""Clone and push over smart HTTP with a token: where the token goes, and where it never goes."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest

from daemon.errors import PermanentError, TransientError
from daemon.git import ClonePolicy, CloneRequest, prepare_workspace
from tests.fakes.git_http import GitHttpServer, git_out, make_bare_repo
from tests.helpers import sandboxed_push

TOKEN = "ghs_s3cr3tT0kenValue1234567890"
USER = "x-access-token"
IDENTITY = ("agentd bot", "agentd@example.invalid")


@pytest.fixture
def repos(tmp_path: Path) -> Path:
    root = tmp_path / "served"
    make_bare_repo(root)
    return root


@pytest.fixture
async def server(repos, nursery):
    server = GitHttpServer(repos, username=USER, token=TOKEN)
    await nursery.start(server.serve)
    return server


async def prepare(tmp_path: Path, url: str, token: str | None = TOKEN, **overrides):
    """``overrides``: fields of the ``ClonePolicy``."""
    policy = ClonePolicy(
        tmp_path / "ws", IDENTITY, quota_bytes=50_000_000, min_free_bytes=0, allow_local=True
    )
    return await prepare_workspace(
        CloneRequest("c0ffee00-1", url, "main", title="Add a feature", token=token),
        dataclasses.replace(policy, **overrides),
    )


def assert_token_absent(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file() and not file.is_symlink():
            assert TOKEN.encode() not in file.read_bytes(), f"token found in {file}"


async def test_push_with_token_over_smart_http(tmp_path, repos, server):
    ws = await prepare(tmp_path, server.url_for("project.git"))
    (ws.path / "feature.py").write_text("print('hello')\n")
    result = await sandboxed_push(ws, "Add feature", token=TOKEN, identity=IDENTITY)

    assert result is not None
    assert git_out(repos / "project.git", "rev-parse", f"refs/heads/{ws.branch}") == result.commit
    # git asked for credentials after a 401 challenge, as with GitHub.
    assert any(r.status == 401 for r in server.requests)
    assert any(r.authorization and r.status == 200 for r in server.requests)
    config = (ws.path / ".git" / "config").read_text()
    assert TOKEN not in config and USER not in config
    assert git_out(ws.path, "-c", "safe.directory=*", "remote", "get-url", "origin") == server.url_for(
        "project.git"
    )
    assert_token_absent(ws.path)
    assert TOKEN not in repr(ws) and TOKEN not in repr(result)


async def test_wrong_token_is_permanent_and_not_echoed(tmp_path, server):
    wrong = "ghs_wrongTokenValue0987654321"
    with pytest.raises(PermanentError) as info:
        await prepare(tmp_path, server.url_for("project.git"), token=wrong)
    message = str(info.value)
    assert "authentication failed" in message
    assert wrong not in message and TOKEN not in message
    assert wrong not in repr(info.value.args)


async def test_missing_token_fails_without_prompting(tmp_path, server):
    with pytest.raises(PermanentError, match="authentication failed"):
        await prepare(tmp_path, server.url_for("project.git"), token=None)


async def test_wrong_token_on_push_is_permanent(tmp_path, server):
    ws = await prepare(tmp_path, server.url_for("project.git"))
    (ws.path / "f.txt").write_text("f\n")
    with pytest.raises(PermanentError, match="authentication failed") as info:
        await sandboxed_push(ws, "f", token="ghs_anotherWrongOne", identity=IDENTITY)
    assert "ghs_anotherWrongOne" not in str(info.value)


async def test_server_503_is_transient(tmp_path, server):
    server.fail_with(503, times=None)
    with pytest.raises(TransientError, match="the server had an error") as info:
        await prepare(tmp_path, server.url_for("project.git"))
    assert TOKEN not in str(info.value)


async def test_push_retried_after_503_succeeds(tmp_path, repos, server):
    ws = await prepare(tmp_path, server.url_for("project.git"))
    (ws.path / "f.txt").write_text("f\n")
    server.fail_with(503, times=None)
    with pytest.raises(TransientError):
        await sandboxed_push(ws, "f", token=TOKEN, identity=IDENTITY)
    server.clear_failures()
    # The commit made by the failed attempt is pushed by the next one.
    result = await sandboxed_push(ws, "f", token=TOKEN, identity=IDENTITY)
    assert result is not None
    assert git_out(repos / "project.git", "rev-parse", f"refs/heads/{ws.branch}") == result.commit


async def test_repository_not_found_is_permanent(tmp_path, server):
    with pytest.raises(PermanentError, match="repository not found"):
        await prepare(tmp_path, server.url_for("missing.git"))


async def test_connection_refused_is_transient(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransientError, match="could not connect"):
        await prepare(tmp_path, f"http://127.0.0.1:{port}/project.git")


async def test_plain_http_refused_without_allow_local(tmp_path, server):
    with pytest.raises(PermanentError, match="plain http"):
        await prepare(tmp_path, server.url_for("project.git"), allow_local=False)


def test_fake_server_thread_mode(repos):
    with GitHttpServer(repos) as url:
        assert url.startswith("http://127.0.0.1:")
        out = git_out(repos, "ls-remote", f"{url}/project.git")
    assert "refs/heads/main" in out
