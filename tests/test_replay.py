"""`alertmail replay`: recorded samples through rules, grouping, silences and the storm cap."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import itertools
import json
import subprocess
import sys
import textwrap
from email.message import EmailMessage
from pathlib import Path

import pytest

from alertmail.model import Sample
from alertmail.notify.notifier import NotifySettings
from alertmail.notify.runtime_silences import SilenceSet
from alertmail.notify.silences import SilenceSettings, silence_from_settings
from alertmail.probes.samples import SampleFileError, SampleWriter, read_samples
from alertmail.replay import CollectedMail, html_with_data_uris, replay, write_mail_files
from alertmail.rules.model import Rule

DATA = Path(__file__).parent / "data"
OPS = "ops@test.example"
CPU = Rule(name="cpu-high", metric="cpu.percent", above=90, clear=80, to=(OPS,))
BUSY = Rule(name="disk-busy", metric="disk.busy_percent", above=90, to=(OPS,))
# Every alert mailed as it comes, no cap: the test says what it groups or caps.
AT_ONCE = NotifySettings(group_wait=0.0, max_mails_per_hour=0)


def kinds(result) -> list[str]:
    return [str(m.message["X-Alertmail-Kind"]) for m in result.mails]


# -- the samples file ---------------------------------------------------------------


def test_samples_round_trip_through_the_csv_format_with_awkward_labels(tmp_path):
    path = tmp_path / "s.csv"
    writer = SampleWriter(path)
    samples = [
        Sample("disk.used_percent", 93.4, {"mount": "/mnt/a;b=c", "device": "100%"}, 1795698000.25),
        Sample("load.1m", 0.5, {}, 1795698010.0),
    ]
    writer.write(samples)
    writer.close()
    assert path.read_text().splitlines()[0] == "timestamp,metric,labels,value"
    assert read_samples(path) == samples


def test_samples_file_accepts_iso_times_with_offsets_and_epoch_seconds(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("2026-11-26T14:00:00+01:00,a,,1\n1795698000,a,x=1,2\n2026-11-26T13:00:00,a,,3\n")
    times = [s.timestamp for s in read_samples(path)]
    assert times == [1795698000.0] * 3


def test_bad_line_in_samples_file_is_named_with_its_number(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("timestamp,metric,labels,value\n1795698000,a,,1\nyesterday,a,,2\n")
    with pytest.raises(SampleFileError, match=r"s\.csv:3: expected ISO 8601"):
        read_samples(path)


# -- rule features on recorded series --------------------------------------------------


def test_flapping_series_yields_one_flapping_mail_instead_of_one_per_change():
    samples = read_samples(DATA / "flapping.csv")
    result = asyncio.run(replay(samples, [CPU], notify=AT_ONCE))
    changes = sum(1 for a, b in itertools.pairwise(samples) if (a.value > 90) != (b.value > 90))
    assert changes >= 40
    assert kinds(result).count("flapping") == 1
    assert len(result.mails) <= 5
    # Once flapping, nothing more until it settles: then one mail with the final state.
    flapping_at = next(m.at for m in result.mails if m.message["X-Alertmail-Kind"] == "flapping")
    after = [m for m in result.mails if m.at > flapping_at]
    assert [str(m.message["X-Alertmail-Kind"]) for m in after] == ["flap-ended"]


def test_group_wait_mails_the_first_change_at_once_and_folds_the_next_ones_into_one_mail():
    samples = read_samples(DATA / "flapping.csv")
    result = asyncio.run(replay(samples, [CPU], notify=NotifySettings(group_wait=30.0, max_mails_per_hour=0)))
    first, second = result.mails[:2]
    assert first.at == samples[11].timestamp  # the first crossing: nothing was waiting, so at once
    assert str(first.message["X-Alertmail-Kind"]) == "firing"
    assert second.at == samples[11].timestamp + 30  # the changes of the next 30 s, one group_wait later
    assert str(second.message["X-Alertmail-Kind"]) == "firing,flapping,resolved"  # by 13:02:20 it flaps
    assert int(second.message["X-Alertmail-Incident"].count(" ")) == 1  # two incidents in one mail


def maintenance_window() -> SilenceSet:
    settings = SilenceSettings(rule="disk-*", days=["sat"], start="02:00", end="04:00", comment="RAID scrub")
    return SilenceSet([silence_from_settings(settings, index=0, default_tz="Europe/Berlin")])


def test_maintenance_window_holds_alerts_and_mails_once_for_what_still_fires_when_it_ends():
    samples = read_samples(DATA / "maintenance.csv")
    result = asyncio.run(replay(samples, [BUSY], notify=AT_ONCE, silences=maintenance_window(), timezone="Europe/Berlin"))
    # sda: busy from 02:30 to 04:30 local (inside the window, then past its end) -> one firing mail at 04:00,
    # then its recovery at 04:30. sdb: busy 02:40-03:10, inside the window only -> no mail at all.
    assert kinds(result) == ["firing", "resolved"]
    firing, resolved = result.mails
    assert firing.at == samples[0].timestamp + 3 * 3600  # 04:00 local
    assert "device=sda" in firing.message.get_body(("plain",)).get_content()
    assert resolved.message["In-Reply-To"] == firing.message["Message-ID"]
    fates = {(e["labels"]["device"], e["kind"]): e["fate"] for e in result.events}
    assert fates[("sdb", "firing")] == fates[("sdb", "resolved")] == "silenced:config-0"
    assert fates[("sda", "firing")] == "silenced:config-0"


# -- rendering files ---------------------------------------------------------------------


def test_html_file_inlines_cid_images_as_data_uris(tmp_path):
    png = b"\x89PNG\r\n\x1a\nfake"
    msg = EmailMessage()
    msg["Subject"] = "x"
    msg["X-Alertmail-Kind"] = "firing"
    msg.set_content("text")
    msg.add_alternative('<p><img src="cid:chart1@alertmail.invalid"></p>', subtype="html")
    msg.get_payload()[-1].add_related(png, "image", "png", cid="<chart1@alertmail.invalid>")
    page = html_with_data_uris(msg)
    assert page is not None and "cid:" not in page
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page

    written = write_mail_files([CollectedMail("m1", msg.as_bytes(), None)], tmp_path)  # type: ignore[arg-type]
    assert [p.name for p in written] == ["001-firing.eml", "001-firing.html"]


# -- the command line ---------------------------------------------------------------------


def test_replay_command_prints_timeline_and_mails_and_renders_them(tmp_path):
    (tmp_path / "config.toml").write_text(
        textwrap.dedent("""
        [agent]
        timezone = "Europe/Berlin"
        hostname = "web01"

        [mail]
        from = "alertmail@test.example"
        to = ["ops@test.example"]

        [notify]
        group_wait = "0s"

        [[rules]]
        name = "disk-busy"
        metric = "disk.busy_percent"
        above = 90
        labels = { device = "sdb" }

        [[silences]]
        rule = "disk-*"
        days = ["sat"]
        start = "03:00"
        end = "04:00"
    """)
    )
    out = subprocess.run(
        [sys.executable, "-m", "alertmail", "replay", "--samples", str(DATA / "maintenance.csv"), "--render", "mails"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # sdb fires at 02:40 (mailed), and recovers at 03:10 inside the 03:00-04:00 window: the recovery of
    # an incident mailed before the window closes the thread its recipients have open, so it goes out.
    assert lines[0].startswith("480 samples over 3h59m, 1 rules, 2 alert events, 2 mails")
    assert any("02:40:00 CET" in line and "firing" in line and "notified" in line for line in lines)
    assert any("03:10:00 CET" in line and "resolved" in line and "notified" in line for line in lines)
    assert any(line.startswith("mail   1  2026-11-28 02:40:00 CET  to ops@test.example") for line in lines)
    assert any(line.startswith("mail   2  2026-11-28 03:10:00 CET  to ops@test.example") for line in lines)
    assert sorted(p.name for p in (tmp_path / "mails").iterdir()) == [
        "001-firing.eml",
        "001-firing.html",
        "002-resolved.eml",
        "002-resolved.html",
    ]
    html = (tmp_path / "mails" / "001-firing.html").read_text()
    assert "cid:" not in html and "<html" in html.lower()
    assert "data:image/png;base64," in html  # the chart, inlined
    as_json = subprocess.run(
        [sys.executable, "-m", "alertmail", "replay", "--samples", str(DATA / "maintenance.csv"), "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(as_json.stdout)
    assert report["samples"] == 480 and [m["at"] for m in report["mails"]] == [
        "2026-11-28T01:40:00+00:00",
        "2026-11-28T02:10:00+00:00",
    ]
    assert [(e["kind"], e["fate"], e["t"]) for e in report["timeline"] if "kind" in e and "rule" in e][:2] == [
        ("firing", "notified", "2026-11-28T01:40:00+00:00"),
        ("resolved", "notified", "2026-11-28T02:10:00+00:00"),
    ]
    eml = email.message_from_bytes((tmp_path / "mails" / "001-firing.eml").read_bytes(), policy=email.policy.default)
    assert "disk-busy" in eml["Subject"]


# -- recording ------------------------------------------------------------------------------


def test_record_runs_each_probe_at_its_interval_and_writes_replayable_samples(tmp_path):
    from alertmail.model import Probe
    from alertmail.probes.samples import record

    calls = {"fast": 0, "slow": 0}

    def collect(name: str):
        def run():
            calls[name] += 1
            return [Sample(f"test.{name}", float(calls[name]), {"probe": name})]

        return run

    probes = {"fast": Probe("fast", collect("fast")), "slow": Probe("slow", collect("slow"))}
    writer = SampleWriter(tmp_path / "rec.csv")
    count = asyncio.run(record(probes, {"fast": 0.1, "slow": 10.0}, {"fast": 1.0, "slow": 1.0}, writer, 0.45))
    writer.close()
    samples = read_samples(tmp_path / "rec.csv")
    assert count == len(samples) == calls["fast"] + calls["slow"]
    assert calls["slow"] == 1 and calls["fast"] >= 3
    fast = [s.value for s in samples if s.metric == "test.fast"]
    assert fast == [float(i) for i in range(1, calls["fast"] + 1)]


def test_probe_record_command_writes_the_bundled_probes_samples(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "alertmail", "probe", "--record", "rec.csv", "--for", "1s"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    samples = read_samples(tmp_path / "rec.csv")
    assert {"memory.used_percent", "load.1"} <= {s.metric for s in samples}
    assert "samples written to rec.csv" in out.stderr


def test_probe_record_shows_progress_and_its_hint_keeps_the_config_it_was_given(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "config.toml"
    config.write_text('[agent]\nstate_dir = "var"\n[mail]\nroute = ["pickup"]\n[probes.load]\ninterval = "1s"\n')
    out = tmp_path / "rec.csv"
    done = subprocess.run(
        [sys.executable, "-m", "alertmail", "probe", "-c", str(config), "--record", str(out), "--for", "3s"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    shown = [int(line.split()[1].rstrip("%")) for line in done.stderr.splitlines() if line.startswith("recording:")]
    assert shown[0] == 0 and len(shown) >= 2 and shown == sorted(set(shown)), done.stderr
    assert "samples written to" in done.stderr
    assert f"alertmail replay -c {config} --samples {out}" in done.stderr


def test_replay_render_uses_the_configured_templates_folder(tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "alert.txt.j2").write_text("ours: {{ alerts[0].rule }} {{ alerts[0].state }}\n")
    (templates / "alert.html.j2").write_text(
        '{% extends "builtin/alert.html.j2" %}{% block footer %}<tr><td>our footer</td></tr>{% endblock %}'
    )
    (tmp_path / "config.toml").write_text(
        '[agent]\nhostname = "web01"\n[mail]\nto = ["ops@test.example"]\ntemplates = "templates"\n'
        '[[rules]]\nname = "disk-busy"\nmetric = "disk.busy_percent"\nabove = 90\nlabels = { device = "sdb" }\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "alertmail", "replay", "--samples", str(DATA / "maintenance.csv"), "--render", "mails"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    eml = email.message_from_bytes((tmp_path / "mails" / "001-firing.eml").read_bytes(), policy=email.policy.default)
    assert eml.get_body(("plain",)).get_content().splitlines() == ["ours: disk-busy FIRING"]
    html = (tmp_path / "mails" / "001-firing.html").read_text()
    assert "our footer" in html and "You get this mail because" not in html
    assert "data:image/png;base64," in html  # the built-in part of it still has its chart


def test_probe_record_says_it_started_before_a_slow_first_run_ends(tmp_path):
    """The first run of the probes takes more than a tenth of the recording: the 0% line still comes, first."""
    import subprocess
    import sys

    plugins = tmp_path / "plugins.d"
    plugins.mkdir()
    (plugins / "slow.py").write_text(
        "import time\n"
        "from alertmail import Sample, hookimpl\n\n"
        "class Slow:\n"
        '    name = "slow"\n'
        "    interval = 1.0\n"
        "    metrics = ()\n\n"
        "    def collect(self):\n"
        "        time.sleep(1.5)\n"
        '        yield Sample("test.slow", 1.0, {})\n\n'
        "@hookimpl\n"
        "def register_probes(register):\n"
        "    register(Slow())\n"
    )
    config = tmp_path / "config.toml"
    config.write_text(
        '[agent]\nstate_dir = "var"\nplugin_dirs = ["plugins.d"]\n[mail]\nroute = ["pickup"]\n'
        '[probes.slow]\ninterval = "1s"\ntimeout = "5s"\n'
    )
    out = tmp_path / "rec.csv"
    done = subprocess.run(
        [sys.executable, "-m", "alertmail", "probe", "-c", str(config), "--record", str(out), "--for", "3s"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    shown = [line for line in done.stderr.splitlines() if line.startswith("recording:")]
    assert shown and shown[0].startswith("recording:   0%"), done.stderr


def test_replay_without_a_config_groups_mails_as_an_agent_with_the_default_notify_settings(tmp_path):
    import datetime as dt

    rules = tmp_path / "try.toml"
    rules.write_text('[[rules]]\nname = "cpu-high"\nmetric = "cpu.percent"\nabove = 90\nclear = 80\n')
    out = subprocess.run(
        [sys.executable, "-m", "alertmail", "replay", "--rules", str(rules), "--samples", str(DATA / "flapping.csv"), "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    first, second = (dt.datetime.fromisoformat(m["at"]).timestamp() for m in json.loads(out.stdout)["mails"][:2])
    crossing = read_samples(DATA / "flapping.csv")[11].timestamp
    # As [notify] group_wait's default has it: the first crossing at once, what follows 30 s later in one mail.
    assert (first, second) == (crossing, crossing + 30)
