"""The anthropic SDK's internals that ``AnthropicProvider`` needs, of anthropic 2.17.0.

That version is pinned in ``pyproject.toml``; ``tests/test_thirdparty_contracts.py`` checks each
name below and is the gate for upgrading the SDK. Touched:

- ``anthropic._constants.RAW_RESPONSE_HEADER`` (``X-Stainless-Raw-Response``) set to
  ``"stream"`` in a request's options: the SDK then hands back its ``AsyncAPIResponse`` with the
  body unread, as ``with_streaming_response`` does (used by ``post_unread``). Why: that exists
  only per resource method (``messages.create`` walks and copies the whole conversation each
  turn), and the generic ``client.post`` has no public switch for it; ``cast_to=httpx2.Response``
  would hand back the raw response, but the SDK's middleware chain (``_LongWaitsToCaller``)
  expects an ``AsyncAPIResponse`` and would pass a raw error response on as a success.
- ``anthropic._base_client.get_platform()`` and the client attribute ``_platform``: the platform
  the SDK sends in ``X-Stainless-OS``, looked up at a client's first request in a worker thread
  (``asyncify``) unless already set. Why: that thread comes from Trio's default limiter, which
  the daemon's file work shares, while the request being built holds a reply-gate slot; no
  public option sets the platform or skips the lookup.
- The package layout, for ``import_lean``: ``anthropic/__init__.py`` and every package under
  ``anthropic.types`` re-export their submodules' names (``from .message import Message as
  Message``), so the first ``import anthropic`` imports every type of the whole API (about
  3,300 modules, each a pydantic model or two). ``import_lean`` has those packages resolve a
  name when it is first asked for instead; a name they do not re-export that way (the star
  imports of ``anthropic/__init__.py``: Bedrock, Vertex...) makes the package run its real
  ``__init__`` then. The top package's other statements are not run:
  ``anthropic._utils._logs.setup_logging()`` (its ``_setup_logging()``) is called here instead
  (``ANTHROPIC_LOG``), and its exported classes keep their defining module's ``__module__`` (the
  real one renames them ``anthropic.X``). Why: the SDK has no lazy mode, and its client and a
  call use about a third of those modules. The layout is checked by
  ``tests/test_provider_background.py`` (with a whole call through the lean SDK).

This module imports the SDK only when called, so ``import_lean`` can come first.
"""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import httpx2

if TYPE_CHECKING:
    import anthropic

__all__ = ["LEAN_PACKAGES", "import_lean", "post_unread", "preset_platform", "reexports"]

# The packages whose names resolve when first used: the top one and the types tree beneath.
LEAN_PACKAGES = ("anthropic", "anthropic.types")


async def post_unread(client: anthropic.AsyncAnthropic, path: str, content: bytes) -> httpx2.Response:
    """POST ``content`` (JSON, already encoded) to ``path`` for a streamed Messages API reply,
    through the SDK (auth, headers, timeouts, retries, middleware), and return the 2xx HTTP
    response with its body unread: the caller reads it and closes it.

    Raises what the SDK raises (``APIStatusError`` for a non-2xx answer, ``APIConnectionError``).
    Cancellation: as the SDK's request; once this returns, the caller's close drops the
    connection mid-body.
    """
    import anthropic
    from anthropic._constants import RAW_RESPONSE_HEADER

    response = await client.post(
        path,
        content=content,
        options={"headers": {RAW_RESPONSE_HEADER: "stream"}},
        cast_to=anthropic.types.Message,
        stream=True,
        stream_cls=anthropic.AsyncStream[anthropic.types.RawMessageStreamEvent],
    )
    # With that header the SDK returns its AsyncAPIResponse, whatever its overloads say.
    return cast(anthropic.AsyncAPIResponse[Any], response).http_response


def preset_platform(clients: Iterable[anthropic.AsyncAnthropic]) -> None:
    """Look the platform up now, on this thread, and give it to each client: their first
    requests start no worker thread for it. Blocks for as long as ``platform.system()`` takes."""
    from anthropic._base_client import get_platform

    found = get_platform()
    for client in clients:
        client._platform = found


