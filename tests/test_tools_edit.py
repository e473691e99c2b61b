"""The str_replace_based_edit_tool: view, create, str_replace, insert, and workspace confinement."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.agent.tools import Toolbox, ToolSettings, edit as edit_module
from daemon.agent.tools.paths import PathError, relative_parts


@pytest.fixture
async def tb(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    async with Toolbox(ws, ToolSettings(sandbox="off")) as toolbox:
        yield toolbox


@pytest.fixture
def ws(tb) -> Path:
    return tb.workspace


async def edit(tb: Toolbox, command: str, path: str, **args):
    return await tb.run("str_replace_based_edit_tool", {"command": command, "path": path, **args})


# -- view ------------------------------------------------------------------------------------


async def test_view_file_with_line_numbers(tb, ws):
    (ws / "a.py").write_text("one\ntwo\nthree\n")
    result = await edit(tb, "view", "a.py")
    assert not result.is_error
    assert result.output.endswith("     1\tone\n     2\ttwo\n     3\tthree\n")


async def test_view_range_and_to_the_end(tb, ws):
    (ws / "a.txt").write_text("".join(f"l{i}\n" for i in range(1, 11)))
    middle = await edit(tb, "view", "a.txt", view_range=[3, 4])
    assert middle.output.endswith("     3\tl3\n     4\tl4\n")
    assert "l5" not in middle.output and "l2\n" not in middle.output
    tail = await edit(tb, "view", "a.txt", view_range=[9, -1])
    assert tail.output.endswith("     9\tl9\n    10\tl10\n")
    clamped = await edit(tb, "view", "a.txt", view_range=[10, 50])
    assert clamped.output.endswith("    10\tl10\n")


@pytest.mark.parametrize(
    "view_range, message",
    [
        ([0, 3], "start must be >= 1"),
        ([5, 2], "end must be >= start or -1"),
        ([1], "list of two integers"),
        ("1-2", "list of two integers"),
        ([20, -1], "has only 10 lines"),
    ],
)
async def test_view_range_errors(tb, ws, view_range, message):
    (ws / "a.txt").write_text("x\n" * 10)
    result = await edit(tb, "view", "a.txt", view_range=view_range)
    assert result.is_error and message in result.output


async def test_view_directory_two_levels_without_hidden(tb, ws):
    (ws / "src" / "pkg" / "deep").mkdir(parents=True)
    (ws / "src" / "pkg" / "deep" / "too_deep.py").write_text("")
    (ws / "src" / "main.py").write_text("")
    (ws / "README.md").write_text("")
    (ws / ".git").mkdir()
    (ws / ".git" / "config").write_text("")
    (ws / ".env").write_text("SECRET=1")
    (ws / "src" / ".hidden").write_text("")
    result = await edit(tb, "view", ".")
    lines = result.output.splitlines()[1:]
    assert lines == ["README.md", "src/", "src/main.py", "src/pkg/"]


async def test_view_missing_and_binary_files(tb, ws):
    missing = await edit(tb, "view", "nope.txt")
    assert missing.is_error and "does not exist" in missing.output
    (ws / "blob.bin").write_bytes(b"\x00\x01\x02" * 10)
    binary = await edit(tb, "view", "blob.bin")
    assert binary.is_error and "binary file (30 bytes)" in binary.output


async def test_view_output_is_capped(tmp_path):
    ws = tmp_path / "cap"
    ws.mkdir()
    (ws / "big.txt").write_text("".join(f"line {i}\n" for i in range(100_000)))
    (ws / "wide.txt").write_text("x" * 5000 + "\nshort\n")
    async with Toolbox(ws, ToolSettings(sandbox="off", output_cap_bytes=1000)) as tb:
        big = await edit(tb, "view", "big.txt")
        assert len(big.output.encode()) <= 1100
        assert "[output capped at 1000 bytes after line" in big.output
        assert "use view_range [" in big.output
        wide = await edit(tb, "view", "wide.txt")
        assert "x" * 250 + " [... line cut: 4750 more bytes]" in wide.output
        assert wide.output.endswith("     2\tshort\n")


async def test_view_reads_no_further_than_its_byte_cap(tb, ws, monkeypatch):
    monkeypatch.setattr(edit_module, "MAX_VIEW_BYTES", 100)
    (ws / "long.txt").write_text("".join(f"line {i:04}\n" for i in range(50)))  # 10 bytes each
    head = await edit(tb, "view", "long.txt")
    assert "    10\tline 0009\n" in head.output and "line 0010" not in head.output
    assert head.output.endswith(
        "[stopped after the first 100 bytes of long.txt; use bash (sed -n, tail) further in]\n"
    )
    far = await edit(tb, "view", "long.txt", view_range=[40, -1])
    assert far.is_error and "view reads only the first 100 bytes (10 lines)" in far.output
    (ws / "exact.txt").write_text("x" * 99 + "\n")  # exactly the cap: read whole, no note
    assert (await edit(tb, "view", "exact.txt")).output.endswith("\t" + "x" * 99 + "\n")


async def test_view_empty_file(tb, ws):
    (ws / "empty").write_text("")
    assert (await edit(tb, "view", "empty")).output == "empty is empty"


# -- create ----------------------------------------------------------------------------------


async def test_create_makes_parent_directories(tb, ws):
    result = await edit(tb, "create", "new/dir/file.py", file_text="print('hi')\n")
    assert not result.is_error and "created" in result.output
    assert (ws / "new" / "dir" / "file.py").read_text() == "print('hi')\n"


async def test_create_overwrites_and_keeps_the_mode(tb, ws):
    script = ws / "run.sh"
    script.write_text("old\n")
    script.chmod(0o755)
    result = await edit(tb, "create", "run.sh", file_text="#!/bin/sh\necho new\n")
    assert "overwritten" in result.output
    assert script.read_text() == "#!/bin/sh\necho new\n"
    assert script.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in ws.iterdir()) == ["run.sh"]  # no temporary file left


async def test_create_errors(tb, ws):
    (ws / "d").mkdir()
    on_dir = await edit(tb, "create", "d", file_text="x")
    assert on_dir.is_error and "is a directory" in on_dir.output
    no_text = await edit(tb, "create", "f.txt")
    assert no_text.is_error and "file_text" in no_text.output


# -- str_replace -----------------------------------------------------------------------------


async def test_str_replace_once(tb, ws):
    (ws / "m.py").write_text("def f():\n    return 1\n")
    result = await edit(tb, "str_replace", "m.py", old_str="return 1", new_str="return 2")
    assert not result.is_error
    assert (ws / "m.py").read_text() == "def f():\n    return 2\n"
    assert "     2\t    return 2\n" in result.output


async def test_str_replace_not_found(tb, ws):
    (ws / "m.py").write_text("a = 1\n")
    result = await edit(tb, "str_replace", "m.py", old_str="a = 2", new_str="b")
    assert result.is_error and "does not occur verbatim" in result.output
    assert (ws / "m.py").read_text() == "a = 1\n"


async def test_str_replace_several_matches_names_count_and_lines(tb, ws):
    (ws / "m.py").write_text("x = 1\ny = 2\nx = 1\nz = 3\nx = 1\n")
    result = await edit(tb, "str_replace", "m.py", old_str="x = 1", new_str="x = 9")
    assert result.is_error
    assert "occurs 3 times" in result.output and "lines 1, 3, 5" in result.output
    assert (ws / "m.py").read_text().count("x = 1") == 3


async def test_str_replace_overlapping_matches_are_ambiguous(tb, ws):
    (ws / "a").write_text("aaa")
    result = await edit(tb, "str_replace", "a", old_str="aa", new_str="b")
    assert result.is_error and "occurs 2 times" in result.output


async def test_str_replace_without_new_str_deletes(tb, ws):
    (ws / "m.py").write_text("keep\ndrop\nkeep2\n")
    await edit(tb, "str_replace", "m.py", old_str="drop\n")
    assert (ws / "m.py").read_text() == "keep\nkeep2\n"


async def test_str_replace_in_a_crlf_file(tb, ws):
    (ws / "w.txt").write_bytes(b"one\r\ntwo\r\nthree\r\n")
    result = await edit(tb, "str_replace", "w.txt", old_str="one\ntwo", new_str="1\n2")
    assert not result.is_error
    assert (ws / "w.txt").read_bytes() == b"1\r\n2\r\nthree\r\n"


async def test_str_replace_errors(tb, ws):
    (ws / "bin").write_bytes(b"\xff\xfe bad utf8")
    not_utf8 = await edit(tb, "str_replace", "bin", old_str="bad", new_str="good")
    assert not_utf8.is_error and "not UTF-8" in not_utf8.output
    missing = await edit(tb, "str_replace", "nope", old_str="a", new_str="b")
    assert missing.is_error and "does not exist" in missing.output
    (ws / "f").write_text("text")
    empty_old = await edit(tb, "str_replace", "f", old_str="", new_str="b")
    assert empty_old.is_error and "old_str" in empty_old.output


# -- insert ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, expected",
    [(0, "new\na\nb\n"), (1, "a\nnew\nb\n"), (2, "a\nb\nnew\n")],
)
async def test_insert_after_line(tb, ws, line, expected):
    (ws / "f").write_text("a\nb\n")
    result = await edit(tb, "insert", "f", insert_line=line, insert_text="new")
    assert not result.is_error
    assert (ws / "f").read_text() == expected


async def test_insert_accepts_new_str_too(tb, ws):
    (ws / "f").write_text("a\n")
    await edit(tb, "insert", "f", insert_line=1, new_str="b\n")
    assert (ws / "f").read_text() == "a\nb\n"


async def test_insert_at_end_of_file_without_final_newline(tb, ws):
    (ws / "f").write_text("a\nb")
    await edit(tb, "insert", "f", insert_line=2, insert_text="c\nd\n")
    assert (ws / "f").read_text() == "a\nb\nc\nd\n"


async def test_insert_errors(tb, ws):
    (ws / "f").write_text("a\nb\n")
    out_of_range = await edit(tb, "insert", "f", insert_line=3, insert_text="x")
    assert out_of_range.is_error and "has 2 lines" in out_of_range.output
    no_text = await edit(tb, "insert", "f", insert_line=1)
    assert no_text.is_error and "insert_text" in no_text.output
    bad_line = await edit(tb, "insert", "f", insert_line="1", insert_text="x")
    assert bad_line.is_error and "insert_line" in bad_line.output
    assert (ws / "f").read_text() == "a\nb\n"


async def test_files_over_the_edit_cap_are_left_to_bash(tb, ws, monkeypatch):
    monkeypatch.setattr(edit_module, "MAX_EDIT_BYTES", 100)
    (ws / "big.txt").write_text("a" * 101)
    for command, args in [
        ("str_replace", {"old_str": "a" * 101, "new_str": "b"}),
        ("insert", {"insert_line": 0, "insert_text": "x"}),
    ]:
        result = await edit(tb, command, "big.txt", **args)
        assert (
            result.is_error
            and "big.txt is 101 bytes or more, more than this tool edits (100)" in result.output
        )
    assert (ws / "big.txt").read_text() == "a" * 101


async def test_an_edit_keeps_permissions_but_not_setuid_bits(tb, ws):
    script = ws / "tool.sh"
    script.write_text("echo a\n")
    script.chmod(0o4755)
    await edit(tb, "str_replace", "tool.sh", old_str="a", new_str="b")
    assert script.read_text() == "echo b\n" and script.stat().st_mode & 0o7777 == 0o755


# -- commands and input ----------------------------------------------------------------------


async def test_unknown_command_undo_and_missing_path(tb):
    unknown = await edit(tb, "delete", "f")
    assert unknown.is_error and "view, create, str_replace, insert" in unknown.output
    undo = await edit(tb, "undo_edit", "f")
    assert undo.is_error and "undo_edit is not available" in undo.output
    no_path = await tb.run("str_replace_based_edit_tool", {"command": "view"})
    assert no_path.is_error and "path is required" in no_path.output


# -- confinement to the workspace ------------------------------------------------------------


async def test_absolute_path_inside_the_workspace_works(tb, ws):
    (ws / "a.txt").write_text("hi\n")
    assert not (await edit(tb, "view", str(ws / "a.txt"))).is_error
    assert not (await edit(tb, "view", "sub/../a.txt")).is_error


@pytest.mark.parametrize("path", ["../outside.txt", "a/../../outside.txt", "/etc/passwd"])
async def test_paths_outside_are_refused(tb, ws, path):
    (ws.parent / "outside.txt").write_text("secret\n")
    for command, args in [
        ("view", {}),
        ("create", {"file_text": "x"}),
        ("str_replace", {"old_str": "secret", "new_str": "x"}),
        ("insert", {"insert_line": 0, "insert_text": "x"}),
    ]:
        result = await edit(tb, command, path, **args)
        assert result.is_error and "outside the workspace" in result.output, (command, result)
    assert (ws.parent / "outside.txt").read_text() == "secret\n"


@pytest.mark.parametrize(
    "raw, parts",
    [
        ("a/./b//c", ("a", "b", "c")),
        (".", ()),
        ("a/..", ()),
        ("/ws/x/../y", ("y",)),
        ("/ws", ()),
        ("/alias/z", ("z",)),
    ],
)
def test_relative_parts_are_lexical_names_below_the_workspace(raw, parts):
    assert relative_parts("/ws", raw, alias="/alias") == parts


@pytest.mark.parametrize("raw", ["..", "/ws/../x", "/wsx/y", "", "a\x00b"])
def test_relative_parts_refuses_what_is_not_below(raw):
    with pytest.raises(PathError):
        relative_parts("/ws", raw, alias="/alias")


async def test_a_file_on_the_way_is_not_a_directory(tb, ws):
    (ws / "f.txt").write_text("x\n")
    for command, args in [("view", {}), ("create", {"file_text": "x"})]:
        result = await edit(tb, command, "f.txt/inner", **args)
        assert result.is_error, result
        assert result.output == "f.txt is not a directory, so f.txt/inner cannot be reached"


async def test_symlinks_leading_outside_are_refused(tb, ws):
    outside = ws.parent / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    (ws / "file_link").symlink_to(outside / "secret.txt")
    (ws / "dir_link").symlink_to(outside)
    (ws / "dangling").symlink_to(outside / "new.txt")
    cases = [
        ("view", "file_link", {}),
        ("view", "dir_link", {}),
        ("view", "dir_link/secret.txt", {}),
        ("str_replace", "file_link", {"old_str": "secret", "new_str": "x"}),
        ("create", "dir_link/new.txt", {"file_text": "x"}),
        ("create", "dangling", {"file_text": "x"}),
        ("insert", "dir_link/secret.txt", {"insert_line": 0, "insert_text": "x"}),
    ]
    for command, path, args in cases:
        result = await edit(tb, command, path, **args)
        assert result.is_error and "symbolic link" in result.output, (command, path, result)
    assert (outside / "secret.txt").read_text() == "secret\n"
    assert sorted(os.listdir(outside)) == ["secret.txt"]


async def test_symlinks_inside_the_workspace_are_refused_too(tb, ws):
    """A link is refused wherever it points: the agent can retarget it between two syscalls."""
    (ws / "real.txt").write_text("a\n")
    (ws / "alias.txt").symlink_to("real.txt")
    (ws / "sub").mkdir()
    (ws / "sub" / "f.txt").write_text("a\n")
    (ws / "sub_link").symlink_to("sub")
    edited = await edit(tb, "str_replace", "alias.txt", old_str="a", new_str="b")
    assert edited.is_error and edited.output.startswith(
        "alias.txt is a symbolic link; the editor does not follow links"
    )
    through = await edit(tb, "view", "sub_link/f.txt")
    assert through.is_error and through.output.startswith(
        "sub_link (on the way to sub_link/f.txt) is a symbolic link"
    )
    assert (ws / "real.txt").read_text() == "a\n"
    assert (ws / "alias.txt").is_symlink()


async def test_directory_listing_does_not_descend_into_symlinks(tb, ws):
    outside = ws.parent / "elsewhere"
    outside.mkdir()
    (outside / "private.txt").write_text("")
    (ws / "link").symlink_to(outside)
    result = await edit(tb, "view", ".")
    assert "private.txt" not in result.output and "link" in result.output


async def test_workspace_given_through_a_symlink_accepts_both_spellings(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "f.txt").write_text("x\n")
    (tmp_path / "alias").symlink_to(real)
    async with Toolbox(tmp_path / "alias", ToolSettings(sandbox="off")) as tb:
        assert not (await edit(tb, "view", str(tmp_path / "alias" / "f.txt"))).is_error
        assert not (await edit(tb, "view", str(real / "f.txt"))).is_error
