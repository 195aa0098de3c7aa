"""Plugin loading: bundled, entry points and single files; broken plugins are reported, not fatal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from alertmail.loader import PluginError, load_plugins

GOOD = """
from alertmail import hookimpl, Sample
__version__ = "2.5"

class Queue:
    name = "myqueue"
    def collect(self):
        return [Sample("myqueue.depth", 3)]

@hookimpl
def register_probes(register):
    register(Queue())
"""


def plugin_dir(tmp_path: Path, **files: str) -> Path:
    folder = tmp_path / "plugins.d"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(text))
    return folder


def test_bundled_plugins_register_probes_and_the_pickup_transport():
    plugins = load_plugins()
    assert plugins.infos["system"].source == "bundled"
    assert {"cpu", "memory", "disk"} <= set(plugins.probes)
    assert "pickup" in plugins.transports
    assert not plugins.errors


def test_single_file_plugin_is_loaded_with_its_version_and_probe(tmp_path):
    plugins = load_plugins([plugin_dir(tmp_path, myqueue=GOOD)])
    info = plugins.infos["myqueue"]
    assert (info.source, info.version, info.probes) == ("file", "2.5", ["myqueue"])
    assert plugins.probes["myqueue"].collect()[0].metric == "myqueue.depth"


def test_a_plugin_that_fails_to_import_is_reported_and_the_others_still_load(tmp_path):
    folder = plugin_dir(tmp_path, broken="import nosuchmodule_xyz\n", myqueue=GOOD)
    plugins = load_plugins([folder])
    assert "ModuleNotFoundError" in plugins.infos["broken"].error
    assert "myqueue" in plugins.probes and "cpu" in plugins.probes


def test_a_plugin_whose_register_hook_raises_is_reported_by_name(tmp_path):
    folder = plugin_dir(
        tmp_path,
        raising="""
        from alertmail import hookimpl
        @hookimpl
        def register_probes(register):
            raise RuntimeError("cannot open device")
    """,
        myqueue=GOOD,
    )
    plugins = load_plugins([folder])
    assert "cannot open device" in plugins.infos["raising"].error
    assert "myqueue" in plugins.probes


def test_a_misspelt_hook_name_fails_loudly(tmp_path):
    folder = plugin_dir(
        tmp_path,
        typo="""
        from alertmail import hookimpl
        @hookimpl
        def register_probe(register):
            pass
    """,
    )
    with pytest.raises(PluginError, match="register_probe"):
        load_plugins([folder])


def test_a_probe_without_collect_is_refused(tmp_path):
    folder = plugin_dir(
        tmp_path,
        nocollect="""
        from alertmail import hookimpl
        class P:
            name = "p"
        @hookimpl
        def register_probes(register):
            register(P())
    """,
    )
    plugins = load_plugins([folder])
    assert "collect" in plugins.infos["nocollect"].error
    assert "p" not in plugins.probes


def test_disabled_plugins_are_not_loaded(tmp_path):
    plugins = load_plugins([plugin_dir(tmp_path, myqueue=GOOD)], blocked=["myqueue"])
    assert "myqueue" not in plugins.infos and "myqueue" not in plugins.probes


def test_entry_point_plugin_is_listed_by_the_plugins_command(tmp_path):
    # A real installed distribution, as pip leaves it: a module plus dist-info with entry points.
    site = tmp_path / "site"
    (site / "alertmail_example-1.3.dist-info").mkdir(parents=True)
    (site / "alertmail_example.py").write_text(GOOD)
    (site / "alertmail_example-1.3.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: alertmail-example\nVersion: 1.3\n"
    )
    (site / "alertmail_example-1.3.dist-info" / "entry_points.txt").write_text("[alertmail]\nexample = alertmail_example\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env.pop("ALERTMAIL_LOAD_PLUGINS", None)  # unset: every installed plugin loads
    result = subprocess.run(
        [sys.executable, "-m", "alertmail", "plugins", "--json", "--config", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["example"]["source"] == "entry point"
    assert rows["example"]["version"] == "1.3"
    assert rows["example"]["probes"] == ["myqueue"]
    assert rows["pickup"]["transports"] == ["pickup"]
