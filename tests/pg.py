"""A real PostgreSQL for the tests: one server per session in a temp dir, one database per test.

The server is Debian's PostgreSQL (``/usr/lib/postgresql/<version>/bin``, 15 preferred),
started with ``initdb`` + ``pg_ctl start -w`` (which returns once the server accepts
connections) on 127.0.0.1 and a free port, trust authentication, and durability switched off
(fsync, synchronous_commit): a test database need not survive a power cut. As root, the server
runs as the ``postgres`` OS user (PostgreSQL refuses to run as root) in a directory chowned to
it. Everything is removed at the end of the session.

Without the server binary (or psycopg) the PostgreSQL tests are skipped, with the reason;
``AGENTD_REQUIRE_POSTGRES=1``, or ``CI=true``, turns that skip into a failure (CI installs it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

# One finder of the server binary for the tests and the benchmarks (standard library only).
from bench.pg_server import find_bindir

INSTALL_HINT = "install Debian's postgresql package (bash .ci/system-deps does, as root)"


def unavailable_reason() -> str | None:
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        return f"PostgreSQL tests need psycopg[binary] and psycopg-pool ({exc})"
    if find_bindir() is None:
        return f"no PostgreSQL server binary (/usr/lib/postgresql/*/bin/postgres): {INSTALL_HINT}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' OS user to run the server as"
    return None


def skip_unless_available() -> None:
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("AGENTD_REQUIRE_POSTGRES") == "1" or os.environ.get("CI") == "true":
        pytest.fail(
            f"PostgreSQL is required here (CI=true or AGENTD_REQUIRE_POSTGRES=1) but {reason}", pytrace=False
        )
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgServer:
    """One throwaway PostgreSQL cluster; ``start()`` then ``stop()`` (which removes it)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="agentd-pg-"))
        self.datadir = self.root / "data"
        self.port = _free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            user=self.user,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}\n{tail}")

    def start(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.root}",
                "-c max_connections=200",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
            ]
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        try:
            if (self.datadir / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database; returns its DSN."""
        import psycopg

        name = f"agentd_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        import psycopg

        name = dsn.rsplit("/", 1)[1]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            # FORCE: a store the test leaked (or a connection still closing) must not keep it.
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_server():
    """The session's PostgreSQL server (started on first use), or a skip saying why not."""
    skip_unless_available()
    bindir = find_bindir()
    assert bindir is not None
    server = PgServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(pg_server):
    """The DSN of a fresh, empty database for this test, dropped afterwards."""
    dsn = pg_server.create_database()
    try:
        yield dsn
    finally:
        pg_server.drop_database(dsn)
