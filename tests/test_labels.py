"""Labels are bytes from the outside world: a name that is not UTF-8, or carries CR/LF, costs no mail and no scrape."""

from __future__ import annotations

import asyncio
import json
import time
from collections import namedtuple
from email.message import EmailMessage

import pytest

from alertmail.config.core import MailSettings
from alertmail.exporter.exposition import Family, openmetrics_format, text_format
from alertmail.model import Sample, label_text
from alertmail.notify.notifier import RENDER_RETRY, Notifier, NotifySettings
from alertmail.replay import MailCollector
from alertmail.rules.model import AlertEvent, Rule
from tests.fleet_peers import HOST, Prometheus
from tests.peers import free_port
from tests.probe_agent import PLUGIN_AGENT, agent_running, write_config
from tests.test_agent_e2e import kinds, pickup_mails, wait_for

NOT_UTF8 = b"/mnt/\xff".decode("utf-8", "surrogateescape")  # how Python names a mount point with byte 0xff
RULE = Rule(name="disk-full", metric="disk.used_percent", above=90, to=("ops@test.example",))
T0 = 1_800_000_000.0


def test_label_names_and_values_become_text_with_what_cannot_be_shown_escaped():
    sample = Sample("disk.used_percent", 1, {"mount": NOT_UTF8, b"dev\xfe": b"/dev/sd\xff", "name": "a\r\nBcc: x\x00\u202e"})
    assert sample.label_dict() == {"mount": "/mnt/\\xff", "dev\\xfe": "/dev/sd\\xff", "name": "a\\r\\nBcc: x\\x00\\u202e"}
    assert label_text("/srv/café") == "/srv/café"  # valid UTF-8 stays as it is
    assert label_text("\ud800") == "\\ud800"
    for key, value in sample.labels:
        (key + value).encode("utf-8")  # encodable everywhere: mail, JSON, /metrics


def event(mount: str, kind: str = "firing") -> AlertEvent:
    # Built by hand, not from a Sample: as an alert restored from the state of an earlier version is.
    return AlertEvent(kind, RULE, (("mount", mount),), 95.0, 90.0, ">", "warning", T0, T0, f"disk-full-{mount!r}")


def notifier_for(state_dir, collector: MailCollector, hook=None) -> Notifier:
    return Notifier(
        notify=NotifySettings(group_wait=0.0, max_mails_per_hour=0),
        mail=MailSettings(sender="alertmail@test.example", route=["pickup"]),
        hostname="web01",
        timezone="UTC",
        queue=collector,
        state_dir=state_dir,
        hook=hook,
        render_options={"charts": "off"},
    )


def bodies(collector: MailCollector) -> str:
    return "\n".join(m.message.get_body(("plain",)).get_content().replace("\r\n", "\n") for m in collector.mails)


def test_an_alert_with_a_raw_undecodable_label_is_mailed_with_the_others(tmp_path):
    collector = MailCollector()
    asyncio.run(notifier_for(tmp_path, collector).notify([event("/"), event(NOT_UTF8)], T0))
    assert len(collector.mails) == 1
    text = bodies(collector)
    assert "mount=/\n" in text and "mount=/mnt/\\xff" in text


class BrokenForOneMount:
    """A render_alert plugin whose mail about one alert cannot be written out (a body that is not text)."""

    def render_alert(self, alert, context):
        msg = EmailMessage()
        msg["Subject"] = "custom"
        msg.set_content("custom body for " + ", ".join(dict(e.labels)["mount"] for e in alert))
        if any(dict(e.labels)["mount"] == "/bad" for e in alert):
            msg.set_payload(["not a part"])
        return msg

    def alert_event(self, event):
        pass


