"""Run the store-level tests on every store backend: SQLite, and PostgreSQL when it is installed.

A test in one of ``PARAMETRIZED_MODULES`` that uses the ``store`` fixture runs twice, as
``[sqlite]`` and ``[postgres]``. The ``store`` fixture itself (tests/conftest.py) is not
changed: for ``[postgres]``, the ``backend`` fixture (autouse, so it is set up before
``store``) points conftest's ``SqliteStore`` name at an opener that returns a ``PostgresStore``
on a fresh database of the session's server (tests/pg.py). Its teardown checks that the store
really was opened on PostgreSQL, so a fixture-order change cannot quietly test SQLite twice.

``@pytest.mark.sqlite_only("why")`` keeps a test on SQLite; its ``[postgres]`` variant is
reported as skipped with that reason. Without a PostgreSQL server every ``[postgres]`` variant
is skipped with the reason from tests/pg.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from . import conftest
from .pg import pg_dsn, pg_server  # noqa: F401 - fixtures, registered with this plugin

PARAMETRIZED_MODULES = frozenset({"tests.test_store_events", "tests.test_supervisor"})
BACKENDS = ("sqlite", "postgres")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only(reason): a store test about SQLite itself; not run on PostgreSQL"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store" not in metafunc.fixturenames or metafunc.module.__name__ not in PARAMETRIZED_MODULES:
        return
    only = metafunc.definition.get_closest_marker("sqlite_only")
    params = []
    for name in BACKENDS:
        marks = []
        if name != "sqlite" and only is not None:
            why = only.args[0] if only.args else "SQLite-specific"
            marks.append(pytest.mark.skip(reason=f"SQLite only: {why}"))
        params.append(pytest.param(name, id=name, marks=marks))
    metafunc.parametrize("backend", params, indirect=True)


class _PostgresOpener:
    """Stands in for ``SqliteStore`` in conftest's ``store`` fixture: ``open(data_dir)``."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.opened = 0

    async def open(self, data_dir: Path, **_: Any):
        from daemon.store.postgres import PostgresStore

        data_dir.mkdir(parents=True, exist_ok=True)  # tests may still put files there
        self.opened += 1
        return await PostgresStore.open(self.dsn)


@pytest.fixture(autouse=True)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The store backend of this test: "sqlite" unless parametrized (see module docstring)."""
    name = getattr(request, "param", "sqlite")
    if name != "postgres":
        yield name
        return
    dsn = request.getfixturevalue("pg_dsn")  # skips, with the reason, without a server
    opener = _PostgresOpener(dsn)
    monkeypatch.setattr(conftest, "SqliteStore", opener)
    yield name
    # Torn down after ``store``: had it been set up first, it would have opened SQLite.
    if "store" in request.fixturenames and opener.opened == 0:
        pytest.fail("the [postgres] variant ran on SQLite: `store` was set up before `backend`")
