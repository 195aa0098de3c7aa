"""A private copy of the source tree for tests that build the package.

setuptools builds in the source tree (``build/``, ``*.egg-info``): two builds at once in
one tree (the wheel test and the install test in parallel workers) remove each other's
files half-way. Each build gets its own copy instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What the build reads: pyproject.toml names README.md as the long description and maps
# alertmail/ and plugins/ to the packages it installs.
PARTS = ("pyproject.toml", "README.md", "alertmail", "plugins")


def copy_source(dest: Path) -> Path:
    """Copy what a build of the package reads into ``dest``; return ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for part in PARTS:
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, dest / part, ignore=skip)
        else:
            shutil.copy2(source, dest / part)
    return dest
