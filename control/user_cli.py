"""agentctl's user commands: users, user-add, revoke, user-link (``cli`` adds them to its table
and parser)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from .render import render


def _show_token(result: object, ns: argparse.Namespace) -> None:
    token = result.get("token") if isinstance(result, dict) else result
    if not isinstance(token, str):
        print(render(result))
        return
    print(f"API token for {ns.login} (shown only once, keep it now):", file=sys.stderr)
    print(token)


def _operator(ns: argparse.Namespace) -> dict[str, object]:
    return {"operator": True} if ns.operator else {}


def commands(command: Callable[..., Any]) -> dict[str, Any]:
    """The commands, built with ``cli.Command``."""
    return {
        "users": command("users.list", show=lambda r, ns: print(render(r, [], "(no users)"))),
        "user-add": command("users.add", lambda ns: {"login": ns.login, **_operator(ns)}, _show_token),
        "revoke": command("users.revoke", lambda ns: {"login": ns.login}),
        "user-link": command(
            "users.link", lambda ns: {"login": ns.login, "github_id": ns.github_id, **_operator(ns)}
        ),
    }


def add_parsers(add: Callable[[str, str], argparse.ArgumentParser], github_id: Callable[[str], int]) -> None:
    """``github_id``: the argument type of a GitHub user id (a whole number above 0)."""
    add("users", "list users")
    p = add("user-add", "create a user and print a new API token")
    p.add_argument("login", metavar="LOGIN")
    p.add_argument(
        "--operator",
        action="store_true",
        default=False,
        help="the user is an operator: the app's operator view (/#/ops) and the /admin API",
    )
    add("revoke", "revoke a user's API tokens").add_argument("login", metavar="LOGIN")
    p = add("user-link", "link an account to a GitHub user id: their GitHub sign-in reaches it")
    p.add_argument("login", metavar="LOGIN")
    p.add_argument(
        "github_id",
        metavar="GITHUB_ID",
        type=github_id,
        help="GitHub's numeric user id (https://api.github.com/users/NAME shows it)",
    )
    p.add_argument("--operator", action="store_true", default=False, help="also make the account an operator")
