"""Shared fixtures: a real SQLite store in a temp dir, its event hub, a fake wall clock."""

from __future__ import annotations

import contextlib
import os
import sys
import threading

import pytest
import trio
from trio.testing import MockClock

from daemon.events import EventHub
from daemon.store import SqliteStore, inflight, sqlite_queries as q

pytest_plugins = ["tests.backends"]

EPOCH = 1_800_000_000.0


def fake_wall() -> float:
    """Wall-clock seconds that follow trio's (mock) clock, so due times are testable."""
    return EPOCH + trio.current_time()


@pytest.fixture
async def store(tmp_path):
    store = await SqliteStore.open(tmp_path / "data")
    store.now = fake_wall
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
async def hub(store):
    return EventHub(store)


@pytest.fixture
async def alice(store):
    return await store.upsert_user("alice")


@pytest.fixture
async def bob(store):
    return await store.upsert_user("bob")


@pytest.fixture
def autojump_clock():
    """trio's MockClock with autojump, except while SQLite work is running in a thread.

    Autojump treats "all tasks blocked" as idle, also when they wait for a real thread; the
    clock would then leap to the next deadline in the middle of a 100 µs write. This clock
    polls again instead until the thread answers, so mock time passes only when nothing is
    really happening. (MockClock is final, so the hook is replaced on the instance.)
    """
    clock = MockClock(autojump_threshold=0)
    jump = clock._autojump

    def jump_unless_store_busy() -> None:
        if inflight.jobs_in_flight() == 0:
            jump()

    clock._autojump = jump_unless_store_busy
    return clock


@pytest.fixture
def merged(monkeypatch) -> list[int]:
    """How many appends each merged call of the writer took, in order."""
    sizes: list[int] = []
    merge = q.append_event_batch

    def counted(conn, appends):
        sizes.append(len(appends))
        return merge(conn, appends)

    monkeypatch.setattr(q, "append_event_batch", counted)
    return sizes


# File system events Python audits (sys.addaudithook), and the calls it does not audit.
_FS_EVENTS = frozenset(
    {
        "open",
        "os.rename",
        "os.scandir",
        "os.listdir",
        "os.mkdir",
        "os.remove",
        "os.rmdir",
        "os.chmod",
        "shutil.rmtree",
    }
)
_UNAUDITED = ("stat", "lstat", "statvfs")
_loop_fs: dict[str, object] = {"thread": None, "seen": [], "stats": True}


def _audit(event: str, args: tuple) -> None:
    if _loop_fs["thread"] == threading.get_ident() and event in _FS_EVENTS:
        if event == "open" and (
            not isinstance(args[0], (str, bytes, os.PathLike)) or os.fsdecode(args[0]).startswith("/proc/")
        ):
            return  # os.fdopen and the like (no path), /proc (in memory): nothing to wait for
        _loop_fs["seen"].append(event)


@pytest.fixture
def file_system_on_loop(monkeypatch):
    """What file system calls the calling (Trio) thread makes while ``watching()``."""
    if not _loop_fs.get("hooked"):
        sys.addaudithook(_audit)  # hooks cannot be removed: this one is idle outside the test
        _loop_fs["hooked"] = True
    for name in _UNAUDITED:
        real = getattr(os, name)

        def call(*args, _real=real, _name=name, **kwargs):
            if _loop_fs["thread"] == threading.get_ident() and _loop_fs["stats"]:
                _loop_fs["seen"].append(f"os.{_name}")
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, name, call)

    @contextlib.contextmanager
    def watching(stats: bool = True):
        """``stats=False``: only what changes the file system or reads a file, not stats."""
        _loop_fs.update(thread=threading.get_ident(), seen=[], stats=stats)
        try:
            yield _loop_fs["seen"]
        finally:
            _loop_fs["thread"] = None

    return watching
