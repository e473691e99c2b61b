"""A tiny sd_notify client: tell systemd we are ready, stopping, and alive.

The protocol is one datagram per message to the AF_UNIX socket named by ``$NOTIFY_SOCKET``
(a leading ``@`` means Linux's abstract namespace), payload ``KEY=VALUE`` lines. No library is
needed, and no message is worth blocking or failing the daemon for: sends are non-blocking and
errors are logged once and otherwise ignored. Outside systemd (no ``$NOTIFY_SOCKET``) every call
is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping

import trio

log = logging.getLogger(__name__)

_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Sends sd_notify messages to one address, or nowhere when ``address`` is None."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True) -> Notifier:
        """Read ``$NOTIFY_SOCKET`` and the watchdog settings, then (by default) unset them.

        Unsetting keeps them from leaking into git and the agent's shell: systemd would ignore
        their messages anyway (NotifyAccess=main), but a child pinging the watchdog for us
        would hide a hung daemon.
        """
        environ = os.environ if environ is None else environ
        notifier = cls(environ.get("NOTIFY_SOCKET") or None, watchdog_usec=_watchdog_usec(environ))
        if unset:
            for key in _ENV_KEYS:
                environ.pop(key, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1: half the timeout, as sd_watchdog_enabled(3) advises."""
        if self.watchdog_usec is None or not self.enabled:
            return None
        return self.watchdog_usec / 1e6 / 2

    def notify(self, state: str) -> bool:
        """Send ``state`` (e.g. ``"READY=1\\nSTATUS=serving"``); True if it was sent.

        Never blocks: the socket is non-blocking, and a full receive queue drops the message.
        """
        if self.address is None:
            return False
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(state.encode(), _sockaddr(self.address))
            return True
        except OSError as exc:
            if not self._warned:  # a broken socket stays broken: say it once, not every ping
                log.warning("sd_notify to %s failed: %s", self.address, exc)
                self._warned = True
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def watchdog(notifier: Notifier, interval_s: float) -> None:
    """Send WATCHDOG=1 every ``interval_s`` seconds, from the Trio loop itself.

    Running on the loop is the point: if the loop hangs, the pings stop and systemd restarts us.
    Cancellation: stops pinging; nothing to undo (systemd stops expecting pings at STOPPING=1
    or when the process exits).
    """
    while True:
        notifier.notify("WATCHDOG=1")
        await trio.sleep(interval_s)


def _sockaddr(address: str) -> str | bytes:
    if address.startswith("@"):
        return b"\0" + address[1:].encode()  # abstract namespace: a leading NUL byte
    return address


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    """``$WATCHDOG_USEC`` when it is meant for this process (``$WATCHDOG_PID`` unset or ours)."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # inherited from a parent that systemd watches, not us
    return usec if usec > 0 else None
