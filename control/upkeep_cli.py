"""agentctl's store upkeep commands: backup, gc, compact, rotate-keys (``cli`` adds them to its
table and parser)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from .render import render


def _show_compacted(result: object) -> None:
    """What ``compact`` removed and gave back, a line each."""
    if not isinstance(result, dict) or not isinstance(result.get("removed"), dict):
        print(render(result))
        return
    days = result.get("retention_days")
    print(f"tasks compacted: {result.get('tasks_compacted')} (history older than {days} days)")
    for what, rows in result["removed"].items():
        print(f"removed {what}: {rows}")
    given, size = _mib(result.get("bytes_reclaimed")), _mib(result.get("store_bytes"))
    print(f"space given back: {given}; the store takes {size}")
    print(f"{result.get('batches')} batches, the longest {result.get('longest_batch_s')} s")
    if "full" in result:
        print(f"full: {result['full']}")


def _show_rotated(result: object) -> None:
    """Each secret column's counts, then whether the old keys may go."""
    if not isinstance(result, dict) or not isinstance(result.get("columns"), dict):
        print(render(result))
        return
    for name, counts in result["columns"].items():
        shown = counts.items() if isinstance(counts, dict) else ()
        print(f"{name}: " + ", ".join(f"{key} {value}" for key, value in shown if key != "what"))
    if result.get("old_keys_retirable"):
        print("every secret is encrypted with the newest key: the older keys may be removed")
    else:
        print("some secrets cannot be decrypted with these keys: keep the old keys (see the README)")


def _mib(value: object) -> str:
    return f"{value / 1048576:.1f} MiB" if isinstance(value, (int, float)) else "?"


def commands(command: Callable[..., Any]) -> dict[str, Any]:
    """The commands, built with ``cli.Command``."""
    return {
        "backup": command("backup", lambda ns: {"path": os.path.abspath(ns.path)}),
        "gc": command("gc"),
        "compact": command(
            "compact", lambda ns: {"full": True} if ns.full else {}, lambda r, ns: _show_compacted(r)
        ),
        "rotate-keys": command("keys.rotate", show=lambda r, ns: _show_rotated(r)),
    }


def add_parsers(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    add("backup", "write a consistent copy of the database to PATH").add_argument("path", metavar="PATH")
    add("gc", "remove old workspaces and expired data")
    add("compact", "remove history older than retention_days now, and give the room back").add_argument(
        "--full",
        action="store_true",
        default=False,
        help="SQLite: also convert a large database to incremental vacuum, at the next start",
    )
    add("rotate-keys", "re-encrypt every stored secret with the newest secret key")
