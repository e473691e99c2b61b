"""A throwaway PostgreSQL for the queue benchmarks on PostgreSQL: Debian's server binaries
(``/usr/lib/postgresql/<version>/bin``, 15 preferred), ``initdb`` + ``pg_ctl start -w`` in a temp
dir, on 127.0.0.1 and a free port, trust authentication; stopped (and the dir removed) on exit.

Durability is left at PostgreSQL's defaults (fsync on, synchronous_commit on, full_page_writes
on): these figures compare durable queues, so every commit reaches the disk as it would in
production. (``tests/pg.py`` switches them off; a test database need not survive a power cut.)
As root, the server runs as the ``postgres`` OS user (PostgreSQL refuses to run as root) in a
directory chowned to it.

Each measurement gets a fresh database (``fresh_database``), made and dropped with the server's
own ``createdb`` / ``dropdb``, so nothing here needs a Python driver: the project's venv and the
peers' venv both import this module.

    python bench/pg_server.py     # start one, print its DSN, stop on Enter
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

PREFERRED_VERSION = "15"
INSTALL_HINT = "apt-get install -y postgresql (Debian's server package)"
SUPERUSER = "postgres"


def find_bindir() -> Path | None:
    """The bin dir of the installed PostgreSQL server, 15 first, else the newest.

    ``AGENTD_PG_BINDIR`` overrides the search (as for the tests).
    """
    override = os.environ.get("AGENTD_PG_BINDIR")
    if override:
        return Path(override) if (Path(override) / "postgres").exists() else None
    preferred = Path(f"/usr/lib/postgresql/{PREFERRED_VERSION}/bin")
    if (preferred / "postgres").exists():
        return preferred
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


def unavailable_reason() -> str | None:
    """Why no server can be started here, or None when one can."""
    if find_bindir() is None:
        return f"no PostgreSQL server binary (/usr/lib/postgresql/*/bin/postgres): {INSTALL_HINT}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return f"running as root and there is no '{SUPERUSER}' OS user to run the server as"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(
    bindir: Path,
    *args: str,
    user: str | None = None,
    cwd: Path | None = None,
    timeout_s: float = 120.0,
    log: Path | None = None,
) -> None:
    result = subprocess.run(
        [str(bindir / args[0]), *args[1:]],
        user=user,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
        raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}\n{tail}")


def _split(dsn: str) -> tuple[str, str, str]:
    """host, port, dbname of a ``postgresql://user@host:port/dbname`` DSN made here."""
    rest = dsn.split("://", 1)[1]
    hostport, dbname = rest.split("@", 1)[1].split("/", 1)
    host, port = hostport.rsplit(":", 1)
    return host, port, dbname


@contextlib.contextmanager
def pg_server(timeout_s: float = 60.0) -> Iterator[str]:
    """Yield ``postgresql://postgres@127.0.0.1:PORT/postgres`` of a fresh cluster.

    Stopped with ``pg_ctl stop -m fast`` (then ``immediate`` if that times out) and removed
    after. Raises RuntimeError (with ``unavailable_reason()``) when no server can be started.
    """
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    bindir = find_bindir()
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="agentd-bench-pg-"))
    datadir, log = root / "data", root / "server.log"
    user = None
    if os.geteuid() == 0:
        user = SUPERUSER
        entry = pwd.getpwnam(SUPERUSER)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    port = free_port()
    try:
        # --no-sync only skips flushing initdb's own files; the running server keeps fsync on.
        _run(
            bindir,
            "initdb",
            "-D",
            str(datadir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            user=user,
            cwd=root,
        )
        options = " ".join(
            [
                f"-p {port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={root}",
                "-c max_connections=200",
            ]
        )
        # -w: pg_ctl returns once the server accepts connections (no sleep-and-hope).
        _run(
            bindir,
            "pg_ctl",
            "-D",
            str(datadir),
            "-l",
            str(log),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout_s)),
            "start",
            user=user,
            cwd=root,
            log=log,
        )
        yield f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres"
    finally:
        try:
            if (datadir / "postmaster.pid").exists():
                try:
                    _run(
                        bindir,
                        "pg_ctl",
                        "-D",
                        str(datadir),
                        "-m",
                        "fast",
                        "-w",
                        "-t",
                        "20",
                        "stop",
                        user=user,
                        cwd=root,
                        timeout_s=30,
                    )
                except (RuntimeError, subprocess.TimeoutExpired):
                    _run(
                        bindir,
                        "pg_ctl",
                        "-D",
                        str(datadir),
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                        user=user,
                        cwd=root,
                        timeout_s=30,
                    )
        finally:
            shutil.rmtree(root, ignore_errors=True)


def create_database(server_dsn: str, prefix: str = "bench") -> str:
    """A new empty database on the server of ``server_dsn``; returns its DSN."""
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError(unavailable_reason() or "no PostgreSQL binaries")
    host, port, _ = _split(server_dsn)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    _run(bindir, "createdb", "-h", host, "-p", port, "-U", SUPERUSER, "-T", "template0", name, timeout_s=60)
    return server_dsn.rsplit("/", 1)[0] + "/" + name


def drop_database(dsn: str) -> None:
    """Drop the database of ``dsn``, closing whatever connections are still on it."""
    bindir = find_bindir()
    if bindir is None:
        return
    host, port, name = _split(dsn)
    _run(
        bindir,
        "dropdb",
        "-h",
        host,
        "-p",
        port,
        "-U",
        SUPERUSER,
        "--if-exists",
        "--force",
        name,
        timeout_s=60,
    )


@contextlib.contextmanager
def fresh_database(server_dsn: str, prefix: str = "bench") -> Iterator[str]:
    """A new empty database for one measurement, dropped after it."""
    dsn = create_database(server_dsn, prefix)
    try:
        yield dsn
    finally:
        drop_database(dsn)


if __name__ == "__main__":
    began = time.perf_counter()
    with pg_server() as server:
        print(f"{server}  (up in {time.perf_counter() - began:.2f} s)", flush=True)
        if sys.stdin.isatty():
            input("Enter stops it ")
