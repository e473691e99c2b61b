"""Repository instructions: the ``AGENTS.md`` and ``CLAUDE.md`` files a repository keeps for agents.

What the model is given, following the conventions of those files:

- the files at the workspace's root apply repo-wide: they go into the system prompt, which the
  provider ends with a prompt-cache breakpoint, so they stay in the cached prefix of every turn;
- the files of a subdirectory apply when working there (for ``AGENTS.md`` the nearest one takes
  precedence over the ones above it): they are given the first time a tool call names a path in
  that directory, as text appended to the user turn that carries the call's result. Earlier turns
  are never rewritten, so the cached prefix stays valid.

All the instructions of a task together are capped (``cap_bytes``); what is cut is said in a
note, so the model knows to read the rest itself if it needs it.

Trust boundary: the files are in the workspace, which the agent (and the repository's authors)
control, so they are read like the editor reads: beneath the workspace's fd, with no symbolic
link followed (``fs_beneath``: ``openat2`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``),
regular files only (a FIFO or device is refused without being opened, and the open never
blocks), no more than the bytes still allowed read (a huge file costs no more than the cap).
A file that cannot be read so is skipped. The text is decoded as UTF-8 with replacement. What it
says goes to the model only, which is untrusted already: it gains no power it did not have.

Every function here blocks on the disk: call them from a worker thread.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .tools import fs_beneath
from .tools.paths import PathError, relative_parts

FILE_NAMES = ("AGENTS.md", "CLAUDE.md")
DEFAULT_CAP_BYTES = 32 * 1024

ROOT_HEADER = """\

# Repository instructions
The repository has instruction files for agents working in it. Follow them unless the task says \
otherwise. Files in subdirectories are given to you when you first work there; for AGENTS.md the \
nearest file to the files you change takes precedence over the ones above it."""

# The start of a note that gives a subdirectory's instructions; the directory is read back from
# the stored turns (``given_dirs``) so that a resumed task does not give them twice.
NESTED_NOTE = "[agentd] Repository instructions for {dir}/ (they apply to the files in it):"
_NESTED_RE = re.compile(r"^\[agentd\] Repository instructions for (.+)/ \(they apply")

CUT_NOTE = (
    "[agentd] The repository instructions are capped at {cap} bytes in all; not shown: {cut}. "
    "Read them with the editor if you need them."
)


@dataclass(frozen=True)
class InstructionFile:
    """One file's text, from ``read`` bytes of it; ``cut`` bytes were left out (0: none)."""

    path: str  # relative to the workspace
    text: str
    read: int
    cut: int


def read_dir(workspace: str, parts: Sequence[str], budget: int) -> list[InstructionFile]:
    """The instruction files of the directory ``parts`` beneath ``workspace``, in ``FILE_NAMES``
    order, with no more than ``budget`` bytes of text in all (the rest is counted in ``cut``).

    A directory that is missing, is a link or is not a directory yields nothing, as does a file
    that is a link, a special file, a directory, or unreadable.
    """
    found: list[InstructionFile] = []
    root_fd = fs_beneath.open_root(workspace)
    try:
        try:
            dir_fd = fs_beneath.open_dir(root_fd, parts)
        except (PathError, OSError):
            return []
        try:
            for name in FILE_NAMES:
                path = "/".join([*parts, name])
                item = _read_file(dir_fd, name, path, max(budget, 0))
                if item is not None:
                    found.append(item)
                    budget -= item.read
        finally:
            os.close(dir_fd)
    finally:
        os.close(root_fd)
    return found


def _read_file(dir_fd: int, name: str, path: str, budget: int) -> InstructionFile | None:
    try:
        if fs_beneath.lstat(dir_fd, name) is None:
            return None
        fd, st = fs_beneath.open_entry(dir_fd, name, display=path)
    except (PathError, OSError):
        return None
    try:
        if not stat.S_ISREG(st.st_mode):
            return None
        data = fs_beneath.read_at_most(fd, budget)
    except OSError:
        return None
    finally:
        os.close(fd)
    kept = data[:budget]
    # A cut may fall inside a character: drop the partial one rather than show a replacement.
    text = kept.decode("utf-8", errors="replace") if len(data) <= budget else _decode_cut(kept)
    return InstructionFile(path, text, len(kept), max(st.st_size, len(data)) - len(kept))


