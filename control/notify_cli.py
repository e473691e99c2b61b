"""agentctl's webhook and delivery commands (``cli`` adds them to its table and parser)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from .render import Columns, render

KINDS_HELP = "task.succeeded, task.failed, task.cancelled, task.waiting_input, task.pr_opened"
TARGET_COLUMNS: Columns = [
    (name.upper(), (name,)) for name in ("id", "user_id", "kind", "url", "events", "disabled_at")
]
DELIVERY_COLUMNS: Columns = [
    (name.upper(), (name,))
    for name in ("id", "target_id", "task_id", "kind", "status", "attempts", "last_status", "last_error")
]


def _show_secret(result: object, ns: argparse.Namespace) -> None:
    if not isinstance(result, dict) or "secret" not in result:
        print(render(result))
        return
    print(
        f"webhook {result.get('id')} for every user's tasks; its signing secret (shown only once):",
        file=sys.stderr,
    )
    print(result["secret"])


def commands(command: Callable[..., Any]) -> dict[str, Any]:
    """The commands, built with ``cli.Command``."""
    return {
        "webhooks": command(
            "webhooks.list", show=lambda r, ns: print(render(r, TARGET_COLUMNS, "(no webhooks)"))
        ),
        "webhook-add": command("webhooks.add", lambda ns: {"url": ns.url, "events": ns.events}, _show_secret),
        "webhook-remove": command("webhooks.remove", lambda ns: {"id": ns.id}),
        "webhook-test": command("webhooks.test", lambda ns: {"id": ns.id}),
        "deliveries": command(
            "deliveries.list",
            lambda ns: {"status": ns.status, "target": ns.target, "limit": ns.limit},
            lambda r, ns: print(render(r, DELIVERY_COLUMNS, "(no deliveries)")),
        ),
        "redeliver": command("deliveries.redeliver", lambda ns: {"id": ns.id}),
    }


def add_parsers(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    add("webhooks", "list every webhook and ntfy topic: every user's and the operator-wide ones")
    p = add("webhook-add", "add an operator-wide webhook (every user's tasks); prints its secret once")
    p.add_argument("url", metavar="URL", help="where to POST (https; no private address unless allowed)")
    p.add_argument("--events", nargs="+", metavar="KIND", default=None, help=f"only these ({KINDS_HELP})")
    add("webhook-remove", "remove a webhook or ntfy topic (any user's)").add_argument("id", metavar="ID")
    add("webhook-test", "send a test delivery to a webhook or ntfy topic").add_argument("id", metavar="ID")
    p = add("deliveries", "the outbox's delivery log, newest first")
    p.add_argument("--status", choices=["pending", "delivered", "failed"], default=None)
    p.add_argument("--target", metavar="ID", default=None, help="only those to this webhook or topic")
    p.add_argument("--limit", type=int, metavar="N", default=50, help="at most N (default 50)")
    add("redeliver", "deliver a delivered or failed delivery again, with the same id").add_argument(
        "id", metavar="DELIVERY_ID"
    )
