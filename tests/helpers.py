"""Small async helpers for tests: run a supervisor, wait for a task's status through its events,
play a WebSocket session's writer."""

from __future__ import annotations

import math
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from cryptography.fernet import Fernet

from daemon.config import Settings
from daemon.metrics import Metrics
from daemon.rate_limit import RateLimiter
from daemon.secrets import SecretBox
from daemon.services import Services
from daemon.states import TaskStatus
from daemon.supervisor import Backoff, Supervisor
from daemon.web.session import State

from .conftest import fake_wall


async def sandboxed_push(ws, message: str, *, identity: tuple[str, str], **overrides):
    """``commit_and_push`` as the agent loop calls it: the commit made in the task's sandbox."""
    from daemon.agent.tools import ToolSettings
    from daemon.agent.tools.sandbox import TaskSandbox
    from daemon.git import commit_and_push

    async with TaskSandbox(ws.path, ToolSettings()) as sandbox:
        return await commit_and_push(
            ws, message, **{"token": None, "confinement": sandbox, "identity": identity, **overrides}
        )


@asynccontextmanager
async def running_supervisor(store, hub, runner, **kwargs) -> AsyncIterator[Supervisor]:
    """A supervisor started on the store; hard-cancelled on exit (like a crash) unless shut down."""
    kwargs.setdefault("max_duration_s", math.inf)
    kwargs.setdefault("backoff", Backoff(base_s=1.0, cap_s=60.0, max_attempts=5))
    supervisor = Supervisor(store, hub, runner, wall_clock=fake_wall, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        yield supervisor
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running_services(store, hub, runner, data_dir: Path, **kwargs) -> AsyncIterator[Services]:
    """The use cases' services over ``running_supervisor(store, hub, runner, **kwargs)`` (local
    remotes allowed, 60 creates a minute); leaving the block cancels it like a crash."""
    async with running_supervisor(store, hub, runner, **kwargs) as supervisor:
        yield Services(
            settings=Settings(data_dir=data_dir, allow_local_remotes=True),
            store=store,
            hub=hub,
            supervisor=supervisor,
            metrics=Metrics(),
            secrets=SecretBox([Fernet.generate_key()]),
            create_limiter=RateLimiter(per_min=60, burst=100),
        )


async def wait_status(hub, task_id: str, *statuses: TaskStatus) -> TaskStatus:
    """Follow the task's events until a ``task.status`` with one of ``statuses``; return it."""
    wanted = {s.value for s in statuses}
    async for event in hub.follow(task_id):
        if event.type == "task.status" and event.data["status"] in wanted:
            return TaskStatus(event.data["status"])
    raise AssertionError("unreachable")


async def finished_after(hub, task_id: str, after: int = 0, *, timeout_s: float = 60) -> str:
    """The status the task's next ``task.finished`` after seq ``after`` reports (within
    ``timeout_s``, a guard against a hang)."""
    with trio.fail_after(timeout_s):
        async for event in hub.follow(task_id, after):
            if event.type == "task.finished":
                return event.data["status"]
    raise AssertionError("unreachable")


async def submit(supervisor, user, prompt: str = "do it", **kwargs):
    task, _ = await supervisor.submit(user_id=user.id, repo_url="file:///repo", prompt=prompt, **kwargs)
    return task


class Wakeup:
    """A session's ``wake`` for tests: where the glue would write at once, a test's writer loop
    waits in ``wait`` until the session has something queued (or is closed)."""

    def __init__(self) -> None:
        self.session = None  # set by the test once the session exists
        self._event = trio.Event()

    def __call__(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        while not self.session.queue and self.session.state is not State.CLOSED:
            self._event = trio.Event()
            await self._event.wait()


async def in_one_batch(store, *jobs) -> list[object]:
    """Start each ``job()`` (a store call) in order while the writer is held, then let it run.

    Returns each job's result or exception, in order.
    """
    gate = threading.Event()
    held = trio.Event()

    def hold(conn) -> None:
        trio.from_thread.run_sync(held.set, trio_token=token)
        gate.wait(10)

    token = trio.lowlevel.current_trio_token()
    outcomes: list[object] = [None] * len(jobs)

    async def run(i: int, job) -> None:
        try:
            outcomes[i] = await job()
        except Exception as exc:  # noqa: BLE001 - compared by the test
            outcomes[i] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store._writer.run, hold)
        await held.wait()
        for i, job in enumerate(jobs):
            nursery.start_soon(run, i, job)
            await trio.testing.wait_all_tasks_blocked()
        gate.set()
    return outcomes


def cpu_list(text: str) -> set[int]:
    """``0-2,5`` (as /proc/<pid>/status writes ``Cpus_allowed_list``) -> {0, 1, 2, 5}."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def sqlite_at_version(path, version: int):
    """An apsw connection to a new SQLite database at ``path`` migrated up to ``version`` only,
    as that version of agentd left it: for tests of the migrations after it."""
    import apsw

    from daemon.store.schema import MIGRATIONS

    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(
        "CREATE TABLE schema_migrations "
        "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    for number, description, sql in MIGRATIONS:
        if number > version:
            break
        with conn:
            conn.execute(sql)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (number, description))
            conn.execute(f"PRAGMA user_version = {number}")
    return conn


async def wait_gone(pid: int) -> None:
    """Until process ``pid`` has exited (a pidfd turns readable when it does): no polling."""
    import os

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)
