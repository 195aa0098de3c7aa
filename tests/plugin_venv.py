"""A throwaway venv that sees the project's packages, with plugin distributions pip-installed into it.

The venv's own site-packages holds only what a test installs; a ``.pth`` file adds the
project venv's site-packages behind it (alertmail, its dependencies, pytest), so creating
one costs no copying and installing a plugin there leaves the project venv untouched.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path


class PluginVenv:
    def __init__(self, folder: Path) -> None:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
        self.python = folder / "bin" / "python"
        site = subprocess.run(
            [str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        self.site = Path(site)
        project_site = sysconfig.get_paths()["purelib"]
        (self.site / "project.pth").write_text(f"import site; site.addsitedir({project_site!r})\n")

    def install(self, source: Path) -> None:
        """``pip install`` the project in ``source`` into this venv, as a user would."""
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(self.site), str(source)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def write_project(folder: Path, dist: str, entry_points: dict[str, str], files: dict[str, str]) -> Path:
    """A minimal pyproject project: ``files`` (module path -> text) and ``alertmail`` entry points."""
    folder.mkdir(parents=True)
    packages = sorted({name.split("/")[0] for name in files if "/" in name})
    modules = sorted(name.removesuffix(".py") for name in files if "/" not in name)
    eps = "\n".join(f"{name} = {target!r}" for name, target in entry_points.items())
    (folder / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "1.0"

            [project.entry-points.alertmail]
            """
        )
        + eps
        + f"\n\n[tool.setuptools]\npackages = {packages!r}\npy-modules = {modules!r}\n"
    )
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder
