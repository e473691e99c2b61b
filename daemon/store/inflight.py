"""How many store jobs are running in worker threads right now, for every backend.

Only tests read it: their mock clock must not jump ahead while real work is under way in a
thread (see tests/conftest.py). Updated on the Trio thread only, so a plain int is enough.
"""

from __future__ import annotations

_in_flight = 0


def jobs_in_flight() -> int:
    return _in_flight


def track(delta: int) -> None:
    global _in_flight
    _in_flight += delta