_installing = threading.Lock()


def import_lean() -> bool:
    """Import the SDK so that its packages load a submodule only when one of its names is used
    (see the module's docstring); returns whether it did.

    Does nothing, and returns False, when the SDK was imported already (whole, or lean): that
    import stays as it is. Blocks for the import (the client and what it uses: about a quarter
    of the whole SDK). Thread-safe.
    """
    with _installing:
        if "anthropic" in sys.modules:
            return False
        sys.meta_path.insert(0, _LeanFinder())
    import anthropic
    from anthropic._utils._logs import setup_logging

    setup_logging()  # what the package's own __init__ does at the end
    return isinstance(anthropic.__spec__.loader, _LeanLoader) if anthropic.__spec__ else False


class _LeanFinder(importlib.abc.MetaPathFinder):
    """Finds ``LEAN_PACKAGES`` (and the packages beneath ``anthropic.types``) as the path
    finder does, and gives them a ``_LeanLoader``; everything else is left to the others."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in LEAN_PACKAGES and not fullname.startswith("anthropic.types."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or spec.origin is None or not spec.submodule_search_locations:
            return None  # a plain module: nothing to defer
        spec.loader = _LeanLoader(spec.loader, Path(spec.origin))
        return spec


class _LeanLoader(importlib.abc.Loader):
    """Runs nothing of a package's ``__init__`` at import: gives the module a ``__getattr__``
    that imports the submodule a name comes from when the name is first asked for (PEP 562)."""

    def __init__(self, real: importlib.abc.Loader, init: Path) -> None:
        self._real = real
        self._init = init

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        module.__dict__["__getattr__"] = _Resolver(module, self._real, reexports(self._init.read_text()))


class _Resolver:
    """A lean package's ``__getattr__``: a re-exported name, a submodule, or, for any other
    name, the package's real ``__init__`` run once (after which the name is there, or not)."""

    def __init__(
        self, module: ModuleType, real: importlib.abc.Loader, names: dict[str, tuple[str, str | None]]
    ) -> None:
        self._module = module
        self._real = real
        self._names = names
        self._whole = False
        self._lock = threading.RLock()

    def __call__(self, name: str) -> Any:
        module = self._module
        found = self._names.get(name)
        if found is not None:
            submodule, attribute = found
            source = importlib.import_module(f"{module.__name__}.{submodule}")
            value = source if attribute is None else getattr(source, attribute)
        elif name.startswith("__"):  # probes such as __all__, __wrapped__: never a reason to load
            raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")
        elif importlib.machinery.PathFinder.find_spec(f"{module.__name__}.{name}", module.__path__):
            value = importlib.import_module(f"{module.__name__}.{name}")  # ``from . import _x``
        else:
            with self._lock:
                if not self._whole:
                    self._whole = True
                    self._real.exec_module(module)
            if name not in module.__dict__:
                raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")
            return module.__dict__[name]
        setattr(module, name, value)  # the next lookup does not come here
        return value


def reexports(init_source: str) -> dict[str, tuple[str, str | None]]:
    """What a package's ``__init__`` imports from its own submodules, by the name it binds:
    ``from .a import B as C`` -> ``{"C": ("a", "B")}``, ``from . import d`` -> ``{"d": ("d",
    None)}``; statements under an ``if`` count too. Star imports and every other statement are
    left out (``_Resolver`` runs the real ``__init__`` for a name not found here)."""
    names: dict[str, tuple[str, str | None]] = {}
    pending = list(ast.parse(init_source).body)
    while pending:
        node = pending.pop(0)
        if isinstance(node, ast.If):
            pending[:0] = [*node.body, *node.orelse]
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            for alias in node.names:
                if alias.name == "*":
                    continue
                bound = alias.asname or alias.name
                if node.module is None:
                    names[bound] = (alias.name, None)
                else:
                    names[bound] = (node.module, alias.name)
    return names
