"""The bundled plugins use alertmail as a third-party plugin must: ``from alertmail import NAME``.

Every import in plugins/ (at the top, inside functions, under TYPE_CHECKING, or by
importlib with a literal name) may reach only ``alertmail`` itself, for a name in its
``__all__``, ``alertmail.intake`` (the surface of a service that takes mail in) for a name
in its ``__all__``, and the plugins' own ``alertmail.plugins.*``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import alertmail
import alertmail.intake

PUBLIC = {"alertmail": alertmail.__all__, "alertmail.intake": alertmail.intake.__all__}
PLUGINS = Path(__file__).resolve().parent.parent / "plugins"
FILES = sorted(PLUGINS.rglob("*.py"))


def _module_of(path: Path) -> str:
    parts = path.relative_to(PLUGINS).with_suffix("").parts
    return ".".join(("alertmail", "plugins", *(p for p in parts if p != "__init__")))


def _absolute(path: Path, node: ast.ImportFrom) -> str:
    """The module an ``import from`` names, with a relative one resolved against ``path``."""
    if not node.level:
        return node.module or ""
    package = _module_of(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str, list[str]]] = []  # (line, module, names taken from it)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, _absolute(path, node), [alias.name for alias in node.names]))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value, []))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "alertmail":
            if node.attr not in alertmail.__all__:
                found.append((node.lineno, f"alertmail.{node.attr}", []))
    problems = []
    for line, module, names in found:
        where = f"plugins/{path.relative_to(PLUGINS)}:{line}"
        if module in PUBLIC:
            problems += [f"{where}: {name} is not in {module}.__all__" for name in names if name not in PUBLIC[module]]
        elif module.split(".")[0] == "alertmail" and not module.startswith("alertmail.plugins."):
            problems.append(f"{where}: imports {module}; use `from alertmail import ...`")
    return problems


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PLUGINS)))
def test_plugin_imports_only_the_public_api_and_its_own_package(path):
    assert _problems(path) == []


def test_the_check_finds_what_it_must(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "PLUGINS", tmp_path)
    (tmp_path / "probes").mkdir()
    bad = tmp_path / "probes" / "bad.py"
    bad.write_text(
        "import importlib\nimport alertmail\nfrom alertmail import Probe, load_config\n"
        "def f():\n    from alertmail.queue.spool import Queue\n    from ... import model\n"
        "    importlib.import_module('alertmail.delivery')\n    return alertmail.loader\n"
        "from alertmail.plugins.relay.policy import RelayPolicy\nfrom . import system\n"
        "from alertmail.intake import Intake, Queue\nfrom alertmail import Outbox\n"
    )
    assert _problems(bad) == [
        "plugins/probes/bad.py:3: load_config is not in alertmail.__all__",
        "plugins/probes/bad.py:11: Queue is not in alertmail.intake.__all__",
        "plugins/probes/bad.py:12: Outbox is not in alertmail.__all__",
        "plugins/probes/bad.py:5: imports alertmail.queue.spool; use `from alertmail import ...`",
        "plugins/probes/bad.py:6: model is not in alertmail.__all__",
        "plugins/probes/bad.py:7: imports alertmail.delivery; use `from alertmail import ...`",
        "plugins/probes/bad.py:8: imports alertmail.loader; use `from alertmail import ...`",
    ]
