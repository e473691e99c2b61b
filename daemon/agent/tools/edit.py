"""The ``str_replace_based_edit_tool`` (Anthropic text editor, ``text_editor_20250728``).

Commands: ``view`` (a file with line numbers, or a directory two levels deep), ``create``,
``str_replace`` and ``insert``; ``undo_edit`` does not exist in this tool version.

Confinement: a path becomes names below the workspace without touching the disk
(``paths.relative_parts``: ``..`` that climbs out and absolute paths elsewhere are refused), and
each name is then opened relative to a directory fd beneath the workspace without following a
link (``fs_beneath``). A symbolic link anywhere in the path is refused, also one that points
inside the workspace, because the agent can swap it between any two system calls. Only regular
files are read or written and directories listed; FIFOs, sockets and devices are refused
without being opened, and no open can block. Reads are capped (``MAX_VIEW_BYTES`` for view,
``MAX_EDIT_BYTES`` for the commands that hold a whole file). Writes are atomic: a new temporary
file in the target's directory, renamed over the target, so a file is never seen half written.
The work on the text itself, without the file system: ``edit_text.py``.

Cancellation: the disk work runs in a worker thread that is abandoned when the caller is
cancelled, so ``run`` raises ``Cancelled`` at once, whatever the thread is stuck in. The thread
ends on its own: a read stops before its next chunk; an edit that has not reached its rename is
dropped (its temporary file removed), leaving the file as it was; an edit whose rename has
begun lands whole. The thread closes its fds when it ends. An editor runs at most
``max_threads`` threads, so threads that never end (a file system that stopped answering) are
bounded: calls beyond that are refused with an error rather than queued.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import stat
from collections.abc import Callable, Iterator
from typing import BinaryIO

import trio

from . import edit_text, fs_beneath
from .base import ToolResult, cap_text
from .edit_text import ToolError
from .paths import PathError, relative_parts

# str_replace and insert read the whole file into memory; beyond this, sed in bash is the tool.
MAX_EDIT_BYTES = 16 * 1024 * 1024
# view streams, holding only what it shows, but reads no further than this into a file.
MAX_VIEW_BYTES = 64 * 1024 * 1024
_COMMANDS = ("view", "create", "str_replace", "insert")
# Ends an abandoned worker thread early: raises trio.Cancelled once the caller has gone.
_check = trio.from_thread.check_cancelled


class Editor:
    """Runs the text editor tool's commands for one workspace (see the module docstring)."""

    def __init__(self, workspace: str, *, alias: str | None, cap_bytes: int, max_threads: int = 8) -> None:
        self._workspace = workspace
        self._alias = alias
        self._cap = cap_bytes
        self._limiter = trio.CapacityLimiter(max_threads)

    async def run(self, input: dict) -> ToolResult:
        """Validate ``input`` and run the command in a worker thread.

        Cancellation: the thread is abandoned and ``Cancelled`` raised at once; an edit not yet
        committed by its rename is dropped when the thread gets there, one whose rename has
        begun lands whole. Either way the file is whole, never half written.
        """
        command = input.get("command")
        if command == "undo_edit":
            return ToolResult(
                "undo_edit is not available in this version of the tool; "
                "use str_replace to put the old text back",
                is_error=True,
            )
        if command not in _COMMANDS:
            return ToolResult(
                f"Unknown command {command!r}; use one of: {', '.join(_COMMANDS)}", is_error=True
            )
        if self._limiter.available_tokens < 1:
            return ToolResult(
                f"The editor is still busy with {self._limiter.borrowed_tokens} earlier "
                "operation(s) cancelled while the file system did not answer; use bash, or try "
                "again later",
                is_error=True,
            )
        handler = getattr(self, f"_{command}")
        try:
            output = await trio.to_thread.run_sync(
                functools.partial(self._call, handler, input),
                abandon_on_cancel=True,
                limiter=self._limiter,
            )
        except (ToolError, PathError) as e:
            return ToolResult(str(e), is_error=True)
        except OSError as e:
            return ToolResult(f"{e.strerror or e}: {input.get('path')}", is_error=True)
        return ToolResult(cap_text(output, self._cap))

    # -- commands (worker thread) ---------------------------------------------------------

    def _call(self, handler: Callable[[dict, str, int, tuple[str, ...]], str], input: dict) -> str:
        raw = input.get("path")
        if not isinstance(raw, str):
            raise ToolError("path is required (a string: relative to the workspace or absolute)")
        parts = relative_parts(self._workspace, raw, alias=self._alias)
        root = fs_beneath.open_root(self._workspace)
        try:
            return handler(input, raw, root, parts)
        finally:
            os.close(root)

    @contextlib.contextmanager
    def _opened(
        self, root: int, parts: tuple[str, ...], raw: str, missing: str
    ) -> Iterator[tuple[int, int, os.stat_result]]:
        """The target's parent directory fd, its own fd and ``fstat``; all closed after."""
        with contextlib.ExitStack() as stack:
            try:
                if parts:
                    parent = fs_beneath.open_dir(root, parts[:-1], full="/".join(parts))
                    stack.callback(os.close, parent)
                    fd, st = fs_beneath.open_entry(parent, parts[-1], display="/".join(parts))
                else:  # the workspace itself
                    parent = -1
                    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root)
                    st = os.fstat(fd)
            except FileNotFoundError:
                raise ToolError(f"{raw} does not exist{missing}") from None
            stack.callback(os.close, fd)
            yield parent, fd, st

    def _view(self, input: dict, raw: str, root: int, parts: tuple[str, ...]) -> str:
        view_range = input.get("view_range")
        with self._opened(root, parts, raw, "") as (_, fd, st):
            if stat.S_ISDIR(st.st_mode):
                if view_range is not None:
                    raise ToolError("view_range applies to files only; omit it for a directory")
                return self._list_dir(raw, fd)
            start, end = edit_text.parse_range(view_range)
            reader = fs_beneath.CappedReader(fd, MAX_VIEW_BYTES, check=_check)
            f = io.BufferedReader(reader, 64 * 1024)
            if b"\x00" in f.peek(8192)[:8192]:
                raise ToolError(
                    f"{raw} is a binary file ({st.st_size} bytes); inspect it with bash (e.g. xxd)"
                )
            return self._numbered(f, reader, raw, start, end)

    def _numbered(self, f: BinaryIO, reader: fs_beneath.CappedReader, raw: str, start: int, end: int) -> str:
        # Streams the file: only the lines shown are held, and at most the output cap of them.
        header = f"Here's the result of running `cat -n` on {raw}:\n"
        parts = [header]
        used = len(header)
        last = 0
        number = 0
        # Long lines (minified code, data) are cut so that one line never eats the whole cap.
        width = min(4000, self._cap // 4)
        for number, line in enumerate(edit_text.cut_lines(f, width), start=1):
            if number < start:
                continue
            if end != -1 and number > end:
                break
            entry = f"{number:6}\t{line}\n"
            size = len(entry.encode("utf-8", errors="replace"))
            if used + size > self._cap:
                parts.append(
                    f"[output capped at {self._cap} bytes after line {last}; "
                    f"use view_range [{last + 1}, -1] to see more]\n"
                )
                return "".join(parts)
            parts.append(entry)
            used += size
            last = number
        else:
            if reader.capped:
                if start > number:
                    raise ToolError(
                        f"view_range starts at line {start} but view reads only the first "
                        f"{MAX_VIEW_BYTES} bytes ({number} lines) of {raw}; use bash "
                        "(sed -n, tail) further in"
                    )
                parts.append(
                    f"[stopped after the first {MAX_VIEW_BYTES} bytes of {raw}; use bash "
                    "(sed -n, tail) further in]\n"
                )
                return "".join(parts)
        if number == 0:
            return f"{raw} is empty"
        if start > number:
            raise ToolError(f"view_range starts at line {start} but {raw} has only {number} lines")
        return "".join(parts)

    def _list_dir(self, raw: str, fd: int) -> str:
        header = f"Files and directories up to 2 levels deep in {raw}, excluding hidden items:\n"
        lines: list[str] = []
        budget = self._cap - len(header)

        def walk(directory: int, prefix: str, depth: int) -> None:
            nonlocal budget
            _check()
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
            for entry in entries:
                if entry.name.startswith(".") or budget <= 0:
                    continue  # hidden files, .git included
                # Never descend through a symlink: it could point out of the workspace.
                is_dir = entry.is_dir(follow_symlinks=False)
                line = f"{prefix}{entry.name}{'/' if is_dir else ''}"
                budget -= len(line) + 1
                if budget <= 0:
                    lines.append("[listing capped; view a subdirectory to see more]")
                    return
                lines.append(line)
                if is_dir and depth < 2:
                    # By fd, with O_NOFOLLOW: a link swapped in since the scan is not entered.
                    sub = fs_beneath.open_child_dir(directory, entry.name)
                    if sub is not None:
                        try:
                            walk(sub, line, depth + 1)
                        finally:
                            os.close(sub)

        walk(fd, "", 1)
        return header + ("\n".join(lines) if lines else "(empty directory)") + "\n"

    def _create(self, input: dict, raw: str, root: int, parts: tuple[str, ...]) -> str:
        text = input.get("file_text")
        if not isinstance(text, str):
            raise ToolError("create needs file_text (a string: the whole content of the file)")
        if not parts:
            raise ToolError(f"{raw} is a directory; give a file path")
        display = "/".join(parts)
        parent = fs_beneath.open_dir(root, parts[:-1], create=True, full=display)
        try:
            st = fs_beneath.lstat(parent, parts[-1])
            if st is not None:
                if stat.S_ISDIR(st.st_mode):
                    raise ToolError(f"{raw} is a directory; give a file path")
                fs_beneath.refuse_special(st, display)
            mode = stat.S_IMODE(st.st_mode) if st is not None else 0o644
            fs_beneath.write_atomic(parent, parts[-1], text.encode("utf-8"), mode, before_commit=_check)
        finally:
            os.close(parent)
        return f"File {'overwritten' if st is not None else 'created'}: {raw}"

    def _str_replace(self, input: dict, raw: str, root: int, parts: tuple[str, ...]) -> str:
        old, new = input.get("old_str"), input.get("new_str", "")
        if not isinstance(old, str) or old == "":
            raise ToolError("str_replace needs old_str (non-empty text that occurs once)")
        if new is None:
            new = ""
        if not isinstance(new, str):
            raise ToolError("new_str must be a string")
        with self._opened(root, parts, raw, _MISSING) as (parent, fd, st):
            text = _read_text(raw, fd, st)
            starts = edit_text.occurrences(text, old)
            if not starts and "\r\n" in text and "\n" in old:
                # A CRLF file edited with LF text: match it the way the model meant it.
                old = old.replace("\r\n", "\n").replace("\n", "\r\n")
                new = new.replace("\n", "\r\n")
                starts = edit_text.occurrences(text, old)
            if not starts:
                raise ToolError(
                    f"No replacement was performed: old_str does not occur verbatim in {raw}. "
                    "Check whitespace and indentation (view the file to copy the exact text)."
                )
            if len(starts) > 1:
                lines = ", ".join(str(text.count("\n", 0, i) + 1) for i in starts[:20])
                raise ToolError(
                    f"No replacement was performed: old_str occurs {len(starts)} times in {raw} "
                    f"(starting on lines {lines}). Include more surrounding lines so that it "
                    "occurs exactly once."
                )
            at = starts[0]
            result = text[:at] + new + text[at + len(old) :]
            fs_beneath.write_atomic(
                parent, parts[-1], result.encode("utf-8"), stat.S_IMODE(st.st_mode), before_commit=_check
            )
        first = text.count("\n", 0, at) + 1
        return (
            f"The file {raw} has been edited. A snippet of the result (`cat -n`):\n"
            + edit_text.snippet(result, first, first + new.count("\n"))
            + "Review the change and edit again if it is not what you intended."
        )

    def _insert(self, input: dict, raw: str, root: int, parts: tuple[str, ...]) -> str:
        # text_editor_20250728 documents new_str, but Claude sends insert_text: accept both.
        new = input.get("insert_text", input.get("new_str"))
        line = input.get("insert_line")
        if not isinstance(new, str):
            raise ToolError("insert needs insert_text (the text to insert, a string)")
        if not isinstance(line, int) or isinstance(line, bool):
            raise ToolError("insert needs insert_line (an integer: insert after that line)")
        with self._opened(root, parts, raw, _MISSING) as (parent, fd, st):
            text = _read_text(raw, fd, st)
            count = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
            if not 0 <= line <= count:
                raise ToolError(
                    f"insert_line {line} is out of range: {raw} has {count} lines "
                    f"(0 inserts at the top, {count} appends at the end)"
                )
            newline = "\r\n" if "\r\n" in text else "\n"
            block = new if new.endswith("\n") else new + newline
            if line == 0:
                at = 0
            else:
                at = edit_text.nth_index(text, "\n", line)
                at = len(text) if at < 0 else at + 1
            head = text[:at]
            if head and not head.endswith("\n"):
                head += newline  # appending to a file that does not end with a newline
            result = head + block + text[at:]
            fs_beneath.write_atomic(
                parent, parts[-1], result.encode("utf-8"), stat.S_IMODE(st.st_mode), before_commit=_check
            )
        return (
            f"The file {raw} has been edited. A snippet of the result (`cat -n`):\n"
            + edit_text.snippet(result, line + 1, line + block.count("\n"))
            + "Review the change (indentation, duplicated lines) and edit again if needed."
        )


_MISSING = " (use create to make a new file)"


def _read_text(raw: str, fd: int, st: os.stat_result) -> str:
    if stat.S_ISDIR(st.st_mode):
        raise ToolError(f"{raw} is a directory")
    data = b""
    if st.st_size <= MAX_EDIT_BYTES:
        data = fs_beneath.read_at_most(fd, MAX_EDIT_BYTES, check=_check)
    if st.st_size > MAX_EDIT_BYTES or len(data) > MAX_EDIT_BYTES:  # or it grew since the fstat
        raise ToolError(
            f"{raw} is {max(st.st_size, len(data))} bytes or more, more than this tool edits "
            f"({MAX_EDIT_BYTES}); use bash (sed, python) instead"
        )
    try:
        # newline="" semantics: bytes decoded as they are, so CRLF survives the round trip.
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ToolError(f"{raw} is not UTF-8 text; edit it with bash instead") from None
