"""The boundary: another library's private API is used only in ``daemon/thirdparty/``.

An AST scan of ``daemon/`` and ``control/`` (not the glue package): an import of a private
module or name of another library (``from anthropic._base_client import ...``, ``from x import
_y``) or of one of its undocumented modules (listed here), and an attribute or ``getattr`` of a
private name (``obj._name``) on another library's module, or on any object for a private name
agentd itself never defines (a heuristic: agentd's own ``_names`` are found where it defines
them). What it finds belongs in that library's glue module, with a contract test in
``tests/test_thirdparty_contracts.py`` and an exact pin in ``pyproject.toml``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GLUE = ROOT / "daemon" / "thirdparty"

# Modules of a library that are not underscore-named but are not its public API either.
HYPERCORN_PUBLIC = {"hypercorn", "hypercorn.config", "hypercorn.trio", "hypercorn.asyncio"}
INTERNAL_NAMES = {("prometheus_client.exposition", "choose_encoder")}
INTERNAL_PREFIXES = ("prometheus_client.utils",)
# Underscore names that are public by convention: namedtuple's API, documented stdlib calls.
PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields", "_make", "_field_defaults", "_exit", "_getframe"}
# agentd's own attributes set on objects that are not ``self`` (functions it marks).
OUR_MARKS = {"_control_streaming"}  # daemon/control_server.py: a handler that streams


def _source_trees() -> Iterator[tuple[Path, ast.Module]]:
    for top in ("daemon", "control"):
        for path in sorted((ROOT / top).rglob("*.py")):
            yield path, ast.parse(path.read_text(), str(path))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _third_party(module: str) -> bool:
    top = module.split(".")[0]
    # _typeshed: the standard library's type stubs (imported only for type checking)
    return top not in ("daemon", "control", "_typeshed") and top not in sys.stdlib_module_names


def _private_imports(node: ast.AST) -> list[str]:
    """What ``node`` imports of another library's private or internal API."""
    if isinstance(node, ast.Import):
        pairs = [(alias.name, None) for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        pairs = [(node.module, alias.name) for alias in node.names]
    else:
        return []
    found = []
    for module, name in pairs:
        if not _third_party(module):
            continue
        internal = (
            any(_is_private(part) for part in module.split("."))
            or (name is not None and _is_private(name))
            or (module.startswith("hypercorn") and module not in HYPERCORN_PUBLIC)
            or (module, name) in INTERNAL_NAMES
            or module.startswith(INTERNAL_PREFIXES)
        )
        if internal:
            found.append(f"{module}.{name}" if name else module)
    return found


def _names_agentd_defines(trees: list[ast.Module]) -> set[str]:
    """Functions, classes, class attributes and ``self.``/``cls.`` attributes of agentd's own."""
    names = set(OUR_MARKS)
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            if isinstance(node, ast.ClassDef):
                for statement in node.body:
                    targets = (
                        statement.targets
                        if isinstance(statement, ast.Assign)
                        else [statement.target]
                        if isinstance(statement, ast.AnnAssign)
                        else []
                    )
                    names.update(t.id for t in targets if isinstance(t, ast.Name))
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("self", "cls")
            ):
                names.add(node.attr)
    return names


def _imported_modules(tree: ast.Module) -> dict[str, str]:
    """The module each imported name of a file stands for (``os`` -> ``os``, ``np`` -> ``numpy``,
    ``from a import b`` -> ``a.b``)."""
    modules = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update({alias.asname or alias.name.split(".")[0]: alias.name for alias in node.names})
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.update(
                {alias.asname or alias.name: f"{node.module}.{alias.name}" for alias in node.names}
            )
    return modules


def _private_attributes(node: ast.AST, ours: set[str], modules: dict[str, str]) -> list[str]:
    """``obj._name`` or ``getattr(obj, "_name")`` on another library's module or class, or on
    any object but ``self``/``cls`` for a private name agentd itself never defines."""
    if isinstance(node, ast.Attribute):
        owner, name = node.value, node.attr
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    ):
        owner, name = node.args[0], node.args[1].value
    else:
        return []
    if not _is_private(name) or name in PUBLIC_UNDERSCORE:
        return []
    if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
        return []
    module = modules.get(owner.id) if isinstance(owner, ast.Name) else None
    if module is not None and not _third_party(module):
        return []  # the standard library's, or agentd's own
    if module is not None or name not in ours:
        return [ast.unparse(node)]
    return []


def test_private_third_party_names_are_used_only_in_daemon_thirdparty():
    trees = list(_source_trees())
    ours = _names_agentd_defines([tree for _, tree in trees])
    found = []
    for path, tree in trees:
        if path.is_relative_to(GLUE):
            continue
        modules = _imported_modules(tree)
        for node in ast.walk(tree):
            for what in _private_imports(node) + _private_attributes(node, ours, modules):
                found.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}: {what}")
    assert found == [], (
        "another library's private API used outside daemon/thirdparty/ (move it into that "
        "library's glue module there, with a contract test here and an exact pin):\n" + "\n".join(found)
    )


def test_the_scan_finds_what_it_is_meant_to():
    """The scan above, on code that breaks each of its rules."""
    bad = ast.parse(
        "from anthropic._base_client import get_platform\n"
        "import httpcore2._backends.trio\n"
        "from hypercorn.trio.tcp_server import TCPServer\n"
        "from prometheus_client.utils import floatToGoString\n"
        "from prometheus_client.exposition import choose_encoder\n"
        "import anthropic\n"
        "client._platform = 'Linux'\n"
        "getattr(pool, '_requests', None)\n"
        "anthropic._exceptions\n"
    )

    def scan(tree: ast.Module, ours: set[str]) -> list[str]:
        modules = _imported_modules(tree)
        return [
            what
            for node in ast.walk(tree)
            for what in _private_imports(node) + _private_attributes(node, ours, modules)
        ]

    assert scan(bad, {"_exceptions"}) == [
        "anthropic._base_client.get_platform",
        "httpcore2._backends.trio",
        "hypercorn.trio.tcp_server.TCPServer",
        "prometheus_client.utils.floatToGoString",
        "prometheus_client.exposition.choose_encoder",
        "client._platform",
        "getattr(pool, '_requests', None)",
        "anthropic._exceptions",
    ]
    fine = ast.parse(
        "import os, trio\nfrom hypercorn.config import Config\nfrom daemon import _x\n"
        "self._y = parts._replace(path='')\nos._Environ\nstore._writer\n"
    )
    assert scan(fine, {"_writer"}) == []