def _decode_cut(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace")
    return text[:-1] if text.endswith("\ufffd") else text


def root_section(files: Sequence[InstructionFile], cap: int) -> str:
    """The text added to the system prompt for the root's files ('' when there are none)."""
    if not files:
        return ""
    return "\n".join([ROOT_HEADER, *_render(files, cap)])


def nested_note(directory: str, files: Sequence[InstructionFile], cap: int) -> str:
    """The note that gives the instructions of ``directory`` (relative to the workspace)."""
    return "\n".join([NESTED_NOTE.format(dir=directory), *_render(files, cap)])


def _render(files: Sequence[InstructionFile], cap: int) -> list[str]:
    lines = []
    for item in files:
        lines += [f"\n## {item.path}", item.text.rstrip()]
    cut = [f"{item.path} ({item.cut} bytes cut)" for item in files if item.cut]
    if cut:
        lines.append("\n" + CUT_NOTE.format(cap=cap, cut=", ".join(cut)))
    return lines


class Instructions:
    """One attempt's view of a task's repository instructions: the root's, and which
    subdirectories' were given already. ``workspace`` is the workspace's real path, ``alias``
    the path the model may know it by (as the editor takes them); ``cap`` bytes of file text in
    all. The blocking methods run in a worker thread; cancelled, the read finishes first (it is
    capped and of regular files only, so short)."""

    def __init__(self, workspace: str, alias: str | None, cap: int) -> None:
        self.workspace = workspace
        self.alias = alias
        self.cap = cap
        self.used = 0
        self.given: set[str] = set()

    def load_root(self) -> str:
        """Blocking: the root's section of the system prompt ('' when it has no files)."""
        if self.cap <= 0:
            return ""
        files = read_dir(self.workspace, (), self.cap)
        self.used += sum(item.read for item in files)
        return root_section(files, self.cap)

    def resume(self, turns: Iterable[Mapping[str, Any]]) -> None:
        """Count what the stored turns gave already (a resumed task gives nothing twice)."""
        given, used = given_dirs(turns)
        self.given |= given
        self.used += used

    def for_call(self, tool_input: object) -> list[str]:
        """Blocking: the notes for the directories a tool call works in that were not given yet."""
        notes = []
        for parts in self._dirs_of(tool_input):
            directory = "/".join(parts)
            if directory in self.given or self.cap <= 0:
                continue
            self.given.add(directory)  # looked at once per attempt, with files or not
            files = read_dir(self.workspace, parts, self.cap - self.used)
            if files:
                note = nested_note(directory, files, self.cap)
                self.used += len(note.encode())
                notes.append(note)
        return notes

    def _dirs_of(self, tool_input: object) -> list[tuple[str, ...]]:
        """The directories below the root (outermost first) a call works in: those above the
        path it names, and the path itself (which yields nothing when it is a file)."""
        raw = tool_input.get("path") if isinstance(tool_input, Mapping) else None
        if not isinstance(raw, str):
            return []
        try:
            parts = relative_parts(self.workspace, raw, alias=self.alias)
        except PathError:
            return []
        return [parts[:k] for k in range(1, len(parts) + 1)]


def given_dirs(turns: Iterable[Mapping[str, Any]]) -> tuple[set[str], int]:
    """The subdirectories whose instructions the stored user turns already gave, and the bytes
    those notes hold (they count against the cap)."""
    given: set[str] = set()
    used = 0
    for turn in turns:
        if turn["role"] != "user" or not isinstance(turn["content"], list):
            continue
        for block in turn["content"]:
            if block.get("type") == "text" and (match := _NESTED_RE.match(block.get("text", ""))):
                given.add(match.group(1))
                used += len(block["text"].encode())
    return given, used
