"""Schema v8: operator accounts lose the GitHub ids that sign-ins before v8 gave them by login.

Before v8 a GitHub sign-in took the account whose login matched, an operator's too, so an
operator's ``github_id`` says nothing about who signed in. v8 clears it (and the GitHub token),
revokes the API tokens those sign-ins issued, and leaves every other account and token as it
was. Run on SQLite and, with a server, on PostgreSQL.
"""

from __future__ import annotations

import pytest

from daemon.store import SqliteStore
from tests.helpers import sqlite_at_version

ROWS = [  # login, github_id, is_operator
    ("root", 11, True),  # took over by login, or not: unknown, so unlinked
    ("ops", None, True),
    ("octocat", 583231, False),  # a GitHub account: stays
]
TOKENS = [  # user login, hash, label
    ("root", "h-root-signin", "github sign-in"),
    ("root", "h-root-ctl", "agentctl"),
    ("octocat", "h-octo-signin", "github sign-in"),
]


def _fill(execute, true, false) -> None:
    for n, (login, github_id, operator) in enumerate(ROWS, start=1):
        execute(
            "INSERT INTO users (id, login, github_id, github_token_enc, is_operator, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, 0, 0)",
            (n, login, github_id, b"enc" if github_id else None, true if operator else false),
        )
    ids = {login: n for n, (login, _, _) in enumerate(ROWS, start=1)}
    for login, token_hash, label in TOKENS:
        execute(
            "INSERT INTO api_tokens (user_id, token_hash, label, created_at) VALUES (?, ?, ?, 0)",
            (ids[login], token_hash, label),
        )


async def _check(store) -> None:
    by_login = {u.login: u for u in await store.list_users()}
    assert by_login["root"].github_id is None and by_login["root"].is_operator
    assert await store.github_token_enc(by_login["root"].id) is None
    assert by_login["octocat"].github_id == 583231
    assert await store.github_token_enc(by_login["octocat"].id) == b"enc"
    assert await store.user_by_token_hash("h-root-signin") is None  # revoked
    assert (await store.user_by_token_hash("h-root-ctl")).login == "root"
    assert (await store.user_by_token_hash("h-octo-signin")).login == "octocat"


@pytest.mark.sqlite_only("the SQLite schema")
async def test_v8_on_sqlite(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    conn = sqlite_at_version(data_dir / "agentd.db", 7)
    with conn:
        _fill(conn.execute, 1, 0)
    conn.close()
    store = await SqliteStore.open(data_dir)
    try:
        await _check(store)
    finally:
        await store.aclose()


async def test_v8_on_postgres(pg_dsn):
    psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL store needs psycopg[binary]")
    from daemon.store.postgres import PostgresStore
    from daemon.store.postgres_schema import MIGRATIONS as PG_MIGRATIONS

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
            "description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
        )
        for version, description, sql in PG_MIGRATIONS:
            if version > 7:
                break
            with conn.transaction():
                conn.execute(sql)
                conn.execute("INSERT INTO schema_migrations VALUES (%s, %s, 0)", (version, description))
        with conn.transaction():
            _fill(lambda sql, params: conn.execute(sql.replace("?", "%s"), params), True, False)
    store = await PostgresStore.open(pg_dsn)
    try:
        await _check(store)
    finally:
        await store.aclose()
