"""sd_notify: datagrams to $NOTIFY_SOCKET, the watchdog's rhythm, and the real daemon's messages."""

from __future__ import annotations

import os
import signal
import socket
import uuid

import pytest
import trio

from daemon.sdnotify import Notifier, watchdog

from .daemon_process import DaemonProcess, short_socket_dir


def listening_socket(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(60)  # a real socket: fail the test rather than hang if nothing comes
    return sock


def test_notify_sends_one_datagram_to_a_socket_path():
    path = short_socket_dir() / "notify"
    with listening_socket(str(path)) as server:
        notifier = Notifier(str(path))
        assert notifier.notify("READY=1\nSTATUS=serving")
        assert server.recv(4096) == b"READY=1\nSTATUS=serving"
        notifier.close()


def test_an_at_sign_means_the_abstract_namespace():
    name = f"agentd-test-{uuid.uuid4().hex}"
    with listening_socket(b"\0" + name.encode()) as server:
        notifier = Notifier("@" + name)
        assert notifier.notify("STOPPING=1")
        assert server.recv(4096) == b"STOPPING=1"
        notifier.close()


def test_outside_systemd_notify_does_nothing():
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    assert notifier.watchdog_interval_s is None


def test_a_missing_socket_is_reported_once_and_never_raises(caplog):
    notifier = Notifier(str(short_socket_dir() / "nobody-listens"))
    assert notifier.notify("WATCHDOG=1") is False
    assert notifier.notify("WATCHDOG=1") is False
    assert len([r for r in caplog.records if "sd_notify" in r.getMessage()]) == 1


def test_from_environ_reads_the_watchdog_and_unsets_the_variables():
    env = {
        "NOTIFY_SOCKET": "/run/notify",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": str(os.getpid()),
        "OTHER": "kept",
    }
    notifier = Notifier.from_environ(env)
    assert notifier.address == "/run/notify"
    assert notifier.watchdog_interval_s == 15.0  # half of WatchdogSec, as sd_watchdog_enabled says
    assert env == {"OTHER": "kept"}  # git and the agent's shell must not inherit them


def test_a_watchdog_meant_for_another_process_is_ignored():
    env = {"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
    assert Notifier.from_environ(env).watchdog_interval_s is None
    env = {"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "nonsense"}
    assert Notifier.from_environ(env).watchdog_interval_s is None


class Recording(Notifier):
    def __init__(self) -> None:
        super().__init__("@unused")
        self.sent: list[tuple[float, str]] = []

    def notify(self, state: str) -> bool:
        self.sent.append((trio.current_time(), state))
        return True


async def test_the_watchdog_pings_every_interval_until_cancelled(autojump_clock):
    notifier = Recording()
    with trio.move_on_after(32):
        await watchdog(notifier, 15.0)
    assert notifier.sent == [(0.0, "WATCHDOG=1"), (15.0, "WATCHDOG=1"), (30.0, "WATCHDOG=1")]


@pytest.mark.slow
def test_the_real_daemon_sends_ready_watchdog_and_stopping(tmp_path):
    path = short_socket_dir() / "notify"
    with listening_socket(str(path)) as server:
        env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"}  # ping every 0.1 s
        with DaemonProcess(tmp_path / "data", extra_env=env) as daemon:
            received: list[str] = []

            def until(prefix: str) -> str:
                while True:
                    message = server.recv(4096).decode()
                    received.append(message)
                    if message.startswith(prefix):
                        return message

            ready = until("READY=1")
            assert f"STATUS=serving on {daemon.url}" in ready.splitlines()
            until("WATCHDOG=1")  # pinging after READY too, from the running loop
            daemon.proc.send_signal(signal.SIGTERM)
            assert until("STOPPING=1").startswith("STOPPING=1\nSTATUS=draining")
            assert daemon.proc.wait(60) == 0
        assert "WATCHDOG=1" in received
