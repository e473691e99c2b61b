"""``agentd`` command line: ``serve`` and ``demo``. Errors become messages here and only here."""

from __future__ import annotations

import argparse
import errno
import gc
import logging
import os
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import trio

from . import __version__
from .config import Settings, load_settings
from .errors import ConfigError

EXIT_CONFIG = 2
E = TypeVar("E", bound=BaseException)
# The example script of a source checkout (README, "Running the daemon").
EXAMPLE_SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "hello.json"
PRIVATE_UMASK = 0o077
# What earlier versions (or an operator's mkdir) may have left open to others in the data dir.
_PRIVATE_PATHS = {
    "": 0o700,
    "workspaces": 0o700,
    "agentd.db": 0o600,
    "agentd.db-wal": 0o600,
    "agentd.db-shm": 0o600,
    "secret.key": 0o600,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"agentd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the daemon")
    # Every default is None so that only flags actually given overlay env and file.
    serve.add_argument("--config", type=Path, help="TOML settings file")
    serve.add_argument("--data-dir", type=Path)
    serve.add_argument(
        "--store",
        metavar="URL",
        help="postgresql://user@host/db to share one PostgreSQL between daemons "
        "(default: SQLite in the data dir)",
    )
    serve.add_argument("--http", metavar="HOST:PORT")
    serve.add_argument("--control-socket", type=Path)
    serve.add_argument("--concurrency", type=int)
    serve.add_argument("--model", choices=["anthropic", "scripted"])
    serve.add_argument("--script", type=Path, help="model script for --model scripted")
    serve.add_argument("--log-level", help="debug, info (default), warning, error or critical")
    serve.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        help="auto (default): console lines on a terminal, JSON lines otherwise",
    )
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
    flags: dict[str, object] = {
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
    missing = missing_model(settings)
    if missing:
        print(f"agentd: {missing}", file=sys.stderr)
        return EXIT_CONFIG
    # Off until the daemon serves (``run_daemon`` turns it on): the start allocates much and
    # frees little (modules, classes, the app), so collections then find nothing to collect.
    gc.disable()
    from .logs import configure as configure_logging
    from .service import Daemon, run_daemon

    configure_logging(settings.log_level, settings.log_format)
    make_private(settings.data_dir)
    exit_code = 0
    try:
        trio.run(run_daemon, Daemon(settings))
    except* ConfigError as group:
        print(f"agentd: {_first(group, lambda exc: True)}", file=sys.stderr)
        exit_code = EXIT_CONFIG
    except* OSError as group:
        # Binding the HTTP port is the one OSError of starting that a user causes and fixes.
        if _first(group, lambda exc: exc.errno == errno.EADDRINUSE) is None:
            raise
        print(
            f"agentd: {settings.http} is in use (another agentd, or another program, listens "
            "there): stop it or choose another --http HOST:PORT",
            file=sys.stderr,
        )
        exit_code = EXIT_CONFIG
    return exit_code


def _first(group: BaseExceptionGroup[E], match: Callable[[E], bool]) -> E | None:
    """The first exception of ``group``, however nested, that ``match`` accepts."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found = _first(exc, match)
            if found is not None:
                return found
        elif match(exc):
            return exc
    return None


def missing_model(settings: Settings) -> str | None:
    """What to do, in one line, when no model can run: neither an API key nor a script."""
    if settings.model_name != "scripted" or settings.script is not None:
        return None
    script = _shown(EXAMPLE_SCRIPT) if EXAMPLE_SCRIPT.is_file() else "FILE"
    if settings.model == "scripted":
        return f"the scripted model needs a script: add --script {script} (its format: examples/README.md)"
    return f"no model configured: set ANTHROPIC_API_KEY, or run with --model scripted --script {script}"


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is beneath it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def make_private(data_dir: Path) -> None:
    """From here on, what this process creates is its user's alone: umask 077 (files 0600,
    directories 0700), inherited by every process it starts (git, the tools' shells). Of what
    exists already, the data dir, ``workspaces``, the database and the secret key lose any
    permission for group and others (logged); files this user does not own are left alone.
    """
    os.umask(PRIVATE_UMASK)
    log = logging.getLogger("agentd")
    for name, mode in _PRIVATE_PATHS.items():
        path = data_dir / name if name else data_dir
        try:
            st = os.lstat(path)
            if st.st_uid != os.geteuid() or stat.S_ISLNK(st.st_mode) or not stat.S_IMODE(st.st_mode) & 0o077:
                continue
            os.chmod(path, mode)
        except OSError:
            continue  # not there yet (made private when made), or not ours to change
        log.warning("%s was mode %03o, open to others; made it %03o", path, stat.S_IMODE(st.st_mode), mode)


if __name__ == "__main__":
    sys.exit(main())
