"""``agentctl``: operate a running agentd over its control socket (design §3).

Exit status: 0 success, 1 the daemon refused the command, 2 the daemon cannot be reached,
64 a usage error, 130 interrupted (Ctrl-C). Tables are for people; ``--json`` prints the
daemon's result as it is (``tail --json``: one JSON object per line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import trio

from .client import CommandRefused, ControlClient, DaemonUnreachable

EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 64, 130
_CELL_MAX = 60
_SUMMARY_MAX = 120


def default_socket(env: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    """``$AGENTD_CONTROL_SOCKET``, else ``$AGENTD_DATA_DIR/agentd.sock``, else ./agentd-data."""
    if env.get("AGENTD_CONTROL_SOCKET"):
        return Path(env["AGENTD_CONTROL_SOCKET"])
    if env.get("AGENTD_DATA_DIR"):
        return Path(env["AGENTD_DATA_DIR"]) / "agentd.sock"
    return Path("agentd-data") / "agentd.sock"


# ------------------------------------------------------------------------------------ rendering


def _is_timestamp(key: str, value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 1e9
            and (key in ("ts", "created", "updated") or key.endswith("_at")))


def fmt(value: Any, key: str = "") -> str:
    """One value as text for a person."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if _is_timestamp(key, value):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def _flatten(mapping: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            pairs += _flatten(value, f"{prefix}{key}.")
        else:
            pairs.append((f"{prefix}{key}", fmt(value, str(key))))
    return pairs


def key_values(mapping: dict[str, Any]) -> str:
    pairs = _flatten(mapping)
    width = max((len(k) for k, _ in pairs), default=0)
    lines = []
    for key, value in pairs:
        first, *rest = value.splitlines() or [""]
        lines.append(f"{key + ':':<{width + 1}} {first}")
        lines += [" " * (width + 2) + line for line in rest]
    return "\n".join(lines)


Columns = list[tuple[str, tuple[str, ...]]]  # header, keys to look for in this order
TASK_COLUMNS: Columns = [
    ("ID", ("id", "task_id")),
    ("STATUS", ("status",)),
    ("USER", ("user", "login", "user_login", "user_id")),
    ("ATTEMPT", ("attempt", "attempts")),
    ("REPO", ("repo", "repo_url")),
    ("NODE", ("node",)),
    ("CREATED", ("created", "created_at")),
]
NODE_COLUMNS: Columns = [
    ("NODE", ("name",)),
    ("ID", ("id",)),
    ("STATE", ("state",)),
    ("HEARTBEAT AGE S", ("heartbeat_age_s",)),
    ("RUNNING", ("running",)),
    ("CONCURRENCY", ("concurrency",)),
    ("HOST", ("host",)),
    ("PID", ("pid",)),
]


def _cell(row: dict[str, Any], keys: tuple[str, ...]) -> str:
    for key in keys:
        if key in row:
            text = " ".join(fmt(row[key], key).split())
            return text if len(text) <= _CELL_MAX else text[: _CELL_MAX - 1] + "…"
    return "-"


