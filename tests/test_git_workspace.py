"""Workspaces against local bare repositories: clone, branch, commit, push, quota, gc."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import trio

from daemon.errors import PermanentError, TransientError
from daemon.git import (
    ClonePolicy,
    CloneRequest,
    branch_name,
    check_quota,
    gc_workspaces,
    prepare_workspace,
    run_git,
    workspace_size,
)
from tests.fakes.git_http import git_out, make_bare_repo
from tests.helpers import sandboxed_push

IDENTITY = ("agentd bot", "agentd@example.invalid")


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    return make_bare_repo(
        tmp_path / "remotes",
        branches={
            "main": {"README.md": "# project\n", "calc.py": "def add(a, b):\n    return a - b\n"},
            "dev": {"README.md": "# dev\n"},
        },
        head="dev",
    )


async def prepare(
    tmp_path: Path, repo: str, base: str | None = "main", *, task_id: str = "3f2a9c1d-7777", **overrides
):
    """A workspace as the agent loop prepares it; ``overrides``: fields of the ``ClonePolicy``."""
    policy = ClonePolicy(
        tmp_path / "ws", IDENTITY, quota_bytes=50_000_000, min_free_bytes=0, allow_local=True
    )
    request = CloneRequest(task_id, repo, base, title="Fix the add function")
    return await prepare_workspace(request, dataclasses.replace(policy, **overrides))


async def keep_none(task_id: str) -> bool:
    return False


async def push(ws, message: str, **overrides):
    return await sandboxed_push(ws, message, identity=IDENTITY, **overrides)


async def agent_git(ws, *args: str):
    """git as the agent runs it in its workspace (which the sandbox's uid may own)."""
    return await run_git(["-c", "safe.directory=*", *args], cwd=ws.path)


async def test_clone_branch_commit_push(tmp_path, bare):
    ws = await prepare(tmp_path, str(bare))

    assert ws.path == tmp_path / "ws" / "3f2a9c1d-7777"
    assert ws.branch == "agentd/3f2a9c1d-fix-the-add-function"
    assert ws.base_branch == "main"
    assert ws.base_commit == git_out(bare, "rev-parse", "refs/heads/main")
    assert ws.remote.kind == "local" and ws.remote.url == bare.as_uri()
    assert (ws.path / ".git" / "shallow").exists()
    assert git_out(ws.path, "symbolic-ref", "--short", "HEAD") == ws.branch

    (ws.path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (ws.path / "test_calc.py").write_text(
        "from calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
    )
    result = await push(ws, "Fix add")

    assert result is not None
    assert result.branch == ws.branch
    assert sorted(result.files_changed) == ["calc.py", "test_calc.py"]
    assert (result.lines_added, result.lines_removed) == (6, 1)
    assert git_out(bare, "rev-parse", f"refs/heads/{ws.branch}") == result.commit
    assert git_out(bare, "log", "-1", "--format=%an <%ae>|%s", result.commit) == (
        "agentd bot <agentd@example.invalid>|Fix add"
    )
    assert git_out(bare, "rev-parse", f"{result.commit}^") == ws.base_commit


async def test_base_branch_none_follows_remote_head(tmp_path, bare):
    ws = await prepare(tmp_path, bare.as_uri(), base=None)
    assert ws.base_branch == "dev"
    assert ws.base_commit == git_out(bare, "rev-parse", "refs/heads/dev")
    assert (ws.path / "README.md").read_text() == "# dev\n"


async def test_no_change_pushes_nothing(tmp_path, bare):
    ws = await prepare(tmp_path, str(bare))
    refs_before = git_out(bare, "for-each-ref")
    assert await push(ws, "nothing") is None
    assert git_out(bare, "for-each-ref") == refs_before


async def test_push_again_only_after_new_changes(tmp_path, bare):
    ws = await prepare(tmp_path, str(bare))
    (ws.path / "a.txt").write_text("one\n")
    first = await push(ws, "one")
    # Nothing new: the same result again (an attempt may have died before recording it), no push.
    assert await push(ws, "again") == first
    assert git_out(ws.owned / "repo.git", "rev-parse", f"refs/heads/{ws.branch}") == first.commit

    # A commit the agent made by itself is pushed too; counts cover the whole branch.
    (ws.path / "b.txt").write_text("two\n")
    await agent_git(ws, "add", "b.txt")
    await agent_git(ws, "commit", "-q", "-m", "agent commit")
    second = await push(ws, "unused message")
    assert second is not None and second.commit != first.commit
    assert sorted(second.files_changed) == ["a.txt", "b.txt"]
    assert git_out(bare, "rev-parse", f"refs/heads/{ws.branch}") == second.commit


async def test_clone_writes_the_identity_into_the_workspace_config(tmp_path, bare):
    ws = await prepare(tmp_path, str(bare))
    assert git_out(ws.path, "config", "--local", "user.name") == IDENTITY[0]
    assert git_out(ws.path, "config", "--local", "user.email") == IDENTITY[1]


async def test_remote_head_detached_without_base_branch_is_permanent(tmp_path, bare):
    """Cloned HEAD names no branch: the error `git symbolic-ref --short HEAD` gave before."""
    tree = git_out(bare, "rev-parse", "main^{tree}")
    loose = git_out(
        bare,
        "-c",
        "user.name=x",
        "-c",
        "user.email=x@x",
        "commit-tree",
        "-p",
        "main",
        "-m",
        "not on a branch",
        tree,
    )
    git_out(bare, "update-ref", "--no-deref", "HEAD", loose)
    with pytest.raises(PermanentError, match="git symbolic-ref failed .*not a symbolic ref"):
        await prepare(tmp_path, bare.as_uri(), base=None)
    assert not (tmp_path / "ws" / "3f2a9c1d-7777").exists()


async def test_untracked_files_are_committed_whatever_the_workspace_config_hides(tmp_path, bare):
    """The quick "nothing to commit" check must see everything `git add -A` would stage."""
    ws = await prepare(tmp_path, str(bare))
    await agent_git(ws, "config", "status.showUntrackedFiles", "no")
    (ws.path / "new").mkdir()
    (ws.path / "new" / "file.txt").write_text("hidden from a plain git status\n")
    result = await push(ws, "add a file")
    assert result is not None and result.files_changed == ["new/file.txt"]


async def test_ignored_files_alone_are_no_change(tmp_path, bare):
    ws = await prepare(tmp_path, str(bare))
    (ws.path / ".git" / "info" / "exclude").write_text("build/\n")
    (ws.path / "build").mkdir()
    (ws.path / "build" / "out.o").write_text("x")
    assert await push(ws, "nothing") is None


async def test_detached_workspace_is_refused(tmp_path, bare):
    ws = await prepare(tmp_path, str(bare))
    await agent_git(ws, "checkout", "-q", "--detach")
    with pytest.raises(PermanentError, match=r"on \(detached HEAD\), not on its branch"):
        await push(ws, "x")


async def test_resume_reuses_prepared_workspace(tmp_path, bare):
    ws = await prepare(tmp_path, str(bare))
    (ws.path / "work.txt").write_text("in progress\n")
    again = await prepare(tmp_path, str(bare))
    assert again == ws
    assert (again.path / "work.txt").read_text() == "in progress\n"


async def test_half_made_workspace_is_cloned_again(tmp_path, bare):
    leftover = tmp_path / "ws" / "3f2a9c1d-7777"
    (leftover / "junk").mkdir(parents=True)
    ws = await prepare(tmp_path, str(bare))
    assert not (leftover / "junk").exists()
    assert (ws.path / "calc.py").exists()


async def test_a_dead_clones_staging_directory_is_removed_and_no_other(tmp_path, bare):
    """A daemon killed mid-clone leaves `.staging-<task>-<random>`; the next clone of that task
    removes it (read-only leftovers included), and leaves other tasks' alone."""
    root = tmp_path / "ws"
    dead = root / ".staging-3f2a9c1d-7777-0badc0de"
    other = root / ".staging-3f2a9c1d-8888-0badc0de"
    for leftover in (dead, other):
        (leftover / "sub").mkdir(parents=True)
        (leftover / "sub" / "f").write_text("x")
    (dead / "sub").chmod(0o500)
    ws = await prepare(tmp_path, str(bare))
    assert (ws.path / "calc.py").exists()
    assert sorted(p.name for p in root.iterdir()) == [".owned", other.name, ws.path.name]


async def test_file_system_calls_stay_off_the_trio_thread(tmp_path, bare, file_system_on_loop):
    """A rename or a stat can wait for the file system's journal while hundreds of clones
    write: none of a workspace's own file system calls may run on the event loop's thread."""
    (tmp_path / "ws" / "3f2a9c1d-7777" / "half-made").mkdir(parents=True)  # to be replaced
    with file_system_on_loop() as seen:
        ws = await prepare(tmp_path, str(bare))
        assert await prepare(tmp_path, str(bare)) == ws  # reused: its marker read off-loop too
    (ws.path / "calc.py").write_text("def add(a, b):\n    return a + b\n")  # the agent's edit
    with file_system_on_loop() as seen_later:
        assert await push(ws, "Fix add") is not None
        assert await gc_workspaces(tmp_path / "ws", keep=keep_none) == [ws.path.name]
    assert seen == [] and seen_later == []


async def test_a_damaged_marker_is_refused_not_wiped(tmp_path, bare):
    ws = await prepare(tmp_path, str(bare))
    (ws.path / "work.txt").write_text("the agent's work\n")
    (ws.owned / "state.json").write_text("null")
    with pytest.raises(PermanentError, match="damaged record"):
        await prepare(tmp_path, str(bare))
    assert (ws.path / "work.txt").read_text() == "the agent's work\n"


async def test_a_lost_marker_stops_the_push(tmp_path, bare):
    ws = await prepare(tmp_path, str(bare))
    (ws.path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (ws.owned / "state.json").unlink()
    with pytest.raises(PermanentError, match="lost its record"):
        await push(ws, "Fix add")


async def test_workspace_off_its_branch_is_refused(tmp_path, bare):
    ws = await prepare(tmp_path, str(bare))
    await agent_git(ws, "checkout", "-q", "-b", "elsewhere")
    with pytest.raises(PermanentError, match="on elsewhere, not on its branch"):
        await push(ws, "x")


async def test_quota_exceeded_after_clone_removes_the_clone(tmp_path, bare):
    with pytest.raises(PermanentError, match=r"workspace quota exceeded: [\d.]+ MB > 0\.0 MB"):
        await prepare(tmp_path, str(bare), quota_bytes=1000)
    assert not (tmp_path / "ws" / "3f2a9c1d-7777").exists()


async def test_quota_recheck_later(tmp_path, bare):
    ws = await prepare(tmp_path, str(bare), quota_bytes=2_000_000)
    assert await check_quota(ws, 2_000_000) < 2_000_000
    (ws.path / "big.bin").write_bytes(os.urandom(3_000_000))
    with pytest.raises(PermanentError, match=r"workspace quota exceeded: 3\.\d MB > 2\.0 MB"):
        await check_quota(ws, 2_000_000)


async def test_not_enough_free_disk_is_transient(tmp_path, bare):
    with pytest.raises(TransientError, match="not enough free disk space") as info:
        await prepare(tmp_path, str(bare), min_free_bytes=10**18)
    assert info.value.code == "disk_full"
    assert not (tmp_path / "ws" / "3f2a9c1d-7777").exists()


async def test_missing_local_repository_is_permanent(tmp_path):
    with pytest.raises(PermanentError, match="git clone failed: repository not found"):
        await prepare(tmp_path, str(tmp_path / "nope.git"))


async def test_missing_base_branch_is_permanent(tmp_path, bare):
    with pytest.raises(PermanentError, match="branch not found on the remote"):
        await prepare(tmp_path, str(bare), base="no-such-branch")


async def test_local_remote_refused_unless_allowed(tmp_path, bare):
    with pytest.raises(PermanentError, match="local repository paths are not allowed"):
        await prepare(tmp_path, str(bare), allow_local=False)


async def test_hooks_never_run(tmp_path, bare):
    ws = await prepare(tmp_path, str(bare))
    witness = tmp_path / "hook-ran"
    for hook in ("pre-commit", "commit-msg", "pre-push", "reference-transaction"):
        script = ws.path / ".git" / "hooks" / hook
        script.write_text(f"#!/bin/sh\ntouch {witness}\n")
        script.chmod(0o755)
    (ws.path / "x.txt").write_text("x\n")
    assert await push(ws, "x") is not None
    assert not witness.exists()


async def test_the_push_goes_to_the_tasks_remote_whatever_the_workspace_config_says(tmp_path, bare):
    ws = await prepare(tmp_path, str(bare))
    evil = make_bare_repo(tmp_path / "evil")
    for key, value in (
        (f"url.{evil.as_uri()}.insteadOf", bare.as_uri()),
        (f"url.{evil.as_uri()}.pushInsteadOf", bare.as_uri()),
        ("remote.origin.pushurl", evil.as_uri()),
        ("remote.origin.url", evil.as_uri()),
    ):
        await agent_git(ws, "config", key, value)
    (ws.path / "x.txt").write_text("x\n")
    result = await push(ws, "x")
    assert git_out(bare, "rev-parse", f"refs/heads/{ws.branch}") == result.commit
    assert "agentd/" not in git_out(evil, "for-each-ref")


async def test_gc_removes_only_what_keep_rejects(tmp_path):
    root = tmp_path / "ws"
    for name in ("task-a", "task-b", "task-c", ".tmp"):
        (root / name / "sub").mkdir(parents=True)
    # The agent may leave read-only directories behind.
    (root / "task-c" / "sub" / "f").write_text("x")
    (root / "task-c" / "sub").chmod(0o500)

    (root / ".owned" / "task-d").mkdir(parents=True)  # its workspace is gone already
    (root / ".owned" / "task-b").mkdir(parents=True)

    async def keep_b(task_id: str) -> bool:
        return task_id == "task-b"

    removed = await gc_workspaces(root, keep=keep_b)

    assert removed == ["task-a", "task-c", "task-d"]
    assert sorted(p.name for p in root.iterdir()) == [".owned", ".tmp", "task-b"]
    assert [p.name for p in (root / ".owned").iterdir()] == ["task-b"]
    assert await gc_workspaces(tmp_path / "missing", keep=keep_none) == []


async def test_gc_asks_about_each_workspace_when_it_gets_to_it(tmp_path):
    """A task whose record appears while gc runs (a clone just moved into place) keeps its
    workspace: gc asks about each one as it gets to it, not from an earlier look."""
    root = tmp_path / "ws"
    for name in ("task-a", "task-new"):
        (root / name).mkdir(parents=True)
    known: set[str] = set()

    async def keep(task_id: str) -> bool:
        if task_id == "task-a":  # meanwhile, task-new's record is written
            known.add("task-new")
        return task_id in known

    assert await gc_workspaces(root, keep) == ["task-a"]
    assert (root / "task-new").is_dir()


def test_branch_name_slug():
    assert branch_name("3F2A9C1D-aaaa", "Fix: the *weird* bug!") == "agentd/3f2a9c1d-fix-the-weird-bug"
    assert branch_name("abc", "") == "agentd/abc-task"
    long = branch_name("abcdef0123", "word " * 30)
    assert len(long) <= len("agentd/abcdef01-") + 40 and not long.endswith("-")


async def test_timeout_is_transient_and_cancel_kills_git(tmp_path):
    """A server that accepts and never answers: the timeout gives TransientError, and
    cancellation kills git (its connection is closed without a sleep to wait for it)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    url = f"http://127.0.0.1:{port}/repo.git"
    accepted: list[trio.SocketStream] = []
    connected = trio.Event()

    async def accept_forever():
        while True:
            stream = await listeners[0].accept()
            accepted.append(stream)
            connected.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_forever)
        with pytest.raises(TransientError, match="timed out after 0.5 s"):
            await run_git(["ls-remote", "--", url], timeout=0.5, allow_local=True)

        connected = trio.Event()
        with trio.CancelScope() as scope:
            nursery.start_soon(_cancel_when, connected, scope)
            await run_git(["ls-remote", "--", url], timeout=30, allow_local=True)
        assert scope.cancelled_caught
        stream = accepted[-1]
        with trio.fail_after(5):
            while await stream.receive_some(65536):
                pass  # the request git sent, then EOF once it is dead
        nursery.cancel_scope.cancel()
    await listeners[0].aclose()


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def test_empty_files_count_against_the_quota(tmp_path, bare):
    """A million empty files use no blocks but fill the inode table: each counts 512 bytes."""
    ws = await prepare(tmp_path, str(bare), quota_bytes=4_000_000)
    many = ws.path / "many"
    many.mkdir()
    for i in range(8000):
        (many / str(i)).touch()
    with pytest.raises(PermanentError, match="workspace quota exceeded"):
        await check_quota(ws, 4_000_000)


async def test_a_tree_thousands_deep_is_measured_and_removed(tmp_path):
    """os.walk and shutil.rmtree recurse: an agent's `mkdir a; cd a` loop must not crash the
    quota check or the collector (which would stop the daemon at every start)."""
    root = tmp_path / "ws"
    deep = root / "task-deep"
    deep.mkdir(parents=True)

    def chain() -> None:
        fd = os.open(deep, os.O_RDONLY)
        for _ in range(3000):
            os.mkdir("a", dir_fd=fd)
            child = os.open("a", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(fd)

    await trio.to_thread.run_sync(chain)
    assert await workspace_size(deep) >= 3000 * 512
    assert await gc_workspaces(root, keep_none) == ["task-deep"]
    assert not deep.exists()
