"""The import rules of docs/architecture.md, checked on the source with ``ast``.

- No import circle among alertmail's modules: at module level, through imports deferred
  into functions, nor even through imports for type checkers only (``if TYPE_CHECKING``).
- ``alertmail.model``, the values every stage shares, imports no other alertmail module.
- Nothing in the core imports the bundled plugins (``alertmail.plugins``), not even lazily.
- Bundled plugins import only the public API (``alertmail``) and their own package,
  exactly as a third-party plugin would: tests/test_plugin_imports.py, which also reads
  ``importlib`` calls and attribute access.
- Each stage imports only the stages its row of ``ALLOWED`` names: the flow of the
  pipeline, written down once.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORE = REPO / "alertmail"
PLUGINS = REPO / "plugins"

# Modules every stage may use: values, units, errors, files, the config vocabulary.
BASE = {
    "alertmail",
    "alertmail.errors",
    "alertmail.units",
    "alertmail.exitcodes",
    "alertmail.fsutil",
    "alertmail.clock",
    "alertmail.model",
    "alertmail.protocols",
    "alertmail.hookspecs",
    "alertmail.config.schema",
}
# Stage -> the stages it may import (at any depth, lazy imports included). Upstream stages
# know nothing of those after them; config.load, the agent, replay and the CLI compose them.
ALLOWED: dict[str, set[str]] = {
    "probes": {"config.core"},
    "rules": set(),
    "render": {"rules"},
    "queue": set(),
    "delivery": {"queue"},
    "notify": {"rules", "render", "queue", "config.core"},
    "exporter": set(),
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module
    line: int
    module_level: bool  # runs when the importing module is imported
    runs: bool = True  # False under ``if TYPE_CHECKING``: for type checkers only


def module_name(path: Path) -> str:
    if path.is_relative_to(PLUGINS):
        parts = ["alertmail", "plugins", *path.relative_to(PLUGINS).with_suffix("").parts]
    else:
        parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    files = [*CORE.rglob("*.py"), *PLUGINS.rglob("*.py")]
    return {module_name(path): path for path in files if "__pycache__" not in path.parts}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(nodes: list[ast.AST], module_level: bool, runs: bool) -> Iterator[tuple[ast.AST, bool, bool]]:
    """Every statement, whether it runs at import time, and whether it runs at all (not ``if TYPE_CHECKING``)."""
    for node in nodes:
        yield node, module_level, runs
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from _walk(list(node.body), False, False)
            yield from _walk(list(node.orelse), module_level, runs)
            continue
        inside = module_level and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for field in ("body", "orelse", "finalbody", "handlers"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                yield from _walk(children, inside, runs)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The alertmail modules ``name`` imports, resolved to module names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[Import] = []
    for node, module_level, runs in _walk(list(tree.body), True, True):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            # ``from pkg import sub`` imports the submodule; ``from mod import name`` the module.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in dict.fromkeys(targets):
            if target == "alertmail" or target.startswith("alertmail."):
                out.append(Import(name, target, node.lineno, module_level, runs))
    return out


@pytest.fixture(scope="module")
def graph() -> list[Import]:
    modules = all_modules()
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]


def cycles(edges: list[Import]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a module importing itself."""
    succ: dict[str, set[str]] = {}
    for e in edges:
        succ.setdefault(e.source, set()).add(e.target)
        succ.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in succ[v]:
                found.append(sorted(component))

    for v in sorted(succ):
        if v not in index:
            visit(v)
    return found


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ALLOWED else None


def test_no_import_circle_among_alertmail_modules(graph):
    found = cycles([e for e in graph if e.module_level])
    assert found == [], "import circles at module level:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_circle_even_through_imports_deferred_into_functions(graph):
    """A lazy import is still a dependency: a circle through one is a knot all the same."""
    found = cycles([e for e in graph if e.runs])
    assert found == [], "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_circle_even_counting_imports_for_type_checkers_only(graph):
    """An ``if TYPE_CHECKING`` import is a dependency for every reader and for mypy: no knot there either."""
    found = cycles(graph)
    assert found == [], "import circles, counting TYPE_CHECKING imports:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_shared_values_name_nothing_above_them(graph):
    """model.py is what every stage imports; what a service or transport is handed is a Protocol there."""
    assert [f"{e.source}:{e.line} imports {e.target}" for e in graph if e.source == "alertmail.model"] == []


def test_the_core_never_imports_the_bundled_plugins(graph):
    bad = [
        f"{e.source}:{e.line} imports {e.target}"
        for e in graph
        if not e.source.startswith("alertmail.plugins") and e.target.startswith("alertmail.plugins")
    ]
    assert bad == []


def test_each_stage_imports_only_the_stages_its_row_allows(graph):
    bad = []
    for e in graph:
        stage = stage_of(e.source)
        if stage is None or e.target in BASE or e.target.startswith(f"alertmail.{stage}"):
            continue
        target = e.target.removeprefix("alertmail.")
        if not any(target == allowed or target.startswith(allowed + ".") for allowed in ALLOWED[stage]):
            bad.append(f"{e.source}:{e.line} imports {e.target}")
    assert bad == []


def test_every_public_name_resolves():
    import alertmail

    missing = [name for name in alertmail.__all__ if not hasattr(alertmail, name)]
    assert missing == []
    from alertmail import MetricInfo, Sample, hookimpl  # the names the first plugins were written against

    assert callable(hookimpl) and Sample("m", 1.0).metric == "m" and MetricInfo("m", "count").unit == "count"


def test_the_checker_finds_a_circle_and_tells_lazy_and_typing_imports_apart(tmp_path):
    """The rules above can fail: a circle of two modules is found; each kind of import is told apart."""
    edges = [
        Import("alertmail.a", "alertmail.b", 1, True),
        Import("alertmail.b", "alertmail.a", 1, True),
        Import("alertmail.c", "alertmail.a", 1, False),
        Import("alertmail.a", "alertmail.c", 1, True),
        Import("alertmail.d", "alertmail.a", 1, True),
        Import("alertmail.a", "alertmail.d", 1, False, runs=False),
    ]
    assert cycles([e for e in edges if e.module_level]) == [["alertmail.a", "alertmail.b"]]
    assert cycles([e for e in edges if e.runs]) == [["alertmail.a", "alertmail.b", "alertmail.c"]]
    assert cycles(edges) == [["alertmail.a", "alertmail.b", "alertmail.c", "alertmail.d"]]
    plugin = tmp_path / "p.py"
    plugin.write_text(
        "from typing import TYPE_CHECKING\nfrom alertmail.queue.spool import Queue\nfrom alertmail import hookimpl\n"
        "if TYPE_CHECKING:\n    from alertmail.model import Sample\n\n"
        "def f():\n    from alertmail.plugins.relay import policy\n"
    )
    found = imports_of("alertmail.plugins.p", plugin, {"alertmail.plugins.relay.policy": plugin})
    assert [(i.target, i.module_level, i.runs) for i in found] == [
        ("alertmail.queue.spool", True, True),
        ("alertmail", True, True),
        ("alertmail.model", False, False),
        ("alertmail.plugins.relay.policy", False, True),
    ]
