"""docs/plugins.md: its example package, taken from the page, pip-installed into a fresh venv and run.

Every block of the page that starts with ``# file: PATH`` is written to PATH in a project
folder; pip installs it (entry points and all) into a throwaway venv, and the probe,
the transport, the service and the command run from there through ``alertmail``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import time
from email import message_from_bytes
from pathlib import Path

import pytest

from tests.plugin_venv import PluginVenv
from tests.relay_peers import REPO

GUIDE = REPO / "docs" / "plugins.md"
BLOCK = re.compile(r"^```(?:python|toml)\n# file: (\S+)\n(.*?)^```$", re.S | re.M)


def guide_files() -> dict[str, str]:
    return {path: f"# file: {path}\n{text}" for path, text in BLOCK.findall(GUIDE.read_text())}


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("guide")
    project = folder / "alertmail-example"
    for path, text in guide_files().items():
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(text)
    venv = PluginVenv(folder / "venv")
    venv.install(project)
    return venv


def _env() -> dict[str, str]:
    # Every installed plugin loads (the suite's conftest lets none), as on a user's host.
    return {k: v for k, v in os.environ.items() if k not in ("ALERTMAIL_LOAD_PLUGINS", "PYTHONPATH")}


def alertmail(venv: PluginVenv, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv.python), "-m", "alertmail", *map(str, args)], capture_output=True, text=True, env=_env(), cwd=cwd, timeout=120
    )


def config(tmp_path: Path, extra: str, route: str = "pickup") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[agent]\nstate_dir = "var"\nhostname = "web01"\n'
        f'[mail]\nfrom = "alerts@example.test"\nto = ["ops@example.test"]\nroute = ["{route}"]\n'
        '[[rules]]\nname = "jobs-piling-up"\nmetric = "files.waiting"\nabove = 100\n' + extra
    )
    return path


def test_the_guide_has_the_four_examples_and_the_package_around_them():
    assert set(guide_files()) == {
        "pyproject.toml",
        "alertmail_example/__init__.py",
        "alertmail_example/probe.py",
        "alertmail_example/transport.py",
        "alertmail_example/service.py",
        "alertmail_example/command.py",
    }


def test_the_installed_guide_package_registers_its_probe_transport_service_and_command(venv, tmp_path):
    listed = alertmail(venv, "plugins", "--json", "--config", tmp_path / "none.toml")
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert {name: rows[name]["source"] for name in rows if name.startswith("example_")} == dict.fromkeys(
        ["example_files", "example_jsonl", "example_stamp", "example_stamp_age"], "entry point"
    )
    assert [rows[n]["error"] for n in rows if n.startswith("example_")] == [None] * 4
    assert rows["example_files"]["probes"] == ["files"]
    assert rows["example_jsonl"]["transports"] == ["jsonl"]
    assert rows["example_stamp"]["services"] == ["stamp"]
    assert "stamp-age" in alertmail(venv, "--help").stdout


def test_the_guide_probe_counts_files_and_reports_a_missing_folder_by_its_key_path(venv, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    for name in ("a.job", "b.job", "c.job", "notes.txt"):
        (spool / name).write_text("x")
    good = config(tmp_path, f'[probes.files]\nfolders = ["{spool}"]\npattern = "*.job"\n')
    run = alertmail(venv, "probe", "--json", "--config", good)
    assert run.returncode == 0, run.stderr
    [files] = [p for p in json.loads(run.stdout)["probes"] if p["name"] == "files"]
    assert files["error"] is None
    assert [(s["metric"], s["labels"], s["value"]) for s in files["samples"]] == [("files.waiting", {"folder": str(spool)}, 3.0)]

    bad = config(tmp_path, f'[probes.files]\nfolders = ["{spool}", "{tmp_path}/uploads", "relative"]\n')
    check = alertmail(venv, "check", "--config", bad)
    assert check.returncode == 78, check.stdout + check.stderr
    assert f"probes.files.folders[1]: {tmp_path}/uploads is not a folder; create it or remove it from the list" in check.stderr
    assert "probes.files.folders[2]: 'relative' is relative; give the absolute path" in check.stderr


def test_the_guide_transport_takes_a_test_alert_through_the_route(venv, tmp_path):
    cfg = config(tmp_path, '[transports.jsonl]\npath = "out/mail.jsonl"\nmax_size = "1MB"\n', route="jsonl")
    sent = alertmail(venv, "send-test", "--config", cfg)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "ops@example.test  delivered  jsonl" in sent.stdout
    [line] = (tmp_path / "out" / "mail.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["from"] == "alerts@example.test" and record["to"] == ["ops@example.test"]
    message = message_from_bytes(base64.b64decode(record["message"]))
    assert str(message["Subject"]).startswith("[TEST] ")

    small = config(tmp_path, '[transports.jsonl]\nmax_size = "10"\n', route="jsonl")
    check = alertmail(venv, "check", "--config", small)
    assert check.returncode == 78
    assert "transports.jsonl.max_size: must be at least" in check.stderr


def test_the_guide_service_keeps_its_stamp_while_the_agent_runs_and_the_command_reads_it(venv, tmp_path):
    cfg = config(tmp_path, '[stamp]\nenabled = true\nevery = "0.2s"\n')
    stamp = tmp_path / "var" / "alive"
    log = tmp_path / "agent.log"
    with open(log, "w") as err:
        agent = subprocess.Popen([str(venv.python), "-m", "alertmail", "run", "--config", str(cfg)], stderr=err, env=_env())
    try:
        deadline = time.monotonic() + 60
        while "service stamp started" not in log.read_text():
            assert agent.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        first = stamp.read_text()
        while stamp.read_text() == first:  # rewritten every 0.2 s
            assert agent.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        fresh = alertmail(venv, "stamp-age", "--config", cfg)
        assert fresh.returncode == 0, fresh.stderr
        assert fresh.stdout.startswith(f"{stamp}: written ")
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(60) == 0, log.read_text()
    assert not stamp.exists()  # stop() removed it
    gone = alertmail(venv, "stamp-age", "--config", cfg)
    assert gone.returncode == 69
    assert "no stamp; is the agent running with [stamp] enabled?" in gone.stderr

    nowhere = config(tmp_path, f'[stamp]\nenabled = true\npath = "{tmp_path}/missing/alive"\n')
    check = alertmail(venv, "check", "--config", nowhere)
    assert check.returncode == 78
    assert f"stamp.path: {tmp_path}/missing does not exist; create it or choose another path" in check.stderr


def test_the_guide_plugins_declare_their_options_as_settings_classes(venv):
    code = (
        "from alertmail import Settings\n"
        "from alertmail_example import probe, service, transport\n"
        "for declared in (probe.Files.options, transport.JsonLines.options, service.Stamp.options):\n"
        "    assert isinstance(declared, type) and issubclass(declared, Settings), declared\n"
        "print(sorted(transport.JsonLinesSettings.options()))\n"
    )
    run = subprocess.run([str(venv.python), "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["['fsync',", "'max_size',", "'path']"]