def table(rows: list[dict[str, Any]], columns: Columns | None = None) -> str:
    """Rows as aligned columns: the ``columns`` any row has, else every key seen."""
    if columns is not None:
        columns = [(h, ks) for h, ks in columns if any(k in r for r in rows for k in ks)]
    if not columns:
        seen = dict.fromkeys(k for row in rows for k in row)
        columns = [(k.upper(), (k,)) for k in seen]
    cells = [[h for h, _ in columns]] + [[_cell(r, ks) for _, ks in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
                     for line in cells)


def _rows(result: Any) -> list[dict[str, Any]] | None:
    """The list of records in a result: the result itself or its one list-of-records value."""
    if isinstance(result, list) and all(isinstance(r, dict) for r in result):
        return result
    if isinstance(result, dict):
        lists = [v for v in result.values()
                 if isinstance(v, list) and all(isinstance(r, dict) for r in v)]
        if len(lists) == 1:
            return lists[0]
    return None


def render(result: Any, columns: Columns | None = None, empty: str = "(none)") -> str:
    if result is None or result is True:
        return "ok"
    if isinstance(result, (dict, list)):
        rows = _rows(result)
        if rows is not None and (columns is not None or isinstance(result, list)):
            return table(rows, columns) if rows else empty
        if isinstance(result, dict):
            return key_values(result)
        return "\n".join(fmt(item) for item in result)
    return fmt(result)


def event_line(event: Any) -> str:
    """``seq  ts  type  short data`` for one streamed task event."""
    if not isinstance(event, dict):
        return fmt(event)
    kind = event.get("event") if isinstance(event.get("event"), str) else event.get("type")
    ts = event.get("ts")
    if isinstance(ts, (int, float)) and not isinstance(ts, bool):
        ts = time.strftime("%H:%M:%S", time.localtime(ts))
    data = event.get("data")
    if isinstance(data, dict) and isinstance(data.get("text"), str) and len(data) == 1:
        summary = data["text"]
    else:
        summary = "" if data in (None, {}) else fmt(data)
    summary = " ".join(summary.split())
    if len(summary) > _SUMMARY_MAX:
        summary = summary[: _SUMMARY_MAX - 1] + "…"
    seq = event.get("seq")
    return f"{'-' if seq is None else seq:>5}  {ts or '-'}  {kind or '?':<18}  {summary}".rstrip()


# ------------------------------------------------------------------------------------ commands


def _show_token(result: Any, ns: argparse.Namespace) -> None:
    token = result.get("token") if isinstance(result, dict) else result
    if not isinstance(token, str):
        print(render(result))
        return
    print(f"API token for {ns.login} (shown only once, keep it now):", file=sys.stderr)
    print(token)


@dataclass(frozen=True)
class Command:
    cmd: str
    args: Callable[[argparse.Namespace], dict[str, Any]] = lambda ns: {}
    show: Callable[[Any, argparse.Namespace], None] = lambda result, ns: print(render(result))
    streaming: bool = False


def _show_status(result: Any, ns: argparse.Namespace) -> None:
    """This daemon's status, then every node sharing its store."""
    if not isinstance(result, dict) or not isinstance(result.get("nodes"), list):
        print(render(result))
        return
    nodes = result["nodes"]
    print(key_values({k: v for k, v in result.items() if k != "nodes"}))
    print(f"\nnodes ({len(nodes)}):")
    print(table(nodes, NODE_COLUMNS) if nodes else "(none)")


def _task(ns: argparse.Namespace) -> dict[str, Any]:
    return {"id": ns.id}


COMMANDS: dict[str, Command] = {
    "status": Command("status", show=_show_status),
    "tasks": Command("tasks.list", lambda ns: {"status": ns.status, "user": ns.user},
                     lambda r, ns: print(render(r, TASK_COLUMNS, "(no tasks)"))),
    "task": Command("tasks.get", _task),
    "cancel": Command("tasks.cancel", _task),
    "retry": Command("tasks.retry", _task),
    "tail": Command("tasks.tail", lambda ns: {"id": ns.id, "after": ns.after},
                    streaming=True),
    "drain": Command("drain"),
    "resume": Command("resume"),
    "concurrency": Command("concurrency.set", lambda ns: {"n": ns.n}),
    "users": Command("users.list", show=lambda r, ns: print(render(r, [], "(no users)"))),
    "user-add": Command("users.add", lambda ns: {"login": ns.login, **({"operator": True} if ns.operator else {})},
                        _show_token),
    "revoke": Command("users.revoke", lambda ns: {"login": ns.login}),
    "user-link": Command("users.link", lambda ns: {"login": ns.login, "github_id": ns.github_id,
                                                   **({"operator": True} if ns.operator else {})}),
    "backup": Command("backup", lambda ns: {"path": os.path.abspath(ns.path)}),
    "gc": Command("gc"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # Exit 2 means "daemon unreachable" to scripts, so a usage error must not use it.
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("0 is not a GitHub user id")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--socket", type=Path, metavar="PATH",
                        help="control socket (default: $AGENTD_CONTROL_SOCKET, else "
                             "$AGENTD_DATA_DIR/agentd.sock, else ./agentd-data/agentd.sock)")
    common.add_argument("--json", action="store_true", help="print the raw result as JSON")
    parser = _Parser(prog="agentctl", parents=[common], description="Operate a running agentd.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help, description=help)

    add("status", "daemon status: admission, concurrency, counts")
    p = add("tasks", "list tasks")
    p.add_argument("--status", metavar="S", default=None, help="only tasks in this state")
    p.add_argument("--user", metavar="LOGIN", default=None, help="only this user's tasks")
    for name, help in (("task", "show one task"), ("cancel", "cancel a task"),
                       ("retry", "queue a failed or cancelled task again")):
        add(name, help).add_argument("id", metavar="ID")
    p = add("tail", "follow a task's events until it ends")
    p.add_argument("id", metavar="ID")
    p.add_argument("--after", metavar="SEQ", type=_non_negative, default=0,
                   help="start after this event seq (default 0: from the beginning)")
    add("drain", "stop admitting tasks; running ones finish")
    add("resume", "admit tasks again after drain")
    add("concurrency", "set how many tasks run at once").add_argument(
        "n", metavar="N", type=_non_negative)
    add("users", "list users")
    p = add("user-add", "create a user and print a new API token")
    p.add_argument("login", metavar="LOGIN")
    p.add_argument("--operator", action="store_true", default=False,
                   help="the user may use the admin page (/admin) and its API")
    add("revoke", "revoke a user's API tokens").add_argument("login", metavar="LOGIN")
    p = add("user-link", "link an account to a GitHub user id: their GitHub sign-in reaches it")
    p.add_argument("login", metavar="LOGIN")
    p.add_argument("github_id", metavar="GITHUB_ID", type=_positive,
                   help="GitHub's numeric user id (https://api.github.com/users/NAME shows it)")
    p.add_argument("--operator", action="store_true", default=False,
                   help="also make the account an operator")
    add("backup", "write a consistent copy of the database to PATH").add_argument(
        "path", metavar="PATH")
    add("gc", "remove old workspaces and expired data")
    return parser


async def _run(ns: argparse.Namespace, socket: Path, as_json: bool) -> None:
    command = COMMANDS[ns.command]
    async with await ControlClient.connect(socket) as client:
        if command.streaming:
            async with aclosing(client.stream(command.cmd, **command.args(ns))) as events:
                async for event in events:
                    print(json.dumps(event) if as_json else event_line(event), flush=True)
            return
        result = await client.call(command.cmd, **command.args(ns))
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        command.show(result, ns)


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    socket = Path(os.path.abspath(getattr(ns, "socket", None) or default_socket()))
    try:
        trio.run(_run, ns, socket, getattr(ns, "json", False))
    except DaemonUnreachable as exc:
        print(f"agentctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except CommandRefused as exc:
        print(f"agentctl: {ns.command}: {exc.message} ({exc.code})", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (``| head``) has gone; stop quietly, and keep the interpreter's final
        # flush from complaining about the same pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
