"""What the three fuzzers share: sizes, the Trio bridge, JSON and OpenAPI strategies, tallies.

Sizes. In CI (the default) every property runs a modest, derandomized number of examples, so a
run is a few seconds and the same every time. ``bench/fuzz_full.py`` sets ``AGENTD_FUZZ_SCALE``
(examples = CI examples x scale) and ``AGENTD_FUZZ_SEED`` (random search from that seed instead
of the fixed one), and ``AGENTD_FUZZ_STATS`` (a JSON file the tallies are written to at exit).

The Trio bridge. Hypothesis drives plain functions, while the daemon lives in the test's Trio
run. ``drive`` runs the ``@given`` function in a worker thread and each example calls back into
the Trio loop with ``trio.from_thread.run``: the daemon, its store and the clients stay in one
loop for the whole test, and every example is bounded by ``EXAMPLE_TIMEOUT`` (a hang fails).
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypothesis import HealthCheck, Phase, settings, strategies as st

EXAMPLE_TIMEOUT = 20.0  # seconds for one example: a guard against hangs, never a wait

SCALE = float(os.environ.get("AGENTD_FUZZ_SCALE", "1"))
SEED = os.environ.get("AGENTD_FUZZ_SEED")
FULL = SCALE != 1 or SEED is not None
# Off in CI: tasks stay queued, so no attempt races a fuzzed cancel or follow-up. On, the
# supervisor runs tasks (NoopRunner) while the fuzzer pokes them: see bench/fuzz_full.py.
LIVE_SUPERVISOR = os.environ.get("AGENTD_FUZZ_LIVE_SUPERVISOR") == "1"


def fuzz_settings(examples: int, **overrides: Any) -> settings:
    """Hypothesis settings for a fuzzer whose CI size is ``examples``."""
    fields: dict[str, Any] = {
        "max_examples": max(1, int(examples * SCALE)),
        "deadline": None,
        "derandomize": not FULL,
        "database": None,
        "print_blob": True,
        "suppress_health_check": list(HealthCheck),
        # Shrinking a failure against a live daemon is slow but worth it: keep it, skip explain.
        "phases": (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink),
    }
    fields.update(overrides)
    return settings(**fields)


def seeded(test: Callable[..., Any]) -> Callable[..., Any]:
    """Apply ``AGENTD_FUZZ_SEED`` to a ``@given`` function (a full run's random search)."""
    if SEED is None:
        return test
    from hypothesis import seed

    return seed(int(SEED))(test)


async def drive(test: Callable[[], None]) -> None:
    """Run a ``@given`` function in a worker thread; its examples call ``on_loop``."""
    await trio.to_thread.run_sync(test)


def on_loop(afn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """From the Hypothesis thread: run ``afn(*args)`` in the test's Trio loop, with a deadline."""

    async def bounded() -> Any:
        with trio.fail_after(EXAMPLE_TIMEOUT):
            return await afn(*args)

    try:
        return trio.from_thread.run(bounded)
    except trio.Cancelled as exc:  # never let it reach the test's own loop, where it vanishes
        raise AssertionError(f"the example was cancelled from inside: {exc}") from exc


# ---------------------------------------------------------------------------------- tallies

TALLY: collections.Counter[str] = collections.Counter()


def tally(*parts: Any) -> None:
    """Count an outcome, e.g. ``tally("http", "GET /api/tasks", 422)``; reported by fuzz_full."""
    TALLY[" ".join(str(p) for p in parts)] += 1


@atexit.register
def _write_tallies() -> None:
    path = os.environ.get("AGENTD_FUZZ_STATS")
    if path and TALLY:
        with open(path, "w") as f:
            json.dump(dict(sorted(TALLY.items())), f, indent=1)


# ------------------------------------------------------------------------------ strategies

# Strings that break naive code: unicode of every category, NUL, RTL marks, lone surrogates
# (only where the transport allows them), numbers spelled as text, SQL and path look-alikes.
ODD_STRINGS = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\n",
        "null",
        "true",
        "0",
        "-1",
        "1e309",
        "NaN",
        "Infinity",
        "0x10",
        "9" * 40,
        "-" + "9" * 40,
        "1.5",
        "../../etc/passwd",
        "%00",
        "%2F",
        "' OR 1=1 --",
        "\u202e",
        "\ufeff",
        "🦀" * 50,
        "\uff41\uff42\uff43",
        "ß",
        "\u0130",
        "a" * 70,
        "a" * 5000,
    ]
)
TEXT = st.one_of(st.text(max_size=40), ODD_STRINGS)
HUGE_INTS = st.sampled_from([2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63) - 1])
INTS = st.one_of(st.integers(-5, 2000), st.integers(), HUGE_INTS)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT)


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON value (big ints included), nested a few levels."""
    return st.recursive(
        SCALARS,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
        max_leaves=max_leaves,
    )


def deep_nesting() -> st.SearchStrategy[str]:
    """JSON text nested deeper than any parser's recursion limit likes, closed or not."""
    return st.builds(
        lambda opener, depth, closed: opener * depth + ("0" + _closer(opener) * depth if closed else ""),
        st.sampled_from(["[", '{"a":']),
        st.sampled_from([50, 1000, 5000, 100_000]),
        st.booleans(),
    )


def _closer(opener: str) -> str:
    return "]" if opener == "[" else "}"


def dumps(value: Any) -> str:
    return json.dumps(value)


# ----------------------------------------------------------------- from an OpenAPI schema


def from_schema(schema: dict[str, Any], components: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid for a JSON-schema subset (what pydantic emits for agentd's models).

    Covers ``$ref``, ``anyOf``, ``enum``, ``type`` string / integer / number / boolean / null /
    object / array with their usual bounds. Strings get ``pattern`` and lengths; big limits are
    sampled at their edges rather than filled.
    """
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return from_schema(components[name], components)
    if "anyOf" in schema:
        return st.one_of([from_schema(s, components) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "string":
        return _strings(schema)
    if kind == "integer":
        low = schema.get(
            "minimum", schema.get("exclusiveMinimum", -(2**63)) + (1 if "exclusiveMinimum" in schema else 0)
        )
        return st.integers(low, schema.get("maximum", 2**63 - 1))
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        return st.floats(
            min_value=low,
            max_value=schema.get("maximum"),
            allow_nan=False,
            allow_infinity=False,
            exclude_min="exclusiveMinimum" in schema,
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), components), max_size=3)
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fields = {k: from_schema(v, components) for k, v in props.items()}
        return st.fixed_dictionaries(
            {k: v for k, v in fields.items() if k in required},
            optional={k: v for k, v in fields.items() if k not in required},
        )
    return json_values()


def _strings(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    if "pattern" in schema:
        return st.from_regex(re.compile(schema["pattern"]), fullmatch=True)
    plain = st.text(min_size=low, max_size=min(high or 60, 60))
    if high is None or high <= 60:
        return plain
    return st.one_of(plain, st.sampled_from([high, high + 1]).map(lambda n: "x" * n))
