"""Repository instructions (AGENTS.md, CLAUDE.md): what the model is given, where, and what a
hostile workspace cannot make the daemon read.

Whole tasks run through the real anthropic SDK against the fake Messages API, which records the
requests; the attacks on the reading itself run against real files (links, FIFOs, sparse files).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

from daemon.agent import instructions
from daemon.agent.instructions import Instructions, read_dir
from daemon.agent.tools import fs_beneath
from daemon.states import TaskStatus

from . import agent_env
from .agent_env import BUGGY_PROJECT, tool_use
from .fakes.anthropic_api import message

ROOT_AGENTS = "Run the tests with python3 test_calc.py before you finish.\n"
ROOT_CLAUDE = "Never touch README.md.\n"
PKG_AGENTS = "In pkg/, keep every function under ten lines.\n"
PROJECT = {
    **BUGGY_PROJECT,
    "AGENTS.md": ROOT_AGENTS,
    "CLAUDE.md": ROOT_CLAUDE,
    "pkg/AGENTS.md": PKG_AGENTS,
    "pkg/mod.py": "X = 1\n",
}
VIEW_PKG = tool_use("toolu_1", "str_replace_based_edit_tool", command="view", path="pkg/mod.py")
VIEW_CALC = tool_use("toolu_2", "str_replace_based_edit_tool", command="view", path="calc.py")
VIEW_PKG_AGAIN = tool_use("toolu_3", "str_replace_based_edit_tool", command="view", path="pkg/mod.py")
DONE = message("Nothing to change.")


async def run_with_claude(tmp_path, store, hub, files, replies, **settings: Any):
    fake, task, _ = await agent_env.run_with_claude(
        store, hub, tmp_path, replies, files=files, prompt="Look around", **settings
    )
    return [r.body for r in fake.requests], task


def uncached(value: Any) -> Any:
    """``value`` without its ``cache_control`` marks (the newest-message breakpoint moves)."""
    if isinstance(value, list):
        return [uncached(v) for v in value]
    if isinstance(value, dict):
        return {k: uncached(v) for k, v in value.items() if k != "cache_control"}
    return value


def texts(turn: dict[str, Any]) -> list[str]:
    return [b["text"] for b in turn["content"] if b.get("type") == "text"]


@pytest.mark.slow
async def test_instructions_are_in_the_cached_prefix_and_a_subdirectorys_come_once(store, hub, tmp_path):
    bodies, task = await run_with_claude(
        tmp_path, store, hub, PROJECT, [message(VIEW_PKG), message(VIEW_CALC, VIEW_PKG_AGAIN), DONE]
    )
    assert task.status is TaskStatus.SUCCEEDED, task.error
    first, second, third = bodies
    # The root's files end the system prompt, one block carrying a cache breakpoint: the same
    # bytes in every request, so the prefix up to it is read from the cache.
    (system,) = first["system"]
    assert system["cache_control"] == {"type": "ephemeral"}
    assert (
        "## AGENTS.md\n" + ROOT_AGENTS.rstrip() in system["text"]
        and "## CLAUDE.md\n" + ROOT_CLAUDE.rstrip() in system["text"]
    )
    assert PKG_AGENTS not in system["text"]
    assert second["system"] == third["system"] == first["system"]
    assert texts(first["messages"][0]) == ["Look around"]
    # pkg/'s file comes with the result of the first call that worked there, after the result.
    results = second["messages"][2]["content"]
    assert [b["type"] for b in results] == ["tool_result", "text"]
    assert results[1]["text"].startswith("[agentd] Repository instructions for pkg/")
    assert "## pkg/AGENTS.md\n" + PKG_AGENTS.rstrip() in results[1]["text"]
    # Earlier turns are never rewritten: each request extends the one before.
    assert uncached(third["messages"][:3]) == uncached(second["messages"])
    assert uncached(second["messages"][:1]) == uncached(first["messages"])
    # Working in pkg/ again gives nothing more.
    assert [b["type"] for b in third["messages"][4]["content"]] == ["tool_result", "tool_result"]


@pytest.mark.slow
async def test_what_is_over_the_cap_is_cut_and_the_model_is_told(store, hub, tmp_path):
    files = {**BUGGY_PROJECT, "AGENTS.md": "rule\n" * 2000, "CLAUDE.md": "more\n"}
    bodies, task = await run_with_claude(tmp_path, store, hub, files, [DONE], instructions_cap_bytes=1000)
    assert task.status is TaskStatus.SUCCEEDED, task.error
    system = bodies[0]["system"][0]["text"]
    assert (
        system.count("rule\n") == 200 and "more" not in system.split("## CLAUDE.md")[1].split("[agentd]")[0]
    )
    assert (
        "[agentd] The repository instructions are capped at 1000 bytes in all; not shown: "
        "AGENTS.md (9000 bytes cut), CLAUDE.md (5 bytes cut)." in system
    )


@pytest.mark.slow
async def test_links_and_fifos_the_agent_makes_are_not_read_and_do_not_block(store, hub, tmp_path):
    secret = tmp_path / "secret.key"
    secret.write_text("SECRET-KEY-MATERIAL\n")
    make = tool_use(
        "toolu_1",
        "bash",
        command=f"mkdir sub && mkfifo sub/AGENTS.md && ln -s {secret} sub/CLAUDE.md && echo x > sub/f",
    )
    view = tool_use("toolu_2", "str_replace_based_edit_tool", command="view", path="sub/f")
    with trio.fail_after(60):
        bodies, task = await run_with_claude(tmp_path, store, hub, None, [message(make), message(view), DONE])
    assert task.status is TaskStatus.SUCCEEDED, task.error
    made, viewed = bodies[1]["messages"][2]["content"], bodies[2]["messages"][4]["content"]
    assert [b.get("is_error", False) for b in made + viewed] == [False, False]  # all was there
    assert "Repository instructions" not in str(bodies[2]) and "SECRET" not in str(bodies[2])


# --- the reading itself, against a hostile workspace ------------------------------------------


def workspace(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "ws"
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    root.mkdir(exist_ok=True)
    return root


def test_links_out_special_files_and_linked_directories_are_not_read(tmp_path):
    secret = tmp_path / "secret.key"
    secret.write_text("SECRET\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "AGENTS.md").write_text("SECRET too\n")
    root = workspace(tmp_path, {"ok/AGENTS.md": "fine\n"})
    (root / "AGENTS.md").symlink_to(secret)
    (root / "CLAUDE.md").symlink_to("/etc/passwd")
    (root / "ok" / "CLAUDE.md").symlink_to("AGENTS.md")  # even a link inside is not followed
    (root / "linked").symlink_to(outside)
    (root / "dev").mkdir()
    os.mkfifo(root / "dev" / "AGENTS.md")
    (root / "dev" / "CLAUDE.md").mkdir()
    ins = Instructions(str(root), None, 4096)
    assert ins.load_root() == ""
    notes = ins.for_call({"path": "linked/AGENTS.md"}) + ins.for_call({"path": "dev/x"})
    assert notes == []
    (only,) = ins.for_call({"path": "ok/x.py"})
    assert "fine" in only and "SECRET" not in only and "root:" not in only


def test_a_huge_file_is_cut_while_reading(tmp_path, monkeypatch):
    root = workspace(tmp_path, {})
    with open(root / "AGENTS.md", "wb") as f:
        f.truncate(8 << 30)  # sparse: 8 GiB of NULs that take no disk
    read: list[int] = []
    real = fs_beneath.read_chunk

    def counted(fd: int, size: int) -> bytes:
        data = real(fd, size)
        read.append(len(data))
        return data

    monkeypatch.setattr(fs_beneath, "read_chunk", counted)
    (item,) = read_dir(str(root), (), 1000)
    assert sum(read) <= 1001 and len(item.text) == 1000 and item.cut == (8 << 30) - 1000


def test_text_is_utf8_with_replacement_and_a_cut_character_is_dropped(tmp_path):
    root = workspace(tmp_path, {})
    (root / "AGENTS.md").write_bytes(b"bad \xff byte\n")
    (root / "CLAUDE.md").write_bytes("é".encode() * 10)
    files = read_dir(str(root), (), 11 + 5)  # 11 for AGENTS.md, then 5 bytes: 2 and a half é
    assert files[0].text == "bad \ufffd byte\n" and files[0].cut == 0
    assert files[1].text == "éé" and files[1].cut == 15


def test_a_resumed_task_does_not_give_a_directorys_instructions_twice(tmp_path):
    root = workspace(tmp_path, {"a/b/AGENTS.md": "deep\n", "a/CLAUDE.md": "mid\n"})
    first = Instructions(str(root), None, 4096)
    notes = first.for_call({"path": str(root / "a" / "b" / "c.py")})  # absolute paths too
    assert [n.splitlines()[0] for n in notes] == [
        instructions.NESTED_NOTE.format(dir="a"),
        instructions.NESTED_NOTE.format(dir="a/b"),
    ]
    turns = [{"role": "user", "content": [{"type": "text", "text": n} for n in notes]}]
    again = Instructions(str(root), None, 4096)
    again.resume(turns)
    assert again.for_call({"path": "a/b/c.py"}) == [] and again.used == first.used
    assert Instructions(str(root), None, 0).for_call({"path": "a/b/c.py"}) == []
    assert first.for_call({"path": "../etc/passwd"}) == first.for_call(["not", "a", "dict"]) == []
