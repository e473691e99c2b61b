"""The agent's work leaves its workspace as data only: the workspace's git config, hooks and
attributes act inside the sandbox or not at all, never on the host; the push comes from
agentd's own copy and goes to the task's remote only."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from daemon.errors import PermanentError
from daemon.git import ClonePolicy, CloneRequest, prepare_workspace, run_git
from daemon.git.export import export_bundle
from tests.fakes.git_http import git_out, make_bare_repo
from tests.helpers import sandboxed_push

pytestmark = pytest.mark.slow

IDENTITY = ("agentd bot", "agentd@example.invalid")
PROJECT = {"README.md": "# project\n", "calc.py": "def add(a, b):\n    return a - b\n"}


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    return make_bare_repo(tmp_path / "remotes", branches={"main": PROJECT})


async def prepare(tmp_path: Path, bare: Path):
    return await prepare_workspace(
        CloneRequest("5eed0001", str(bare), "main", title="Attack"),
        ClonePolicy(
            tmp_path / "data" / "workspaces",
            IDENTITY,
            quota_bytes=50_000_000,
            min_free_bytes=0,
            allow_local=True,
        ),
    )


async def agent_git(ws, *args: str) -> None:
    await run_git(["-c", "safe.directory=*", *args], cwd=ws.path)


def pushed_files(bare: Path, branch: str) -> list[str]:
    return git_out(bare, "ls-tree", "-r", "--name-only", f"refs/heads/{branch}").splitlines()


async def test_programs_named_by_the_workspace_config_never_run_on_the_host(tmp_path, bare):
    ws = await prepare(tmp_path, bare)
    marker = tmp_path / "host-marker"
    run = f"sh -c 'echo ran >> {marker}'"
    settings = {
        "filter.evil.clean": f"{run}; cat",
        "filter.evil.smudge": f"{run}; cat",
        "filter.evil.process": run,
        "core.fsmonitor": run,
        "core.pager": run,
        "core.editor": run,
        "sequence.editor": run,
        "diff.external": run,
        "core.sshCommand": run,
        "core.gitProxy": run,
        "credential.helper": f"!{run}",
        "gpg.program": run,
        "commit.gpgSign": "true",
        "tag.gpgSign": "true",
        "uploadpack.packObjectsHook": run,
        "core.alternateRefsCommand": run,
        "core.hooksPath": str(tmp_path / "hooks"),
        "include.path": str(tmp_path / "included"),
        f"includeIf.gitdir:{ws.path}/.path": str(tmp_path / "included"),
    }
    (tmp_path / "included").write_text(f"[core]\n\tfsmonitor = {run}\n")
    (tmp_path / "hooks").mkdir()
    for key, value in settings.items():
        await agent_git(ws, "config", key, value)
    for hook in (
        "pre-commit",
        "prepare-commit-msg",
        "commit-msg",
        "post-commit",
        "pre-push",
        "reference-transaction",
        "post-index-change",
        "pre-auto-gc",
    ):
        for where in (ws.path / ".git" / "hooks", tmp_path / "hooks"):
            script = where / hook
            script.write_text(f"#!/bin/sh\necho ran >> {marker}\n")
            script.chmod(0o755)
    (ws.path / ".gitattributes").write_text("* filter=evil diff=evil\n")
    (ws.path / "calc.py").write_text("def add(a, b):\n    return a + b\n")

    refs = git_out(bare, "for-each-ref")
    try:
        result = await sandboxed_push(ws, "Fix add", identity=IDENTITY)
    except PermanentError as e:  # a program the config names failed git in the sandbox: fine
        assert e.code == "workspace_git" and "git failed in the workspace" in str(e)
        result = None

    assert not marker.exists(), marker.read_text()
    if result is None:
        assert git_out(bare, "for-each-ref") == refs
    else:
        assert sorted(pushed_files(bare, ws.branch)) == [".gitattributes", "README.md", "calc.py"]
        assert git_out(bare, "log", "-1", "--format=%an <%ae>", result.commit) == (
            "agentd bot <agentd@example.invalid>"
        )


async def test_hooks_and_a_failing_filter_do_not_stop_the_delivery(tmp_path, bare):
    """The repository's own hooks are not delivery's business: they are off."""
    ws = await prepare(tmp_path, bare)
    for hook in ("pre-commit", "commit-msg", "post-commit", "reference-transaction"):
        script = ws.path / ".git" / "hooks" / hook
        script.write_text("#!/bin/sh\nexit 1\n")
        script.chmod(0o755)
    await agent_git(ws, "config", "filter.broken.clean", "false")
    (ws.path / ".gitattributes").write_text("*.py filter=broken\n")
    (ws.path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    result = await sandboxed_push(ws, "Fix add", identity=IDENTITY)
    assert result is not None and "calc.py" in result.files_changed


async def test_a_worktree_pointed_at_the_data_dir_pushes_nothing_of_it(tmp_path, bare):
    """core.worktree at the daemon's data dir: inside the sandbox that path does not exist,
    so the secrets there can be neither committed nor pushed."""
    ws = await prepare(tmp_path, bare)
    data = tmp_path / "data"
    (data / "secret.key").write_text("the daemon's secret\n")
    (data / "agentd.db").write_bytes(b"SQLite format 3\x00")
    await agent_git(ws, "config", "core.worktree", str(data))
    (ws.path / "new.txt").write_text("the agent's work\n")

    try:
        result = await sandboxed_push(ws, "work", identity=IDENTITY)
    except PermanentError as e:  # git in the sandbox made nothing usable of it: fine too
        assert e.code == "workspace_git" and "made no bundle" in str(e)
        result = None
    pushed = set(pushed_files(bare, ws.branch)) if result else set()
    assert not pushed & {"secret.key", "agentd.db", "workspaces/5eed0001/new.txt"}
    assert all(not name.startswith(("workspaces/", ".owned")) for name in pushed)


async def test_submodules_are_not_followed_on_the_host(tmp_path, bare):
    ws = await prepare(tmp_path, bare)
    marker = tmp_path / "host-marker"
    other = make_bare_repo(tmp_path / "other", branches={"main": {"x": "x\n"}})
    (ws.path / ".gitmodules").write_text(
        f'[submodule "sub"]\n\tpath = sub\n\turl = {other}\n\tupdate = !sh -c "touch {marker}"\n'
    )
    await agent_git(ws, "config", "submodule.recurse", "true")
    await agent_git(ws, "config", "push.recurseSubmodules", "on-demand")
    (ws.path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    refs = git_out(bare, "for-each-ref")
    # A .gitmodules that runs a command on `git submodule update` is refused as git's fsck
    # refuses it: the daemon checks every object it takes.
    with pytest.raises(PermanentError, match="gitmodulesUpdate") as info:
        await sandboxed_push(ws, "x", identity=IDENTITY)
    assert info.value.code == "workspace_bundle"
    assert not marker.exists()
    assert "agentd/" not in git_out(other, "for-each-ref")
    assert git_out(bare, "for-each-ref") == refs


async def test_a_malformed_object_from_the_workspace_is_refused(tmp_path, bare):
    """git before 2.46 fetches a bundle without checking its objects: agentd checks them."""
    ws = await prepare(tmp_path, bare)
    tree = git_out(ws.path, "-c", "safe.directory=*", "rev-parse", "HEAD^{tree}")
    bad = (
        f"tree {tree}\nparent {ws.base_commit}\n"
        "author A <a@b> 1700000000 +99999\ncommitter A <a@b> 1700000000 +99999\n\nbad\n"
    )
    done = subprocess.run(
        ["git", "-c", "safe.directory=*", "hash-object", "-t", "commit", "--literally", "-w", "--stdin"],
        cwd=ws.path,
        input=bad,
        text=True,
        capture_output=True,
        check=True,
    )
    await agent_git(ws, "update-ref", f"refs/heads/{ws.branch}", done.stdout.strip())
    refs = git_out(bare, "for-each-ref")
    with pytest.raises(PermanentError, match="badTimezone") as info:
        await sandboxed_push(ws, "x", identity=IDENTITY)
    assert info.value.code == "workspace_bundle"
    assert git_out(bare, "for-each-ref") == refs


async def test_the_daemons_environment_never_reaches_the_sandboxed_git(tmp_path, bare, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-must-not-leak")
    monkeypatch.setenv("AGENTD_SECRET_KEYS", "secret-key-must-not-leak")
    ws = await prepare(tmp_path, bare)
    # The clean filter writes its environment into the file being committed.
    await agent_git(ws, "config", "filter.dump.clean", "env")
    (ws.path / ".gitattributes").write_text("env.txt filter=dump\n")
    (ws.path / "env.txt").write_text("placeholder\n")
    result = await sandboxed_push(ws, "env", identity=IDENTITY)
    dumped = git_out(bare, "show", f"{result.commit}:env.txt")
    assert "PATH=" in dumped  # the filter ran, in the sandbox
    assert "must-not-leak" not in dumped


async def test_a_bundle_that_is_not_one_is_refused(tmp_path, bare):
    """What comes out of the sandbox is checked: garbage instead of a bundle stops the push."""
    ws = await prepare(tmp_path, bare)
    (ws.path / "x.txt").write_text("x\n")

    class Liar:  # a sandbox whose git was replaced by something hostile
        def command(self, argv):
            return ["sh", "-c", "printf 'not a bundle\\n'"], {"env": {"PATH": os.defpath}}

    from daemon.git import commit_and_push

    refs = git_out(bare, "for-each-ref")
    with pytest.raises(PermanentError, match="could not be taken") as info:
        await commit_and_push(ws, "x", token=None, confinement=Liar(), identity=IDENTITY)
    assert info.value.code == "workspace_bundle"
    assert git_out(bare, "for-each-ref") == refs


async def test_a_flood_on_stderr_is_cut(tmp_path, bare):
    ws = await prepare(tmp_path, bare)

    class Noisy:
        def command(self, argv):
            script = "head -c 50000000 /dev/zero | tr '\\0' x >&2; exit 7"
            return ["sh", "-c", script], {"env": {"PATH": os.defpath}}

    with pytest.raises(PermanentError, match=r"exit 7") as info:
        await export_bundle(
            ws.path,
            tmp_path / "b.bundle",
            branch=ws.branch,
            base_commit=ws.base_commit,
            message="x",
            identity=IDENTITY,
            confinement=Noisy(),
        )
    assert len(str(info.value)) < 10_000


async def test_a_host_git_refuses_a_workspace_the_sandbox_owns(tmp_path, bare):
    """Defence in depth: once the task's sandbox has the workspace, a git started on the host
    (as a later change might forget the first layer) refuses it."""
    if os.geteuid() != 0:
        pytest.skip("the sandbox runs as the daemon's own user when it is not root")
    ws = await prepare(tmp_path, bare)
    from daemon.agent.tools import ToolSettings
    from daemon.agent.tools.sandbox import TaskSandbox

    async with TaskSandbox(ws.path, ToolSettings()):
        done = subprocess.run(
            ["git", "-C", str(ws.path), "status"],
            capture_output=True,
            text=True,
            env={"PATH": os.defpath, "HOME": str(tmp_path)},
        )
    assert done.returncode != 0 and "dubious ownership" in done.stderr


async def test_the_owned_repository_is_a_bare_copy_with_agentds_config(tmp_path, bare):
    ws = await prepare(tmp_path, bare)
    repo = ws.owned / "repo.git"
    config = (repo / "config").read_text()
    assert "bare = true" in config and "remote" not in config and "branch" not in config
    assert not (repo / "hooks").exists() and not (repo / "index").exists()
    assert git_out(repo, "rev-parse", f"refs/heads/{ws.branch}") == ws.base_commit
    assert (repo / "shallow").read_text().strip() == ws.base_commit


async def test_a_long_message_and_a_lock_a_killed_export_left(tmp_path, bare):
    """The message goes on stdin (an argument holds 128 KiB at most: 50,000 CJK characters of
    prompt already failed); a lock left by an export killed at its timeout is stale."""
    ws = await prepare(tmp_path, bare)
    (ws.path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (ws.path / ".git" / "index.lock").write_text("")
    (ws.owned / "repo.git" / "refs" / "heads" / "agentd").mkdir(parents=True, exist_ok=True)
    (ws.owned / "repo.git" / "refs" / "heads" / f"{ws.branch}.lock").write_text("")
    message = "修正" * 60_000
    result = await sandboxed_push(ws, message, identity=IDENTITY)
    assert git_out(bare, "log", "-1", "--format=%B", result.commit).strip() == message
