"""The periodic young collection: it collects what the automatic collector has not reached yet,
on the clock, stops when cancelled, and stays away while the collector is disabled."""

from __future__ import annotations

import gc
import weakref

import pytest
import trio

from daemon.gc_tuning import collect_young_periodically


class Cycle:
    """Garbage only a collection frees (it refers to itself)."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def no_automatic_young_collections():
    """Young collections only when asked for (the threshold out of reach), restored after."""
    saved = gc.get_threshold()
    gc.collect(0)
    gc.set_threshold(1_000_000_000, *saved[1:])
    yield
    gc.set_threshold(*saved)


def garbage() -> weakref.ref:
    return weakref.ref(Cycle())


async def test_young_garbage_is_collected_within_an_interval(autojump_clock, no_automatic_young_collections):
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect_young_periodically, 0.1)
        await trio.sleep(0.01)
        ref = garbage()
        await trio.sleep(0.05)
        assert ref() is not None  # not before the interval is up
        await trio.sleep(0.06)
        assert ref() is None
        again = garbage()
        await trio.sleep(0.1)
        assert again() is None  # and every interval after
        nursery.cancel_scope.cancel()
    later = garbage()
    await trio.sleep(1)
    assert later() is not None  # cancelled: no more collections


async def test_nothing_is_collected_while_the_collector_is_disabled(autojump_clock, no_automatic_young_collections):
    gc.disable()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect_young_periodically, 0.1)
            ref = garbage()
            await trio.sleep(1)
            assert ref() is not None
            nursery.cancel_scope.cancel()
    finally:
        gc.enable()
    gc.collect(0)
    assert ref() is None
