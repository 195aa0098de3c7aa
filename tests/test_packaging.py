"""The wheel carries everything the source tree has: every module, every declared data file."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.source_tree import copy_source

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(copy_source(out / "source"))],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("alertmail-*.whl")
    return zipfile.ZipFile(path)


def setuptools_table() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def source_dir(package: str) -> Path:
    """Where a package's files are in the repository (``alertmail.plugins`` is ``plugins/``)."""
    mapping = setuptools_table()["package-dir"]
    prefix = max((p for p in mapping if package == p or package.startswith(p + ".")), key=len)
    return ROOT / mapping[prefix] / package[len(prefix) :].lstrip(".").replace(".", "/")


def test_every_declared_package_data_file_is_in_the_wheel(wheel):
    names = wheel.namelist()
    for package, patterns in setuptools_table()["package-data"].items():
        for pattern in patterns:
            declared = sorted(p for p in source_dir(package).glob(pattern) if p.is_file())
            assert declared, f"package-data {package}: {pattern!r} matches no file in the repository"
            inside = package.replace(".", "/") + "/"
            for path in declared:
                member = inside + path.relative_to(source_dir(package)).as_posix()
                assert member in names, f"{member} is declared as package data but is not in the wheel"


def test_every_module_of_the_source_tree_is_in_the_wheel(wheel):
    names = set(wheel.namelist())
    expected = {f"alertmail/{p.relative_to(ROOT / 'alertmail').as_posix()}" for p in (ROOT / "alertmail").rglob("*.py")}
    expected |= {f"alertmail/plugins/{p.relative_to(ROOT / 'plugins').as_posix()}" for p in (ROOT / "plugins").rglob("*.py")}
    missing = sorted(expected - names)
    assert missing == [], "packages missing from [tool.setuptools].packages: " + ", ".join(missing)
    assert not fnmatch.filter(names, "plugins/*"), "no top-level package called plugins may be installed"
    assert "alertmail/py.typed" in names
