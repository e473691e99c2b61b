"""``agentctl``: operate a running agentd over its control socket (design §3).

Exit status: 0 success, 1 the daemon refused the command, 2 the daemon cannot be reached,
64 a usage error, 130 interrupted (Ctrl-C). Tables are for people; ``--json`` prints the
daemon's result as it is (``tail --json``: one JSON object per line). A task is named by its id
or the start of it (8 characters at least). Shell completion: argcomplete's
``eval "$(register-python-argcomplete agentctl)"``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import trio

from . import notify_cli, share_cli, upkeep_cli, user_cli
from .client import CommandRefused, ControlClient, DaemonUnreachable
from .render import (
    NODE_COLUMNS,
    TASK_COLUMNS,
    event_line,
    is_waiting_for_input,
    key_values,
    render,
    table,
)

EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 64, 130


# Where the shipped systemd unit's daemon listens (deploy/agentd.service: RuntimeDirectory=agentd).
SYSTEMD_SOCKET = Path("/run/agentd/agentd.sock")


def socket_candidates(env: Mapping[str, str] = os.environ) -> list[Path]:
    """Where agentctl looks for the control socket, in order, when ``--socket`` is not given:
    ``$AGENTD_CONTROL_SOCKET`` alone when set, else ``$AGENTD_DATA_DIR/agentd.sock`` alone when
    set, else the systemd unit's ``/run/agentd/agentd.sock`` then the default data dir's
    ``./agentd-data/agentd.sock`` (the daemon's own defaults, ``daemon/config.py``)."""
    if env.get("AGENTD_CONTROL_SOCKET"):
        return [Path(env["AGENTD_CONTROL_SOCKET"])]
    if env.get("AGENTD_DATA_DIR"):
        return [Path(env["AGENTD_DATA_DIR"]) / "agentd.sock"]
    return [SYSTEMD_SOCKET, Path("agentd-data") / "agentd.sock"]


class NoSocket(Exception):
    """None of the places agentctl looks holds a socket; the message lists them."""

    def __init__(self, looked: Sequence[Path]) -> None:
        places = " and ".join(str(path) for path in looked)
        super().__init__(
            f"no agentd control socket found: looked at {places} (is agentd running? "
            "give --socket PATH or set AGENTD_CONTROL_SOCKET)"
        )


def find_socket(env: Mapping[str, str] = os.environ) -> Path:
    """The first of ``socket_candidates`` that is there, made absolute. One candidate is taken
    as it is (connecting names it if it is missing); of several, one that cannot be looked at
    (a directory of the agentd group's) counts as there, so that connecting says why.
    Raises ``NoSocket`` when none of several is there."""
    candidates = [Path(os.path.abspath(path)) for path in socket_candidates(env)]
    if len(candidates) == 1:
        return candidates[0]
    for path in candidates:
        try:
            os.stat(path)
        except PermissionError:
            return path
        except OSError:
            continue
        return path
    raise NoSocket(candidates)


# ------------------------------------------------------------------------------------ commands


@dataclass(frozen=True)
class Command:
    cmd: str
    args: Callable[[argparse.Namespace], dict[str, object]] = lambda ns: {}
    show: Callable[[object, argparse.Namespace], None] = lambda result, ns: print(render(result))
    streaming: bool = False


def _show_status(result: object, ns: argparse.Namespace) -> None:
    """This daemon's status, then every node sharing its store."""
    if not isinstance(result, dict) or not isinstance(result.get("nodes"), list):
        print(render(result))
        return
    nodes = result["nodes"]
    print(key_values({k: v for k, v in result.items() if k != "nodes"}))
    print(f"\nnodes ({len(nodes)}):")
    print(table(nodes, NODE_COLUMNS) if nodes else "(none)")


def _task(ns: argparse.Namespace) -> dict[str, object]:
    return {"id": ns.id}


BUDGET_FLAGS = ("max_turns", "max_tokens", "max_usd")
TASK_ID_HELP = "the task's id, or a start of it that no other task's has (8 characters at least)"


def _new_task(ns: argparse.Namespace) -> dict[str, object]:
    """``create``'s arguments; a PROMPT of ``-`` is read from standard input."""
    budget = {cap: getattr(ns, cap) for cap in BUDGET_FLAGS if getattr(ns, cap) is not None}
    # The task's options only when given: the daemon's defaults otherwise.
    options = {"model": ns.model, "draft": ns.draft or None, "pr_title": ns.title}
    return {
        "repo_url": ns.repo,
        "prompt": sys.stdin.read() if ns.prompt == "-" else ns.prompt,
        "base_branch": ns.base,
        "user": ns.user,
        "budget": budget,
        **{key: value for key, value in options.items() if value is not None},
    }


def _show_created(result: object, ns: argparse.Namespace) -> None:
    """The new task's id on stdout (for ``id=$(agentctl create ...)``), what next on stderr."""
    if not isinstance(result, dict) or not isinstance(result.get("id"), str):
        print(render(result))
        return
    task_id = result["id"]
    print(task_id)
    print(
        f"task for {result.get('user_login')}, {result.get('status')}; follow it: agentctl tail {task_id}",
        file=sys.stderr,
    )


COMMANDS: dict[str, Command] = {
    "status": Command("status", show=_show_status),
    "tasks": Command(
        "tasks.list",
        lambda ns: {"status": ns.status, "user": ns.user},
        lambda r, ns: print(render(r, TASK_COLUMNS, "(no tasks)")),
    ),
    "create": Command("tasks.create", _new_task, _show_created),
    "task": Command("tasks.get", _task),
    "cancel": Command("tasks.cancel", _task),
    "retry": Command("tasks.retry", _task),
    "review": Command("tasks.review", _task),
    "tail": Command("tasks.tail", lambda ns: {"id": ns.id, "after": ns.after}, streaming=True),
    "drain": Command("drain"),
    "resume": Command("resume"),
    "concurrency": Command("concurrency.set", lambda ns: {"n": ns.n}),
    **user_cli.commands(Command),
    **upkeep_cli.commands(Command),
    **notify_cli.commands(Command),
    **share_cli.commands(Command),
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


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("0 is not a GitHub user id")
    return value


class _Version(argparse.Action):
    """``--version``: the daemon's version (imported only when asked: it loads the settings)."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str = argparse.SUPPRESS,
        help: str = "print the version and exit",
    ) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        from daemon import __version__

        print(f"agentctl {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument(
        "--socket",
        type=Path,
        metavar="PATH",
        help="control socket (default: $AGENTD_CONTROL_SOCKET, else "
        "$AGENTD_DATA_DIR/agentd.sock, else the first there of "
        f"{SYSTEMD_SOCKET} and ./agentd-data/agentd.sock)",
    )
    common.add_argument("--json", action="store_true", help="print the raw result as JSON")
    parser = _Parser(prog="agentctl", parents=[common], description="Operate a running agentd.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help, description=help)

    add("status", "daemon status: admission, concurrency, counts")
    p = add("tasks", "list tasks")
    p.add_argument("--status", metavar="S", default=None, help="only tasks in this state")
    p.add_argument("--user", metavar="LOGIN", default=None, help="only this user's tasks")
    p = add("create", "queue a task on REPO doing PROMPT; prints its id")
    p.add_argument("repo", metavar="REPO", help="the git repository's URL (https, ssh or git)")
    p.add_argument("prompt", metavar="PROMPT", help="what the agent is to do; - reads it from standard input")
    p.add_argument(
        "--base", metavar="BRANCH", default=None, help="branch to start from (default: the remote's HEAD)"
    )
    p.add_argument(
        "--user",
        metavar="LOGIN",
        default=None,
        help="whose task it is (needed when the daemon has more than one user)",
    )
    p.add_argument(
        "--model", metavar="MODEL", default=None, help="one of the operator's models (default: the daemon's)"
    )
    p.add_argument("--draft", action="store_true", help="open its pull request as a draft")
    p.add_argument(
        "--title",
        metavar="TITLE",
        default=None,
        help="its pull request's title, one line (default: the prompt's first line)",
    )
    p.add_argument(
        "--max-usd", type=_finite, metavar="USD", default=None, help="model cost cap in US dollars"
    )
    p.add_argument("--max-turns", type=_non_negative, metavar="N", default=None, help="model turns at most")
    p.add_argument("--max-tokens", type=_non_negative, metavar="N", default=None, help="tokens at most")
    for name, help in (
        ("task", "show one task"),
        ("cancel", "cancel a task"),
        ("retry", "queue a failed or cancelled task again"),
        ("review", "send the task's pull request reviews and failing checks to it as a follow-up"),
    ):
        add(name, help).add_argument("id", metavar="ID", help=TASK_ID_HELP)
    p = add("tail", "print a task's events, following live until it ends or waits for input")
    p.add_argument("id", metavar="ID", help=TASK_ID_HELP)
    p.add_argument(
        "--after",
        metavar="SEQ",
        type=_non_negative,
        default=0,
        help="start after this event seq (default 0: from the beginning)",
    )
    p.add_argument(
        "--follow",
        action="store_true",
        default=False,
        help="keep following while the task waits for input, until it ends",
    )
    add("drain", "stop admitting tasks; running ones finish")
    add("resume", "admit tasks again after drain")
    add("concurrency", "set how many tasks run at once").add_argument("n", metavar="N", type=_non_negative)
    user_cli.add_parsers(add, _positive)
    upkeep_cli.add_parsers(add)
    notify_cli.add_parsers(add)
    share_cli.add_parsers(add, TASK_ID_HELP)
    return parser


async def _run(ns: argparse.Namespace, socket: Path, as_json: bool) -> None:
    command = COMMANDS[ns.command]
    async with await ControlClient.connect(socket) as client:
        if command.streaming:
            await _tail(client, command, ns, as_json)
            return
        result = await client.call(command.cmd, **command.args(ns))
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        command.show(result, ns)


async def _tail(client: ControlClient, command: Command, ns: argparse.Namespace, as_json: bool) -> None:
    """Print the task's events (a line each, or its JSON) until the stream ends, or until the
    task waits for input unless ``--follow``."""
    async with aclosing(client.stream(command.cmd, **command.args(ns))) as events:
        async for event in events:
            print(json.dumps(event) if as_json else event_line(event), flush=True)
            if not ns.follow and is_waiting_for_input(event) and await _still_waiting(client, event):
                print(
                    f"agentctl: task {event['task_id']} waits for input: answer it with POST "
                    f"/api/tasks/{event['task_id']}/messages; tail --follow keeps following",
                    file=sys.stderr,
                )
                return


async def _still_waiting(client: ControlClient, event: dict[str, object]) -> bool:
    """Whether the task still waits at this event: a replayed wait that was answered long ago
    does not stop the tail."""
    task = await client.call("tasks.get", id=event.get("task_id"))
    seq = event.get("seq")
    return (
        isinstance(task, dict)
        and task.get("status") == "waiting_input"
        and isinstance(seq, int)
        and task.get("last_seq", seq) == seq
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks what to complete: argcomplete answers, exits
        import argcomplete

        argcomplete.autocomplete(parser)
    ns = parser.parse_args(argv)
    try:
        socket = getattr(ns, "socket", None) or find_socket()
        trio.run(_run, ns, Path(os.path.abspath(socket)), getattr(ns, "json", False))
    except NoSocket as exc:
        print(f"agentctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
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
