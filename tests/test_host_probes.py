"""The file, sensors and pressure probes, and how the host probes load: only when configured."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import namedtuple
from pathlib import Path

import pytest

from alertmail.plugins.probes.file import FileProbe, FileSettings
from alertmail.plugins.probes.pressure import PressureProbe, parse_psi
from alertmail.plugins.probes.sensors import SensorsProbe, readings
from alertmail.probes.runner import configure_probe

REPO = Path(__file__).resolve().parent.parent


def file_probe(*checks: dict[str, str]) -> FileProbe:
    probe = FileProbe()
    assert configure_probe("file", probe, FileSettings(checks=list(checks))) == []
    return probe


def by_metric(samples) -> dict[tuple[str, str], float]:
    return {(s.metric, s.label_dict()["check"]): s.value for s in samples}


def test_a_glob_reports_how_many_match_and_the_age_and_size_of_the_newest(tmp_path):
    now = time.time()
    for name, age, size in (("db-1.sql.gz", 3 * 86400, 100), ("db-2.sql.gz", 2 * 86400, 2500), ("db-0.sql.gz", 5 * 86400, 7)):
        path = tmp_path / name
        path.write_bytes(b"x" * size)
        os.utime(path, (now - age, now - age))
    (tmp_path / "notes.txt").write_text("not a backup")
    probe = file_probe({"name": "backup", "path": f"{tmp_path}/db-*.sql.gz"})
    values = by_metric(probe.collect())
    assert values[("file.exists", "backup")] == 1
    assert values[("file.count", "backup")] == 3
    assert values[("file.size_bytes", "backup")] == 2500
    assert 2 * 86400 <= values[("file.age_seconds", "backup")] < 2 * 86400 + 60
    detail = probe.detail("file.age_seconds", {"check": "backup"})
    assert detail.startswith(f"{tmp_path}/db-2.sql.gz (newest of 3): 2500 bytes, modified ")


def test_a_single_path_and_a_recursive_glob(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "deep.log").write_text("1")
    (tmp_path / "a" / "top.log").write_text("22")
    probe = file_probe(
        {"name": "one", "path": f"{tmp_path}/a/top.log"},
        {"name": "all", "path": f"{tmp_path}/**/*.log"},
    )
    values = by_metric(probe.collect())
    assert values[("file.count", "one")] == 1 and values[("file.size_bytes", "one")] == 2
    assert values[("file.count", "all")] == 2


def test_a_star_skips_names_starting_with_a_dot_as_the_shell_does(tmp_path):
    (tmp_path / "a.gz").write_text("1")
    (tmp_path / ".partial.gz").write_text("22")
    probe = file_probe({"name": "gz", "path": f"{tmp_path}/*.gz"})
    values = by_metric(probe.collect())
    assert values[("file.count", "gz")] == 1 and values[("file.size_bytes", "gz")] == 1


def test_nothing_matching_reports_zero_and_says_why_in_the_detail(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "plain").write_text("a file, not a folder")
    probe = file_probe(
        {"name": "no-match", "path": f"{tmp_path}/empty/*.gz"},
        {"name": "no-folder", "path": f"{tmp_path}/missing/*.gz"},
        {"name": "no-file", "path": f"{tmp_path}/empty/backup.gz"},
        {"name": "file-in-the-way", "path": f"{tmp_path}/plain/backup.gz"},
    )
    samples = probe.collect()
    values = by_metric(samples)
    for check in ("no-match", "no-folder", "no-file", "file-in-the-way"):
        assert values[("file.exists", check)] == 0 and values[("file.count", check)] == 0
        assert ("file.age_seconds", check) not in values and ("file.size_bytes", check) not in values
    assert probe.detail("file.exists", {"check": "no-match"}) == f"no file matches {tmp_path}/empty/*.gz"
    assert probe.detail("file.exists", {"check": "no-folder"}) == f"no such folder: {tmp_path}/missing"
    assert probe.detail("file.exists", {"check": "no-file"}) == f"no such file: {tmp_path}/empty/backup.gz"
    assert probe.detail("file.exists", {"check": "file-in-the-way"}) == f"{tmp_path}/plain is not a folder"


AS_USER = """
import json, sys
from alertmail.plugins.probes.file import FileProbe, FileSettings
from alertmail.plugins.probes.logfile import LogfileProbe, LogfileSettings
from alertmail.probes.runner import configure_probe
folder = sys.argv[1]
files = FileProbe()
configure_probe("file", files, FileSettings(checks=[{"name": "s", "path": folder + "/secret/*.gz"}]))
exists = [s.value for s in files.collect() if s.metric == "file.exists"]
log_checks = [{"name": "a", "path": folder + "/app.log", "pattern": "x"}]
logs = configure_probe("logfile", LogfileProbe(), LogfileSettings(checks=log_checks))
print(json.dumps({"exists": exists, "detail": files.detail("file.exists", {"check": "s"}), "logfile": logs}))
"""


def test_files_and_logs_the_agents_user_may_not_read_are_named_with_the_reason():
    folder = Path(tempfile.mkdtemp(prefix="alertmail-perm-"))  # not under tmp_path: an ordinary user must reach it
    try:
        folder.chmod(0o755)
        (folder / "secret").mkdir(mode=0o700)
        (folder / "secret" / "db.gz").write_text("x")
        (folder / "app.log").write_text("ERROR\n")
        (folder / "app.log").chmod(0o600)
        command = [sys.executable, "-c", AS_USER, str(folder)]
        if os.geteuid() == 0:  # root reads everything: look as nobody
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        else:
            (folder / "secret").chmod(0)
            (folder / "app.log").chmod(0)
        done = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd="/", timeout=60
        )
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout)
    finally:
        for path in (folder / "secret", folder / "app.log"):
            path.chmod(0o700)
        shutil.rmtree(folder)
    assert seen["exists"] == [0]
    assert seen["detail"] == f"cannot read {folder}/secret: Permission denied"
    assert seen["logfile"] == [
        f"probes.logfile.checks[0].path: cannot read {folder}/app.log: Permission denied;"
        " run the agent as a user who may read it (for /var/log, a member of group adm)"
    ]


def test_a_file_appearing_and_growing_shows_in_the_next_run(tmp_path):
    probe = file_probe({"name": "flag", "path": f"{tmp_path}/flag"})
    assert by_metric(probe.collect())[("file.exists", "flag")] == 0
    (tmp_path / "flag").write_text("12345")
    # Stamped by this process's clock: the kernel's would differ under a faked clock (.ci/next-year).
    now = time.time()
    os.utime(tmp_path / "flag", (now, now))
    values = by_metric(probe.collect())
    assert values[("file.exists", "flag")] == 1 and values[("file.size_bytes", "flag")] == 5
    assert 0 <= values[("file.age_seconds", "flag")] < 60


def test_file_checks_refuse_relative_paths_missing_keys_and_twice_used_names():
    problems = configure_probe(
        "file",
        FileProbe(),
        FileSettings(checks=[{"name": "a", "path": "backups/*.gz"}, {"name": "a", "path": "/x"}, {"path": "/y"}, "nope"]),
    )
    assert problems == [
        "probes.file.checks[0].path: expected an absolute path (the agent's working folder is not yours), got 'backups/*.gz'",
        "probes.file.checks[1].name: 'a' is used twice; each check needs its own name",
        'probes.file.checks[2].name: missing; e.g. { name = "db-backup", path = "/var/backups/db-*.sql.gz" }',
        'probes.file.checks[3]: expected a table like { name = "db-backup", path = "/var/backups/db-*.sql.gz" }, got \'nope\'',
    ]


# ---------------------------------------------------------------------------
# sensors: psutil's own structures (CI machines have no sensors to read)

shwtemp = namedtuple("shwtemp", ["label", "current", "high", "critical"])
sfan = namedtuple("sfan", ["label", "current"])


def test_sensor_readings_are_labelled_by_chip_and_label_with_unnamed_and_repeated_labels_told_apart():
    temperatures = {
        "coretemp": [shwtemp("Package id 0", 51.0, 80.0, 100.0), shwtemp("Core 0", 48.0, 80.0, 100.0)],
        "nvme": [shwtemp("Composite", 38.9, 84.8, 84.8), shwtemp("Composite", 41.9, 84.8, 84.8)],
        "acpitz": [shwtemp("", 27.8, None, None), shwtemp("", 29.8, None, None)],
    }
    samples = readings(temperatures, "temp", "sensors.temperature_celsius", 1000.0)
    got = {(s.label_dict()["sensor"], s.label_dict()["label"]): s.value for s in samples}
    assert got == {
        ("acpitz", "temp1"): 27.8,
        ("acpitz", "temp2"): 29.8,
        ("coretemp", "Package id 0"): 51.0,
        ("coretemp", "Core 0"): 48.0,
        ("nvme", "Composite"): 38.9,
        ("nvme", "Composite #2"): 41.9,
    }
    assert {s.metric for s in samples} == {"sensors.temperature_celsius"}
    fans = readings({"thinkpad": [sfan("", 2950)]}, "fan", "sensors.fan_rpm", 1000.0)
    assert [(s.metric, s.label_dict(), s.value) for s in fans] == [
        ("sensors.fan_rpm", {"sensor": "thinkpad", "label": "fan1"}, 2950.0)
    ]


def test_a_host_without_sensors_reports_nothing_and_no_error_and_says_so_once(caplog):
    probe = SensorsProbe()
    probe._temperatures = dict
    probe._fans = dict
    with caplog.at_level("INFO", logger="alertmail.probes.sensors"):
        assert configure_probe("sensors", probe, {}) == []
        assert probe.collect() == []
        assert configure_probe("sensors", probe, {}) == []
    assert [r.getMessage() for r in caplog.records] == [
        "sensors: this host shows no temperature sensor or fan; the sensors probe reports nothing"
    ]
    probe._temperatures = probe._fans = None  # psutil without sensor support on this system
    assert probe.collect() == []


def test_the_sensors_probe_reads_this_host_without_error():
    probe = SensorsProbe()
    assert configure_probe("sensors", probe, {}) == []
    assert all(s.metric in ("sensors.temperature_celsius", "sensors.fan_rpm") for s in probe.collect())


# ---------------------------------------------------------------------------
# pressure

PSI_CPU = "some avg10=24.90 avg60=49.75 avg300=51.97 total=1421431293\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
PSI_IO_OLD_KERNEL = (
    "some avg10=1.25 avg60=0.50 avg300=0.10 total=61806317\nfull avg10=0.75 avg60=0.03 avg300=0.14 total=10709552\n"
)


def test_the_psi_parser_reads_some_and_full_and_skips_what_it_does_not_know():
    assert parse_psi(PSI_CPU) == {
        "some": {"avg10": 24.9, "avg60": 49.75, "avg300": 51.97, "total": 1421431293.0},
        "full": {"avg10": 0.0, "avg60": 0.0, "avg300": 0.0, "total": 0.0},
    }
    assert parse_psi("some avg10=3.5 avg60=x future\nmore stuff\n") == {"some": {"avg10": 3.5}}
    assert parse_psi("") == {}


def test_pressure_reports_avg10_per_resource_from_a_psi_folder(tmp_path):
    (tmp_path / "cpu").write_text("some avg10=24.90 avg60=49.75 avg300=51.97 total=1421431293\n")  # before Linux 5.13
    (tmp_path / "io").write_text(PSI_IO_OLD_KERNEL)
    (tmp_path / "memory").write_text(PSI_CPU)
    probe = PressureProbe(str(tmp_path))
    assert configure_probe("pressure", probe, {}) == []
    got = {(s.metric, s.label_dict()["resource"]): s.value for s in probe.collect()}
    assert got == {
        ("pressure.some_percent", "cpu"): 24.9,
        ("pressure.some_percent", "io"): 1.25,
        ("pressure.full_percent", "io"): 0.75,
        ("pressure.some_percent", "memory"): 24.9,
        ("pressure.full_percent", "memory"): 0.0,
    }


def test_a_host_without_psi_says_so_once_and_reports_nothing(tmp_path, caplog):
    probe = PressureProbe(str(tmp_path / "pressure"))
    with caplog.at_level("INFO", logger="alertmail.probes.pressure"):
        assert configure_probe("pressure", probe, {}) == []
        assert probe.collect() == [] and probe.collect() == []
        assert configure_probe("pressure", probe, {}) == []  # the agent configures again after check, and at a reload
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "no pressure stall information" in said[0] and str(tmp_path / "pressure") in said[0]


@pytest.mark.skipif(not os.path.exists("/proc/pressure/cpu"), reason="this kernel offers no /proc/pressure (PSI)")
def test_pressure_reads_this_hosts_proc_pressure():
    probe = PressureProbe()
    assert configure_probe("pressure", probe, {}) == []
    samples = probe.collect()
    resources = {s.label_dict()["resource"] for s in samples if s.metric == "pressure.some_percent"}
    assert resources == {"cpu", "memory", "io"}
    assert all(0.0 <= s.value <= 100.0 for s in samples)


# ---------------------------------------------------------------------------
# loading


LOADED = """
import sys
from pathlib import Path
from alertmail.config.load import load_config
from alertmail.loader import load_plugins
from alertmail.probes.runner import probe_settings
plugins = load_plugins()
cfg = load_config(Path(sys.argv[1]), plugins)
on = sorted(n for n in ("file", "logfile", "sensors", "pressure") if probe_settings(cfg, n, plugins.probes[n]).enabled)
mods = sorted(m.rsplit(".", 1)[1] for m in sys.modules if m.startswith("alertmail.plugins.probes."))
print(" ".join(on) + "|" + " ".join(mods))
"""


def _loaded(tmp_path: Path, extra: str) -> tuple[list[str], list[str]]:
    config = tmp_path / "config.toml"
    config.write_text((REPO / "config.toml").read_text() + textwrap.dedent(extra))
    done = subprocess.run(
        [sys.executable, "-c", LOADED, str(config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    on, _, mods = done.stdout.strip().partition("|")
    return on.split(), mods.split()


def test_the_host_probes_run_and_load_their_code_only_when_configured(tmp_path):
    on, modules = _loaded(tmp_path, "")
    assert on == []
    assert not {"file", "logfile", "sensors", "pressure"} & set(modules)
    (tmp_path / "app.log").write_text("")
    logfile = f'\n[probes.logfile]\nchecks = [{{ name = "a", path = "{tmp_path}/app.log", pattern = "x" }}]\n'
    on, modules = _loaded(tmp_path, logfile)
    assert on == ["logfile"]
    assert "logfile" in modules and not {"file", "sensors", "pressure"} & set(modules)
    on, _ = _loaded(tmp_path, "\n[probes.sensors]\n\n[probes.pressure]\n")
    assert on == ["pressure", "sensors"]


def test_the_metric_catalogue_documents_every_host_probe_metric_and_option():
    from alertmail.cli.probe import catalogue
    from alertmail.loader import load_plugins

    doc = (REPO / "docs" / "metrics.md").read_text()
    rows = {
        line.split("|")[1].strip().strip("`"): line.split("|")[2].strip() for line in doc.splitlines() if line.startswith("| `")
    }
    probes = {n: p for n, p in load_plugins().probes.items() if n in ("file", "logfile", "sensors", "pressure")}
    infos = [info for _, info in catalogue(probes)]
    assert len(infos) == 9
    for info in infos:
        assert rows.get(info.name) == info.unit, f"docs/metrics.md: {info.name} ({info.unit}) missing or stale"
    for name in ("file", "logfile"):
        section = doc.split(f"### `{name}`")[1].split("\n### ")[0]
        for key in probes[name].options.keys_to_fields():
            assert f"| `{key}` |" in section, (name, key)


def test_init_proposes_a_file_check_that_check_accepts_once_uncommented(tmp_path):
    import tomllib

    out = tmp_path / "config.toml"
    done = subprocess.run([sys.executable, "-m", "alertmail", "init", "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "file" not in tomllib.loads(text).get("probes", {})  # proposed, not turned on
    assert "# Files: is the nightly backup there" in text
    head, marker, example = text.partition("# [probes.file]\n")
    assert marker
    example = marker + example
    backup = tmp_path / "backups" / "db-1.sql.gz"
    backup.parent.mkdir()
    backup.write_bytes(b"x")
    uncommented = "\n".join(line[2:] if line.startswith("# ") else line for line in example.splitlines())
    out.write_text(head + uncommented.replace("/var/backups/", f"{backup.parent}/"))
    data = tomllib.loads(out.read_text())
    assert data["probes"]["file"]["checks"] == [{"name": "db-backup", "path": f"{backup.parent}/db-*.sql.gz"}]
    assert {r["metric"] for r in data["rules"]} >= {"file.exists", "file.age_seconds"}
    done = subprocess.run(
        [sys.executable, "-m", "alertmail", "check", "--config", str(out)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
