"""ALERTMAIL_LOAD_PLUGINS: which installed (entry-point) plugins load; empty, none.

A real distribution with an ``alertmail`` entry point is pip-installed into a throwaway
venv; the suite and the ``alertmail plugins`` command then run in that venv.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.plugin_venv import PluginVenv, write_project
from tests.relay_peers import REPO

PLUGIN = """
from alertmail import Sample, hookimpl

__version__ = "1.0"


class Depth:
    name = "throwaway_depth"

    def collect(self):
        return [Sample("throwaway.depth", 1)]


@hookimpl
def register_probes(register):
    register(Depth())
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("switch")
    venv = PluginVenv(folder / "venv")
    venv.install(
        write_project(
            folder / "src", "alertmail-throwaway", {"throwaway": "alertmail_throwaway"}, {"alertmail_throwaway.py": PLUGIN}
        )
    )
    return venv


def _env(**changes: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ALERTMAIL_LOAD_PLUGINS", "PYTHONPATH")}
    env.update({k: v for k, v in changes.items() if v is not None})
    return env


def _listed(venv: PluginVenv, tmp_path, **changes: str | None) -> dict[str, dict]:
    result = subprocess.run(
        [str(venv.python), "-m", "alertmail", "plugins", "--json", "--config", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
        env=_env(**changes),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def test_an_installed_plugin_loads_unless_the_switch_leaves_it_out(venv, tmp_path):
    everything = _listed(venv, tmp_path)
    assert everything["throwaway"]["source"] == "entry point"
    assert everything["throwaway"]["probes"] == ["throwaway_depth"]

    nothing = _listed(venv, tmp_path, ALERTMAIL_LOAD_PLUGINS="")
    assert "throwaway" not in nothing
    assert nothing["pickup"]["source"] == "bundled"  # the bundled plugins are alertmail itself

    # By entry-point name or by distribution name, in any spelling pip accepts.
    assert "throwaway" in _listed(venv, tmp_path, ALERTMAIL_LOAD_PLUGINS="throwaway")
    assert "throwaway" in _listed(venv, tmp_path, ALERTMAIL_LOAD_PLUGINS="other, Alertmail_Throwaway")
    assert "throwaway" not in _listed(venv, tmp_path, ALERTMAIL_LOAD_PLUGINS="other")


def _idle_footprint_test(venv: PluginVenv, **changes: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(venv.python),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_idle_footprint.py::test_the_idle_agent_on_the_default_config_loads_no_rendering_transport_or_command_code",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=_env(**changes),
        timeout=240,
    )


def test_the_suite_passes_with_a_third_party_plugin_installed(venv):
    # The suite's conftest turns entry-point loading off, for its agents too.
    passed = _idle_footprint_test(venv)
    assert passed.returncode == 0, passed.stdout + passed.stderr

    # With the plugin let in, the idle agent is no longer the default one (ssl loads at
    # start for an outside plugin): what the suite used to see whenever one was installed.
    failed = _idle_footprint_test(venv, ALERTMAIL_LOAD_PLUGINS="throwaway")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "'ssl'" in failed.stdout
