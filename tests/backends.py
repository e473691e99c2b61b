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

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import conftest
from .fakes import phone
from .pg import pg_dsn, pg_server  # noqa: F401 - fixtures, registered with this plugin

# Every module whose tests touch a store: through the ``store`` fixture, or a whole daemon
# (``tests/fakes/phone.running_daemon``, which opens the store the test's backend names).
PARAMETRIZED_MODULES = frozenset(
    {
        "tests.test_store_events",
        "tests.test_supervisor",
        "tests.test_agent_loop",
        "tests.test_agent_e2e",
        "tests.test_api_tasks",
        "tests.test_api_authz",
        "tests.test_api_limits",
        "tests.test_ws_live",
        "tests.test_ws_operator",
        "tests.test_admin_api",
        "tests.test_metrics",
        "tests.test_maintenance",
        "tests.test_oauth_github",
        "tests.test_logs",
        "tests.test_fuzz_api",
        "tests.test_fuzz_ws",
        "tests.test_fuzz_control",
        "tests.test_ws_listener",
        "tests.test_agentctl_daemon",
        "tests.test_client_browser_ops",
        "tests.test_outbox",
        "tests.test_webhooks",
        "tests.test_ntfy",
        "tests.test_webpush_api",
        "tests.test_webpush_e2e",
        "tests.test_retention",
        "tests.test_retention_live",
        "tests.test_retention_shares",
        "tests.test_key_rotation",
        "tests.test_share_links",
        "tests.test_share_links_ws",
        "tests.test_task_options",
    }
)
BACKENDS = ("sqlite", "postgres")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only(reason): a store test about SQLite itself; not run on PostgreSQL"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.module.__name__ not in PARAMETRIZED_MODULES or not _touches_a_store(metafunc):
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


def _touches_a_store(metafunc: pytest.Metafunc) -> bool:
    """The test uses the ``store`` fixture, or starts a daemon (in this process or as a
    subprocess), itself or through a fixture."""
    if "store" in metafunc.fixturenames:
        return True
    functions = [metafunc.definition.function]
    for name in metafunc.fixturenames:
        functions += [fixturedef.func for fixturedef in metafunc._arg2fixturedefs.get(name, ())]
    # One step further: a helper of the test's module that starts the daemon (a shared fixture body).
    helpers = [getattr(metafunc.module, n, None) for f in functions for n in _names(f)]
    functions += [inspect.unwrap(h) for h in helpers if callable(h)]
    starts = {"running_daemon", "DaemonProcess"}
    return any(starts & _names(f) for f in functions)


def _names(function: Any) -> set[str]:
    code = getattr(function, "__code__", None)
    return set(code.co_names) if code is not None else set()


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
    monkeypatch.setattr(phone, "STORE_URL", dsn)  # daemons the test starts use it too
    yield name
    # Torn down after ``store``: had it been set up first, it would have opened SQLite.
    if "store" in request.fixturenames and opener.opened == 0:
        pytest.fail("the [postgres] variant ran on SQLite: `store` was set up before `backend`")
