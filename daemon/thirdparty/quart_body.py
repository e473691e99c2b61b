"""Whether a Quart request's body arrived whole, without waiting for it.

Touches, of Quart 0.22.0 and quart-trio 0.12.0 (both pinned in ``pyproject.toml``), two
attributes of ``quart.wrappers.request.Body`` (``TrioBody`` under quart-trio):

- ``_complete``: an event set once the last chunk of the body arrived (quart-trio's is a
  wrapper around a ``trio.Event`` with ``is_set()``);
- ``_must_raise``: the error reading the body will raise (413 for a body over the limit),
  ``None`` while there is none.

Why no public API: ``Body`` offers only reading (``await body``, ``async for``), which waits
for what has not arrived; the after-request hook in ``daemon/web/errors.py`` must answer at
once whether the connection can carry another request. ``tests/test_thirdparty_contracts.py``
checks both attributes on a real request: the gate for upgrading Quart or quart-trio.
"""

from __future__ import annotations

from quart.wrappers import Body

__all__ = ["received_whole"]


def received_whole(body: Body) -> bool:
    """Whether all of ``body`` arrived and reading it raises nothing (False if unsure)."""
    complete = getattr(body, "_complete", None)
    return complete is not None and complete.is_set() and getattr(body, "_must_raise", None) is None
