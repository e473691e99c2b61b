"""agentctl's share link commands (``cli`` adds them to its table and parser)."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from typing import Any

from .render import Columns, render

SHARE_COLUMNS: Columns = [
    (name.upper(), (name,)) for name in ("id", "task_id", "live", "created_at", "expires_at", "revoked_at")
]
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([smhd]?)$")


def duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``1d``, ``1.5d`` in seconds (argparse's type)."""
    match = _DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is no duration: give e.g. 3600, 90m, 12h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _show_link(result: object, ns: argparse.Namespace) -> None:
    if not isinstance(result, dict) or "token" not in result:
        print(render(result))
        return
    where = result.get("url") or "<this daemon's web address>/#/s/<token> (set public_url to have it here)"
    print(
        f"share link {result.get('id')}, read-only, until {result.get('expires_at')}: {where}",
        file=sys.stderr,
    )
    print("its token (shown only once):", file=sys.stderr)
    print(result["token"])


def commands(command: Callable[..., Any]) -> dict[str, Any]:
    """The commands, built with ``cli.Command``."""
    return {
        "share": command("shares.create", lambda ns: {"id": ns.id, "ttl_s": ns.ttl}, _show_link),
        "shares": command(
            "shares.list",
            lambda ns: {"id": ns.id},
            lambda r, ns: print(render(r, SHARE_COLUMNS, "(no links)")),
        ),
        "unshare": command("shares.revoke", lambda ns: {"id": ns.id}),
    }


def add_parsers(add: Callable[[str, str], argparse.ArgumentParser], task_id_help: str) -> None:
    p = add("share", "make a read-only, expiring link to a task; prints its token once")
    p.add_argument("id", metavar="ID", help=task_id_help)
    p.add_argument(
        "--ttl", type=duration, metavar="DURATION", default=None, help="how long it works: 3600, 90m, 12h, 7d"
    )
    add("shares", "a task's share links, live or not").add_argument("id", metavar="ID", help=task_id_help)
    add("unshare", "revoke a share link").add_argument("id", metavar="SHARE_ID")
