"""The event loop and its SQLite writer share one CPU; checkpoints, readers and children do not."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest
import trio

from daemon import cpu_pin
from daemon.config import load_settings
from daemon.cpu_pin import loop_on_one_cpu, release
from daemon.service import Daemon
from daemon.store import SqliteStore, sqlite as sqlite_module
from daemon.supervisor import NoopRunner

from .daemon_process import short_socket_dir

WIDE = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()
pytestmark = pytest.mark.skipif(len(WIDE) < 2, reason="needs Linux and at least two CPUs")


def cpus_of_thread(name: str) -> set[int]:
    (thread,) = [t for t in threading.enumerate() if t.name == name]
    return os.sched_getaffinity(thread.native_id)


def test_the_calling_thread_and_the_threads_it_starts_share_one_cpu_until_the_end():
    with loop_on_one_cpu() as cpu:
        assert cpu == max(WIDE) and cpu_pin.pinned_cpu() == cpu
        assert os.sched_getaffinity(0) == {cpu}
        seen: dict[str, set[int]] = {}

        def started_here() -> None:
            seen["inherited"] = os.sched_getaffinity(0)
            release()
            seen["released"] = os.sched_getaffinity(0)

        thread = threading.Thread(target=started_here)
        thread.start()
        thread.join()
        assert seen == {"inherited": {cpu}, "released": WIDE}
        with loop_on_one_cpu() as again:  # a second daemon on the same thread shares the pin
            assert again == cpu
        assert os.sched_getaffinity(0) == {cpu}
        elsewhere: list[int | None] = []

        def another_thread() -> None:
            release()
            with loop_on_one_cpu() as other:  # not pinned while the loop's thread is
                elsewhere.extend([other, *sorted(os.sched_getaffinity(0))])

        thread = threading.Thread(target=another_thread)
        thread.start()
        thread.join()
        assert elsewhere == [None, *sorted(WIDE)]
    assert os.sched_getaffinity(0) == WIDE
    assert cpu_pin.pinned_cpu() is None


def test_disabled_it_pins_nothing_and_release_does_nothing():
    with loop_on_one_cpu(False) as cpu:
        assert cpu is None
        assert os.sched_getaffinity(0) == WIDE
        release()
    assert os.sched_getaffinity(0) == WIDE


def test_a_started_process_gets_every_cpu_back_and_a_gone_one_is_no_error():
    with loop_on_one_cpu() as cpu:
        child = subprocess.Popen(["sleep", "30"])
        try:
            assert os.sched_getaffinity(child.pid) == {cpu}
            release(child.pid)
            assert os.sched_getaffinity(child.pid) == WIDE
        finally:
            child.kill()
            child.wait()
        release(child.pid)  # reaped: nothing to do


async def test_the_writer_stays_on_the_loops_cpu_the_checkpointer_readers_and_backup_do_not(
    tmp_path, monkeypatch
):
    with loop_on_one_cpu() as cpu:
        store = await SqliteStore.open(tmp_path)
        try:
            assert cpus_of_thread("agentd-sqlite-writer") == {cpu}
            assert cpus_of_thread("agentd-sqlite-checkpoint") == WIDE
            assert await store._readers.run(lambda conn: os.sched_getaffinity(0)) == WIDE
            copies: list[set[int]] = []
            real_release = cpu_pin.release

            def seen_release(pid: int = 0) -> None:  # the backup's copy, on its worker thread
                real_release(pid)
                copies.append(os.sched_getaffinity(0))

            monkeypatch.setattr(sqlite_module, "release_cpu", seen_release)
            await store.backup(tmp_path / "copy.db")
            assert copies == [WIDE]
        finally:
            await store.aclose()


@pytest.mark.parametrize("pin", [True, False])
async def test_the_daemon_pins_while_serving_as_its_setting_says(tmp_path, pin):
    settings = load_settings(
        env={"AGENTD_PIN_LOOP_CPU": str(pin).lower()},
        flags={
            "data_dir": tmp_path / "data",
            "http": "127.0.0.1:0",
            "control_socket": short_socket_dir() / "agentd.sock",
        },
    )
    daemon = Daemon(settings, runner=NoopRunner())
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve)
        expected = {max(WIDE)} if pin else WIDE
        assert os.sched_getaffinity(0) == expected
        assert cpus_of_thread("agentd-sqlite-writer") == expected
        daemon.request_stop()
    assert os.sched_getaffinity(0) == WIDE


def test_a_refused_pin_leaves_the_daemon_unpinned_and_says_so(monkeypatch, caplog):
    def refuse(pid, cpus):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    with loop_on_one_cpu() as cpu:
        assert cpu is None and cpu_pin.pinned_cpu() is None
        release()  # nothing pinned: nothing to do
    assert "not pinned" in caplog.text


async def test_on_postgresql_the_daemon_pins_nothing(tmp_path, request):
    dsn = request.getfixturevalue("pg_dsn")  # skips, with the reason, without a server
    settings = load_settings(
        env={},
        flags={
            "data_dir": tmp_path / "data",
            "http": "127.0.0.1:0",
            "store": dsn,
            "control_socket": short_socket_dir() / "agentd.sock",
        },
    )
    daemon = Daemon(settings, runner=NoopRunner())
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve)
        assert os.sched_getaffinity(0) == WIDE  # no writer thread to share a CPU with
        daemon.request_stop()
