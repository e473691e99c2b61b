"""The text editor tool's work on text, without the file system (``edit.py`` opens, reads and
writes the files): view ranges, lines streamed and cut, matches, insertion points and the
snippets shown after an edit. ``ToolError``: a mistake in the model's input.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["ToolError", "cut_lines", "nth_index", "occurrences", "parse_range", "snippet"]

_SNIPPET_CONTEXT = 4


class ToolError(Exception):
    """A mistake in the model's input; becomes an ``is_error`` result."""


def parse_range(view_range: object) -> tuple[int, int]:
    if view_range is None:
        return 1, -1
    if (
        not isinstance(view_range, list)
        or len(view_range) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in view_range)
    ):
        raise ToolError("view_range must be a list of two integers [start_line, end_line]")
    start, end = view_range
    if start < 1:
        raise ToolError(f"view_range start must be >= 1 (lines count from 1), got {start}")
    if end != -1 and end < start:
        raise ToolError(f"view_range end must be >= start or -1 (to the end), got {end}")
    return start, end


def cut_lines(f: BinaryIO, limit: int) -> Iterator[str]:
    """Lines of ``f`` without their newline; a line longer than ``limit`` bytes is cut."""
    while True:
        raw = f.readline(limit)
        if not raw:
            return
        if raw.endswith(b"\n") or len(raw) < limit:
            yield raw.rstrip(b"\n").decode("utf-8", errors="replace")
            continue
        skipped = 0  # skip the rest of the over-long line without holding it
        while more := f.readline(limit):
            if more.endswith(b"\n"):
                skipped += len(more) - 1
                break
            skipped += len(more)
        text = raw.decode("utf-8", errors="replace")
        yield f"{text} [... line cut: {skipped} more bytes]"


def occurrences(text: str, needle: str) -> list[int]:
    # Overlapping matches count too: "aa" in "aaa" is ambiguous, not unique.
    found = []
    i = text.find(needle)
    while i >= 0:
        found.append(i)
        i = text.find(needle, i + 1)
    return found


def nth_index(text: str, char: str, n: int) -> int:
    i = -1
    for _ in range(n):
        i = text.find(char, i + 1)
        if i < 0:
            return -1
    return i


def snippet(text: str, first: int, last: int) -> str:
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    lo = max(1, first - _SNIPPET_CONTEXT)
    hi = min(len(lines), last + _SNIPPET_CONTEXT)
    return "".join(f"{n:6}\t{lines[n - 1]}\n" for n in range(lo, hi + 1))
