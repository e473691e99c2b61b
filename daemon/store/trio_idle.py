"""When the Trio thread goes to sleep: what the SQLite writer asks before it waits for more jobs.

Every write comes from the Trio thread; once it sleeps with no timer due soon, nothing more is
coming and a lingering writer should commit at once (see ``WriterThread._take``).
"""

from __future__ import annotations

import threading
from typing import Any

import trio


class TrioIdle(trio.abc.Instrument):
    """Tells the writer when the Trio thread goes to sleep with no timer due within ``linger_s``.

    ``sleeping`` is true from then until it wakes up; ``woken`` is set then if the writer is
    lingering (it sets ``lingering`` before it looks at ``sleeping``, so one of the two sees
    the other). Trio calls these once per turn of its loop while ``watching`` (the writer
    lingers only then).
    """

    def __init__(self, writer: Any) -> None:  # a WriterThread: its ``linger_s``
        self._writer = writer
        self.watching = False
        self.sleeping = False
        self.lingering = False
        self.woken = threading.Event()

    def watch(self, on: bool) -> None:
        """Start or stop watching (on the Trio thread)."""
        if on == self.watching:
            return
        if on:
            trio.lowlevel.add_instrument(self)
        else:
            try:
                trio.lowlevel.remove_instrument(self)
            except KeyError:  # trio drops an instrument that raised
                pass
            self.sleeping = False
            self.woken.set()  # a lingering writer would wait for nothing
        self.watching = on

    def before_io_wait(self, timeout: float) -> None:
        if timeout > self._writer.linger_s:
            self.sleeping = True
            if self.lingering:
                self.woken.set()

    def after_io_wait(self, timeout: float) -> None:
        self.sleeping = False
