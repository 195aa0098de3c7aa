"""How config values travel: string-key reads of config-like objects, and loosely typed config parameters.

Counted outside ``alertmail/config/`` (where tables are checked and become settings objects):

* a read of a string key from something named like a config (``cfg``, ``config``, ``options``,
  ``settings``, ``section``, ``table``, ``agent``, ``mail`` ...): ``cfg["group_wait"]``,
  ``options.get("timeout")``, ``cfg.sections["notify"]["group_wait"]``;
* a parameter or annotated attribute named like a config (``cfg``, ``config``, ``options``,
  ``settings`` ...) that is unannotated or typed ``Any``, ``dict`` or ``Mapping``.

Run: ``python tests/config_reads.py [-v] [PATH ...]`` (default: alertmail plugins).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_READ = re.compile(r"^_?(cfg|config|conf|options|opts|settings|section|sections|agent|mail|raw|params|notify|table)$")
_PARAM = re.compile(r"^_?(cfg|config|conf|options|opts|settings|params)$")
_LOOSE = re.compile(r"\bAny\b|\bdict\b|\bMapping\b")
_SCHEMA = re.compile(r"Mapping\[str, Option\]|dict\[str, Option\]")  # the older way to declare options: a schema, not a config


def _named_like_config(node: ast.AST) -> bool:
    while True:
        if isinstance(node, ast.Attribute):
            if _READ.match(node.attr):
                return True
            node = node.value
        elif isinstance(node, ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        else:
            return isinstance(node, ast.Name) and bool(_READ.match(node.id))


def _string(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def findings(paths: list[Path]) -> tuple[list[str], list[str]]:
    """(string-key reads, loosely typed config parameters), each as ``file:line: code``."""
    reads: list[str] = []
    params: list[str] = []
    for root in paths:
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            rel = path.resolve().relative_to(ROOT).as_posix()
            if rel.startswith("alertmail/config/"):
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                where = f"{rel}:{getattr(node, 'lineno', 0)}"
                if (isinstance(node, ast.Subscript) and _string(node.slice) and _named_like_config(node.value)) or (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "get"
                    and node.args
                    and _string(node.args[0])
                    and _named_like_config(node.func.value)
                ):
                    reads.append(f"{where}: {ast.unparse(node)}")
                elif isinstance(node, ast.arg) and _PARAM.match(node.arg):
                    annotation = ast.unparse(node.annotation) if node.annotation else ""
                    if not annotation or _LOOSE.search(_SCHEMA.sub("", annotation)):
                        params.append(f"{where}: {node.arg}: {annotation or '(none)'}")
                elif isinstance(node, ast.AnnAssign):
                    target = node.target
                    name = target.id if isinstance(target, ast.Name) else target.attr if isinstance(target, ast.Attribute) else ""
                    if _PARAM.match(name) and _LOOSE.search(_SCHEMA.sub("", ast.unparse(node.annotation))):
                        params.append(f"{where}: {name}: {ast.unparse(node.annotation)}")
    return reads, params


def main(argv: list[str]) -> None:
    verbose = "-v" in argv
    paths = [Path(a) for a in argv if a != "-v"] or [ROOT / "alertmail", ROOT / "plugins"]
    reads, params = findings(paths)
    if verbose:
        print("\n".join(reads + params))
    total = len(reads) + len(params)
    print(f"string-key config reads: {len(reads)}; loosely typed config parameters: {len(params)}; together {total}")


if __name__ == "__main__":
    main(sys.argv[1:])