def test_one_alert_whose_mail_cannot_be_rendered_costs_the_others_nothing_and_goes_out_plain(tmp_path):
    collector = MailCollector()
    notifier = notifier_for(tmp_path, collector, BrokenForOneMount())
    asyncio.run(notifier.notify([event("/"), event("/bad"), event("/data")], T0))
    subjects = sorted(str(m.message["Subject"]) for m in collector.mails)
    assert subjects == ["FIRING: disk-full on web01", "custom", "custom"], subjects
    text = bodies(collector)
    assert "custom body for /\n" in text and "custom body for /data\n" in text
    assert "mount=/bad" in text  # the plain mail still names it
    assert notifier.settled and len(notifier.incidents) == 3
    fates = [json.loads(line).get("fate") for line in (tmp_path / "logs" / "alerts.jsonl").read_text().splitlines()]
    assert fates.count("render-failed") == 1


def test_an_alert_no_mail_can_be_made_for_is_not_marked_notified_and_is_tried_again(tmp_path, monkeypatch):
    import alertmail.render.mail

    def fails(events, ctx):
        raise RuntimeError("cannot render")

    monkeypatch.setattr(alertmail.render.mail, "plain_alert", fails)
    collector = MailCollector()
    notifier = notifier_for(tmp_path, collector, BrokenForOneMount())
    asyncio.run(notifier.notify([event("/"), event("/bad")], T0))
    assert [str(m.message["Subject"]) for m in collector.mails] == ["custom"]
    assert not notifier.settled, "the agent must not save the rule state as if /bad were mailed"
    assert [i.rule for i in notifier.incidents.values()] == ["disk-full"] and len(notifier.incidents) == 1
    asyncio.run(notifier.notify([event("/new")], T0 + 1))
    assert len(collector.mails) == 2, "a new alert is not held back by one waiting to be tried again"
    monkeypatch.undo()
    asyncio.run(notifier.flush(T0 + RENDER_RETRY))
    assert len(collector.mails) == 3 and "mount=/bad" in bodies(collector)
    assert notifier.settled and len(notifier.incidents) == 3


def test_a_family_that_cannot_be_written_is_left_out_and_the_scrape_goes_on():
    bad = Family("alertmail_bad", "gauge", "broken")
    bad.add({"mount": 7}, 1.0)  # type: ignore[dict-item]  not text: what a careless plugin may hand over
    good = Family("alertmail_good", "gauge", "fine \udcff help")
    good.add({"mount": "/\udcff"}, 2.0)
    for encode in (text_format, openmetrics_format):
        out = encode([bad, good]).decode("utf-8")
        assert "alertmail_bad" not in out
        assert 'alertmail_good{mount="/\\\\xff"} 2.0' in out


def test_disk_exclusions_match_a_mount_point_as_alerts_show_it():
    from plugins.probes.system import real_partitions

    Part = namedtuple("Part", "device mountpoint fstype")
    parts = [Part("/dev/sda1", "/", "ext4"), Part("/dev/sdb1", NOT_UTF8, "ext4")]
    kept = real_partitions(parts, exclude_fstypes=(), exclude_mounts=["/mnt/\\xff"])
    assert [p.mountpoint for p in kept] == ["/"]


PLUGIN = """
from alertmail import MetricInfo, Sample, hookimpl


class Disks:
    name = "disks"
    interval = 0.5
    metrics = (MetricInfo("test.level", "percent", "a level the test sets", ("mount",)),)

    def collect(self):
        yield Sample("test.level", 95, {"mount": "/"})
        yield Sample("test.level", 96, {"mount": b"/mnt/\\xff".decode("utf-8", "surrogateescape")})
        yield Sample("test.level", 97, {"mount": "/x\\r\\nBcc: evil@example.com"})


@hookimpl
def register_probes(register):
    register(Disks())
"""


