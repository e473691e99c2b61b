"""``agentd`` command line: ``serve`` and ``demo``. Errors become messages here and only here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import trio

from .config import load_settings
from .errors import ConfigError

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentd", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the daemon")
    # Every default is None so that only flags actually given overlay env and file.
    serve.add_argument("--config", type=Path, help="TOML settings file")
    serve.add_argument("--data-dir", type=Path)
    serve.add_argument("--store", metavar="URL",
                       help="postgresql://user@host/db to share one PostgreSQL between daemons "
                            "(default: SQLite in the data dir)")
    serve.add_argument("--http", metavar="HOST:PORT")
    serve.add_argument("--control-socket", type=Path)
    serve.add_argument("--concurrency", type=int)
    serve.add_argument("--model", choices=["anthropic", "scripted"])
    serve.add_argument("--script", type=Path, help="model script for --model scripted")
    serve.add_argument("--log-level", help="debug, info (default), warning, error or critical")
    serve.add_argument("--log-format", choices=["auto", "json", "console"],
                       help="auto (default): console lines on a terminal, JSON lines otherwise")
    demo = commands.add_parser("demo", help="run a whole task offline and show it")
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(keep=args.keep)
    return 2  # unreachable: argparse requires a command


def _serve(args: argparse.Namespace) -> int:
    flags: dict[str, Any] = {
        "data_dir": args.data_dir,
        "store": args.store,
        "http": args.http,
        "control_socket": args.control_socket,
        "concurrency": args.concurrency,
        "model": args.model,
        "script": args.script,
        "log_level": args.log_level,
        "log_format": args.log_format,
    }
    try:
        settings = load_settings(config_file=args.config, flags=flags)
    except ConfigError as exc:
        print(f"agentd: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    from .logs import configure as configure_logging
    from .service import Daemon, run_daemon

    configure_logging(settings.log_level, settings.log_format)
    exit_code = 0
    try:
        trio.run(run_daemon, Daemon(settings))
    except* ConfigError as group:
        print(f"agentd: {group.exceptions[0]}", file=sys.stderr)
        exit_code = EXIT_CONFIG
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
