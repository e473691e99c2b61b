"""What the API accepts: JSON with finite numbers only, and text a commit can carry.

Python's ``json`` reads ``NaN``, ``Infinity`` and ``-Infinity``, which are not JSON (RFC 8259
§6), and reads a number too large for a float (``1e999``) as infinity. A budget of NaN would
never run out (every comparison with NaN is false), and neither value can be written back as
JSON. ``loads`` here parses every request body (``errors.register_error_handlers`` makes
``StrictJSONProvider`` the app's JSON provider) and refuses both with ``NonFiniteNumber``: a
400 before any route runs.

``Text`` is a string without control characters other than tab, newline and carriage return,
and without lone surrogates (``"\\ud800"`` is valid JSON but not Unicode): prompts and messages
end up in commit messages, where git refuses NUL and no encoder takes a lone surrogate, so they
are refused with 422 when the task is created, not when it is delivered.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from pydantic import AfterValidator
from quart.json.provider import DefaultJSONProvider

from ..usecases.inputs import check_text  # the rule is the use cases' (one for every front-end)

__all__ = ["NonFiniteNumber", "StrictJSONProvider", "Text", "check_text", "loads"]


class NonFiniteNumber(ValueError):
    """A JSON body with NaN, an infinity or a number beyond a float's range."""


def _constant(name: str) -> float:
    raise NonFiniteNumber(f"{name} is not a JSON number: numbers must be finite")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumber(f"the number {text[:40]} is too large: numbers must be finite")
    return value


_DECODER = json.JSONDecoder(parse_constant=_constant, parse_float=_float)


def loads(data: str | bytes, **_: Any) -> Any:
    """Parse a JSON document; ``ValueError`` (``NonFiniteNumber`` for a non-finite number)."""
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("utf-8")
    return _DECODER.decode(data)


class StrictJSONProvider(DefaultJSONProvider):
    """The app's JSON provider (``app.json``), which Quart parses every request body with."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s)


Text = Annotated[str, AfterValidator(check_text)]