@pytest.mark.peers
def test_a_mount_point_that_is_not_utf8_is_mailed_scraped_and_takes_no_other_alert_down(tmp_path):
    port = free_port()
    (tmp_path / "plugins.d").mkdir()
    (tmp_path / "plugins.d" / "disks.py").write_text(PLUGIN)
    config = write_config(
        tmp_path,
        f"""
        [exporter]
        listen = "{HOST}:{port}"

        [[rules]]
        name = "level-high"
        metric = "test.level"
        above = 50
        """,
        agent=PLUGIN_AGENT,
        notify="max_mails_per_hour = 0",
    )
    with agent_running(config) as agent:
        with Prometheus(tmp_path / "prometheus", [f"{HOST}:{port}"]) as prometheus:
            up = wait_for(lambda: prometheus.query('up{job="alertmail"} == 1'), timeout=30, what="a successful scrape")
            assert up
            series = wait_for(
                lambda: prometheus.query('alertmail_test_level_percent{mount="/mnt/\\\\xff"}'), timeout=30, what="the series"
            )
            assert float(series[0]["value"][1]) == 96
            firing = wait_for(
                lambda: len(r := prometheus.query('alertmail_alert{state="firing"}')) == 3 and r, timeout=30, what="alerts"
            )
            assert {r["metric"]["mount"] for r in firing} == {"/", "/mnt/\\xff", "/x\\r\\nBcc: evil@example.com"}
        mails = wait_for(lambda: pickup_mails(tmp_path), timeout=30, what="the alert mail")
        time.sleep(1)
        mails = pickup_mails(tmp_path)
    log = agent.log
    assert agent.proc.returncode == 0, log
    assert "Traceback" not in log, log
    assert kinds(mails) == ["firing"]
    text = mails[0].get_body(("plain",)).get_content().replace("\r\n", "\n")
    for mount in ("mount=/\n", "mount=/mnt/\\xff", "mount=/x\\r\\nBcc: evil@example.com"):
        assert mount in text, text
    assert mails[0]["Bcc"] is None


def test_odd_labels_are_recorded_and_replayed_as_the_agent_showed_them(tmp_path):
    from alertmail.probes.samples import SampleWriter, read_samples

    samples = [Sample("disk.used_percent", 93.5, {"mount": NOT_UTF8, "note": "a;b=c%\r\n"}, T0)]
    writer = SampleWriter(tmp_path / "rec.csv")
    writer.write(samples)
    writer.close()
    assert read_samples(tmp_path / "rec.csv") == samples
    assert read_samples(tmp_path / "rec.csv")[0].label_dict() == {"mount": "/mnt/\\xff", "note": "a;b=c%\\r\\n"}


def test_a_process_that_names_itself_with_odd_bytes_is_shown_escaped_in_the_mail(tmp_path):
    import subprocess
    import sys

    from alertmail.render.context import top_processes

    code = "import ctypes, time; ctypes.CDLL(None).prctl(15, b'evil\\xff\\nBcc: x', 0, 0, 0); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        rows = wait_for(
            lambda: [r for r in top_processes(limit=100_000, interval=0.05)["memory"] if r.pid == child.pid and "evil" in r.name],
            timeout=10,
            what="the renamed process",
        )
    finally:
        child.kill()
        child.wait()
    assert rows[0].name == "evil\\xff\\nBcc: x"
    cpu = Rule(name="cpu-high", metric="cpu.percent", above=90, to=("ops@test.example",))
    collector = MailCollector()
    notifier = notifier_for(tmp_path, collector)
    notifier.context_for = lambda events: {"top_processes": {"cpu": rows, "memory": rows}}
    firing = AlertEvent("firing", cpu, (), 95.0, 90.0, ">", "warning", T0, T0, "cpu-high")
    asyncio.run(notifier.notify([firing], T0))
    (mail,) = collector.mails
    assert str(mail.message["Subject"]) != "FIRING: cpu-high on web01", "the full mail, not the plain one"
    assert "evil\\xff\\nBcc: x" in bodies(collector) and mail.message["Bcc"] is None


def test_a_disk_alert_on_a_mount_point_that_is_not_utf8_still_gets_its_size_in_the_mail(tmp_path):
    import os

    from alertmail.render.context import collect_context

    folder = os.fsdecode(bytes(tmp_path) + b"/disk-\xff")
    os.mkdir(folder)
    sample = Sample("disk.used_percent", 95, {"mount": folder})
    assert "\\xff" in sample.label_dict()["mount"]
    firing = AlertEvent("firing", RULE, sample.labels, 95.0, 90.0, ">", "warning", T0, T0, "disk-odd")
    context = collect_context([firing])
    assert list(context["disk"]) == [sample.label_dict()["mount"]]
