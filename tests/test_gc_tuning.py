"""The periodic collections: they collect what the automatic collector has not reached yet, on
the clock, the older generations when due, stop when cancelled, and stay away while the
collector is disabled."""

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
    """Collections only when asked for (the young threshold out of reach; the middle one due
    after 2 young collections, the old one after 3 middle ones), restored after."""
    saved = gc.get_threshold()
    gc.collect()
    gc.set_threshold(1_000_000_000, 2, 3)
    yield
    gc.set_threshold(*saved)


def garbage(age: int = 0) -> weakref.ref:
    """A dead cycle in generation ``age``: promoted by that many collections while alive."""
    cycle = Cycle()
    for generation in range(age):
        gc.collect(generation)
    return weakref.ref(cycle)


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


async def test_older_generations_are_collected_when_due(autojump_clock, no_automatic_young_collections):
    """Periodic young collections keep the automatic ones from starting, and only those collect
    the older generations: each tick collects the oldest one due, as CPython would."""
    old = garbage(age=2)  # made first: making the middle one collects generation 0 only
    middle = garbage(age=1)
    assert middle() is not None and old() is not None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect_young_periodically, 0.1)
        await trio.sleep(0.35)  # 3 ticks: the middle generation is due after 2 young ones
        assert middle() is None and old() is not None
        await trio.sleep(1.0)  # the old one after 3 middle ones, each 3 ticks apart
        assert old() is None
        nursery.cancel_scope.cancel()


async def test_nothing_is_collected_while_the_collector_is_disabled(
    autojump_clock, no_automatic_young_collections
):
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
