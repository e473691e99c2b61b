"""``GET /api/tasks/{id}/diff``: the patch of a task's pushed work, read on the host from the
repository agentd owns, where every blob and path is the agent's.

The attack: an agent that plants a ``.gitattributes`` naming a diff driver, defines the driver
(``textconv``, ``command``) and ``diff.external`` in its workspace's git config, and names its
files with HTML and terminal escapes. Each program would write a line, with the directory it
ran in, to a marker file on the host. Nothing may run in the owned repository, and the names
and contents come out as JSON text. A second test breaks the first layer on purpose (the
owned repository's own config and attributes, the global config and the environment hostile
too) to show the diff's flags hold on their own.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import trio

from daemon.agent.loop import AgentRunner
from daemon.agent.scripted_provider import ScriptedProvider
from daemon.git import owned as owned_repo
from daemon.states import TaskStatus

from .agent_env import agent_settings, bare_repo, text, tool_use
from .fakes.git_http import make_bare_repo
from .fakes.phone import running_daemon
from .helpers import wait_status

ESC_NAME = "\x1b[31mred.txt"
HTML_NAME = "<img src=x onerror=alert(1)>.py"


def hostile_commands(mark: str) -> str:
    """What the agent runs in its workspace: drivers that would report where they ran."""
    return "\n".join(
        [
            "set -e",
            f"git config diff.evil.textconv 'echo textconv $PWD >> {mark}; cat'",
            f"git config diff.evil.command 'echo command $PWD >> {mark}; true'",
            f"git config diff.external 'echo external $PWD >> {mark}; true'",
            "printf '* diff=evil\\n' > .gitattributes",
            f"printf 'print(\"<script>alert(1)</script>\")\\n' > '{HTML_NAME}'",
            "printf 'red \\033[31m text\\n' > \"$(printf '\\033[31mred.txt')\"",
            # Two files of 700 kB: a patch over the 1 MiB cap.
            "python3 -c \"open('big1.txt','w').write(('a'*99+'\\n')*7000)\"",
            "python3 -c \"open('big2.txt','w').write(('b'*99+'\\n')*7000)\"",
        ]
    )


def ran_in(marker) -> list[str]:
    return marker.read_text().splitlines() if marker.exists() else []


@pytest.mark.slow
async def test_the_diff_is_the_agents_work_as_text_and_nothing_of_it_runs(tmp_path):
    marker = tmp_path / "ran"
    script = {
        "turns": [
            {"content": [tool_use("t1", "bash", command=hostile_commands(str(marker)))]},
            {"content": [text("Done.")]},
        ]
    }
    runner = AgentRunner(ScriptedProvider(script), agent_settings(tmp_path / "data"))
    remote = bare_repo(tmp_path)
    async with running_daemon(tmp_path, runner) as server:
        _, alice = await server.user("alice")
        _, bob = await server.user("bob")
        await server.store.upsert_user("olga", is_operator=True)
        _, operator = await server.user("olga")
        async with server.client(alice) as http:
            created = await http.post("/api/tasks", json={"repo_url": str(remote), "prompt": "go"})
            task_id = created.json()["id"]
            with trio.fail_after(60):
                status = await wait_status(
                    server.daemon.hub, task_id, TaskStatus.SUCCEEDED, TaskStatus.FAILED
                )
            task = await server.store.get_task(task_id)
            assert status is TaskStatus.SUCCEEDED, task.error
            answer = await http.get(f"/api/tasks/{task_id}/diff")
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
        body = answer.json()
        ready = [e for e in await server.store.read_events(task_id) if e.type == "workspace.ready"]
        assert (body["commit"], body["branch"]) == (task.diff["commit"], task.branch)
        assert body["base_commit"] == ready[0].data["commit"]
        patch = body["patch"]
        # Cut at the cap, at a line end.
        assert body["truncated"] is True and body["bytes"] <= 1 << 20
        assert patch.endswith("\n") and len(patch.encode()) == body["bytes"] > (1 << 20) - 200
        # Names and contents as data: the escape in a name quoted by git, the HTML as it was.
        assert 'diff --git "a/\\033[31mred.txt" "b/\\033[31mred.txt"' in patch
        assert "+red \x1b[31m text\n" in patch  # content stays the agent's bytes, as text
        assert f"diff --git a/{HTML_NAME} b/{HTML_NAME}" in patch
        assert '+print("<script>alert(1)</script>")' in patch and "+* diff=evil" in patch
        assert b"\x1b" not in answer.content  # JSON escapes every control character
        # Nothing ran on the host: no driver, no external diff, in the owned repository or
        # anywhere else the daemon's git runs (the sandbox cannot reach the marker's path).
        assert ran_in(marker) == []
        async with server.client(operator) as http:
            assert (await http.get(f"/api/tasks/{task_id}/diff")).json()["patch"] == patch
        async with server.client(bob) as http:
            stranger = await http.get(f"/api/tasks/{task_id}/diff")
            assert stranger.status_code == 404 and stranger.json()["error"]["code"] == "not_found"
        async with server.client(alice) as http:
            await server.store.update_task(task_id, diff=None)
            none_yet = await http.get(f"/api/tasks/{task_id}/diff")
            assert none_yet.status_code == 404 and "pushed no commit" in none_yet.json()["error"]["message"]
            await server.store.update_task(task_id, diff=task.diff)
            owned = owned_repo.owned_path(tmp_path / "data" / "workspaces", task_id)
            await trio.to_thread.run_sync(shutil.rmtree, owned)
            gone = await http.get(f"/api/tasks/{task_id}/diff")
            assert gone.status_code == 404 and "removed" in gone.json()["error"]["message"]
            assert (await http.get("/api/tasks/01m8bz0000000000000000000/diff")).status_code == 404
        async with server.client() as anonymous:
            assert (await anonymous.get(f"/api/tasks/{task_id}/diff")).status_code == 401


def git(cwd, *args: str) -> str:
    ident = ["-c", "user.name=Agent", "-c", "user.email=agent@example.invalid"]
    return subprocess.run(
        ["git", *ident, *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
async def hostile_owned(tmp_path, monkeypatch):
    """An owned repository made as delivery makes it (a fresh clone's copy, then the agent's
    commits through a bundle, checked), then every other layer made hostile on purpose:
    its own config and info/attributes, the user's global config, the daemon's environment."""
    marker = tmp_path / "ran"
    remote = make_bare_repo(tmp_path, branches={"main": {"README.md": "# r\n"}})
    workspace = tmp_path / "ws"
    git(tmp_path, "clone", "--quiet", str(remote), str(workspace))
    base = git(workspace, "rev-parse", "HEAD")
    owned = tmp_path / "owned"
    await owned_repo.make_owned(workspace, owned)
    git(workspace, "checkout", "--quiet", "-b", "work")
    (workspace / ".gitattributes").write_text("* diff=evil\n")
    (workspace / HTML_NAME).write_text("<b>bold</b>\n")
    (workspace / ESC_NAME).write_text("line one\nline two\n" * 20)
    git(workspace, "add", "-A")
    git(workspace, "commit", "--quiet", "-m", "work")
    git(workspace, "bundle", "create", "--quiet", str(tmp_path / "b.bundle"), "refs/heads/work", f"^{base}")
    head = await owned_repo.fetch_bundle(owned, tmp_path / "b.bundle", "work")
    drivers = (
        f'[diff "evil"]\n\ttextconv = echo textconv $PWD >> {marker}; cat\n'
        f"\tcommand = echo command $PWD >> {marker}; true\n"
        f"[diff]\n\texternal = echo external $PWD >> {marker}; true\n"
    )
    repo = owned / "repo.git"
    (repo / "config").write_text((repo / "config").read_text() + drivers)
    (repo / "info").mkdir(exist_ok=True)
    (repo / "info" / "attributes").write_text("* diff=evil\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(drivers + f"[core]\n\tattributesFile = {workspace / '.gitattributes'}\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_EXTERNAL_DIFF", f"touch {marker}")
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'diff.external'='touch'")
    return owned, base, head, marker


async def test_the_diffs_own_flags_hold_when_every_other_layer_is_hostile(hostile_owned):
    owned, base, head, marker = hostile_owned
    patch = await owned_repo.patch(owned, base, head)
    assert marker.exists() is False
    assert not patch.truncated and patch.size == len(patch.text.encode())
    assert "diff --git a/.gitattributes b/.gitattributes\n" in patch.text
    assert 'diff --git "a/\\033[31mred.txt" "b/\\033[31mred.txt"' in patch.text
    # git ends a name with a space in it with a tab on its ---/+++ lines.
    assert f"+++ b/{HTML_NAME}\t\n" in patch.text and "+<b>bold</b>\n" in patch.text
    assert "\x1b" not in patch.text  # here the only escape was in a name: quoted
    json.dumps(patch.text)  # plain text, as the route sends it

    cut = await owned_repo.patch(owned, base, head, cap=300)
    assert cut.truncated and cut.size <= 300 and cut.text.endswith("\n")
    assert patch.text.startswith(cut.text)


async def test_only_object_ids_reach_the_diffs_command_line(hostile_owned):
    owned, base, head, marker = hostile_owned
    for bad_base, bad_head in [
        (f"--output={marker}", head),
        (base, "--ext-diff"),
        (base, "HEAD"),
        (base[:39], head),
        (base, head + "0" * 24),  # a SHA-256 length against a SHA-1 one
    ]:
        with pytest.raises(ValueError):
            await owned_repo.patch(owned, bad_base, bad_head)
    assert not marker.exists()
