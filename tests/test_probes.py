"""The bundled probes, read against this machine's real kernel counters through psutil."""

from __future__ import annotations

import glob
import math
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import namedtuple

import psutil
import pytest

from alertmail import Sample
from alertmail.plugins.probes import system
from alertmail.plugins.probes.process import ProcessProbe, ProcessSettings, parse_watch
from alertmail.probes.runner import configure_probe

Part = namedtuple("Part", "device mountpoint fstype opts")


def by_metric(samples: list[Sample], metric: str, **labels: str) -> list[Sample]:
    return [s for s in samples if s.metric == metric and all(s.label_dict().get(k) == v for k, v in labels.items())]


def burn_cpu(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def configured(probe, **options):
    """``probe`` configured as the agent does it, with ``options`` as its settings."""
    settings = probe.options(**options) if hasattr(probe, "options") else options
    assert configure_probe(probe.name, probe, settings) == []
    time.sleep(system.MIN_SPAN + 0.1)
    return probe


@pytest.mark.parametrize("cls", system.PROBES, ids=lambda c: c.name)
def test_bundled_probe_emits_every_declared_metric_well_formed(cls):
    # Only the loopback interface is sure to exist (a container, a network namespace); a host
    # without block devices has no disk I/O to report.
    if cls is system.DiskIOProbe and not psutil.disk_io_counters(perdisk=True):
        pytest.skip("this host has no block device")
    probe = configured(cls(), **({"loopback": True} if cls is system.NetworkProbe else {}))
    samples = probe.collect()
    declared = {m.name: m for m in probe.metrics}
    assert samples, f"{probe.name} emitted nothing"
    assert {s.metric for s in samples} == set(declared), "every declared metric, and only those"
    for s in samples:
        assert isinstance(s, Sample)
        assert math.isfinite(s.value) and s.value >= 0, s
        assert set(s.label_dict()) == set(declared[s.metric].labels), s
        assert all(isinstance(v, str) and v for _, v in s.labels), s
        if declared[s.metric].unit == "percent":
            assert 0.0 <= s.value <= 100.0, s


def test_cpu_first_collect_after_configure_reports_real_busy_time():
    probe = system.CpuProbe()
    probe.configure(system.CpuSettings())
    burn_cpu(0.4)  # one of the cores is fully busy: the machine cannot be at 0 %
    [total] = by_metric(probe.collect(), "cpu.percent")
    assert total.value > 10.0
    cores = by_metric(probe.collect() or [], "cpu.core_percent")
    assert cores == [], "a run right after the last one keeps its baseline and says nothing"


def test_cpu_probe_without_configure_primes_instead_of_reporting_zero():
    probe = system.CpuProbe()
    assert probe.collect() == []
    burn_cpu(0.3)
    assert by_metric(probe.collect(), "cpu.percent")[0].value > 10.0


def test_cpu_per_core_can_be_turned_off():
    probe = configured(system.CpuProbe(), per_core=False)
    samples = probe.collect()
    assert by_metric(samples, "cpu.percent") and not by_metric(samples, "cpu.core_percent")


@pytest.mark.parametrize("cls", [system.DiskIOProbe, system.NetworkProbe, system.SwapProbe], ids=lambda c: c.name)
def test_rate_probe_first_run_emits_no_rate(cls):
    probe = cls()
    rates = {m.name for m in cls.metrics if m.kind == "rate"}
    assert not [s for s in probe.collect() if s.metric in rates]


def loopback_interface() -> str:
    """The interface holding 127.0.0.1 on this host ("lo" on Linux, "lo0" on the BSDs)."""
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addresses):
            return name
    pytest.skip("no interface holds 127.0.0.1")


def test_network_rate_matches_real_loopback_traffic():
    probe = system.NetworkProbe()
    probe.configure(system.NetworkSettings(loopback=True))
    payload = b"x" * (4 << 20)
    server = socket.create_server(("127.0.0.1", 0))
    received = 0

    def drain():
        nonlocal received
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(1 << 16):
                received += len(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    start = time.monotonic()
    with socket.create_connection(server.getsockname(), timeout=5) as client:
        client.sendall(payload)
    reader.join(5)
    server.close()
    time.sleep(max(0.0, system.MIN_SPAN + 0.05 - (time.monotonic() - start)))
    [lo] = by_metric(probe.collect(), "net.recv_bytes_per_s", interface=loopback_interface())
    assert received == len(payload)
    # At least the payload over the span since configure(); a bogus spike would be far above.
    span = time.monotonic() - start
    assert len(payload) / (span + 1.0) < lo.value < 100 * len(payload) / system.MIN_SPAN


def test_network_skips_loopback_by_default():
    samples = configured(system.NetworkProbe()).collect()
    assert not by_metric(samples, "net.recv_bytes_per_s", interface=loopback_interface())


def test_counter_rates_rebaseline_on_reset_and_wait_for_a_usable_span():
    rates = system.CounterRates()
    assert rates.update({"a": 100, "b": 50}, now=10.0) is None
    assert rates.update({"a": 200, "b": 60}, now=10.05) is None, "too short a span"
    assert rates.update({"a": 300, "b": 10}, now=12.0) == {"a": 100.0}, "b went down: no negative rate"
    assert rates.update({"a": 400, "b": 30}, now=14.0) == {"a": 50.0, "b": 10.0}


def proc_mounts() -> dict[str, set[str]]:
    """Mount point -> the filesystem types mounted there, from the kernel's own table.

    Whatever this host has: bind mounts, mounts stacked on one point, names with spaces
    (written \\040 in /proc/self/mounts).
    """
    mounts: dict[str, set[str]] = {}
    with open("/proc/self/mounts") as fh:
        for line in fh:
            _, point, fstype, *_ = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point)
            mounts.setdefault(point, set()).add(fstype)
    return mounts


def test_disk_reports_only_real_mounts_listed_in_proc_mounts():
    mounts = proc_mounts()
    samples = configured(system.DiskProbe()).collect()
    reported = {s.label_dict()["mount"]: s.label_dict()["fstype"] for s in samples}
    assert reported, "every host has at least the filesystem it runs from"
    for mount, fstype in reported.items():
        assert fstype in mounts[mount] and fstype not in system.PSEUDO_FSTYPES, mount


def test_real_partitions_drops_pseudo_snap_and_excluded_mounts():
    parts = [
        Part("/dev/vda1", "/", "ext4", "rw"),
        Part("tmpfs", "/run", "tmpfs", "rw"),
        Part("/dev/loop3", "/snap/core/123", "squashfs", "ro"),
        Part("/dev/loop4", "/mnt/image", "ext4", "ro"),
        Part("overlay", "/var/lib/docker/overlay2/x/merged", "overlay", "rw"),
        Part("/dev/vda2", "/boot/efi", "vfat", "rw"),
        Part("/dev/vda1", "/", "ext4", "rw"),
        Part("/dev/vdb", "/data", "xfs", "rw"),
    ]
    kept = system.real_partitions(parts, exclude_fstypes=system.PSEUDO_FSTYPES, exclude_mounts=["/boot/*"])
    assert [p.mountpoint for p in kept] == ["/", "/data"]


def test_diskio_reports_whole_disks_not_loop_devices():
    samples = configured(system.DiskIOProbe()).collect()
    disks = {s.label_dict()["disk"] for s in samples}
    assert not {d for d in disks if d.startswith(("loop", "ram", "zram"))}
    assert disks <= set(psutil.disk_io_counters(perdisk=True))


def test_load_per_core_is_load_divided_by_logical_cpus():
    samples = system.LoadProbe().collect()
    cores = psutil.cpu_count(logical=True)
    for n in (1, 5, 15):
        [load] = by_metric(samples, f"load.{n}")
        [per_core] = by_metric(samples, f"load.{n}_per_core")
        assert per_core.value == pytest.approx(load.value / cores)


def test_processes_counts_a_real_zombie():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 5
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        samples = system.ProcessesProbe().collect()
        [zombies] = by_metric(samples, "processes.by_status", status="zombie")
        [total] = by_metric(samples, "processes.total")
        assert zombies.value >= 1
        assert total.value >= len(psutil.pids()) - 5
        assert by_metric(samples, "processes.by_status", status="stopped"), "0 is reported too"
    finally:
        child.wait()


# ---------------------------------------------------------------------------
# The per-process probe


@pytest.fixture
def marker():
    return f"alertmail-test-{uuid.uuid4().hex[:12]}"


def start(marker: str, code: str = "import time; time.sleep(30)") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, marker])


def test_process_count_follows_a_real_child_from_one_to_zero(marker):
    probe = ProcessProbe()
    probe.configure(ProcessSettings(watch=[{"name": "sleeper", "cmdline": f"*{marker}*"}]))
    assert by_metric(probe.collect(), "process.count", name="sleeper")[0].value == 0
    child = start(marker)
    try:
        time.sleep(0.3)
        samples = probe.collect()
        assert by_metric(samples, "process.count", name="sleeper")[0].value == 1
        assert by_metric(samples, "process.rss_bytes", name="sleeper")[0].value > 1 << 20
    finally:
        child.kill()
        child.wait()
    time.sleep(system.MIN_SPAN)
    samples = probe.collect()
    assert by_metric(samples, "process.count", name="sleeper")[0].value == 0
    assert by_metric(samples, "process.rss_bytes", name="sleeper")[0].value == 0
    assert by_metric(samples, "process.cpu_percent", name="sleeper")[0].value == 0


def test_process_cpu_percent_is_real_on_the_first_run(marker):
    child = start(marker, "while True: pass")
    try:
        time.sleep(0.2)
        probe = ProcessProbe()
        probe.configure(ProcessSettings(watch=[{"name": "spinner", "cmdline": f"*{marker}*"}]))
        time.sleep(0.5)
        [cpu] = by_metric(probe.collect(), "process.cpu_percent", name="spinner")
        # It spun the whole time; on a crowded machine it may get only a slice of a core.
        assert cpu.value > 2.0
    finally:
        child.kill()
        child.wait()


def test_process_labels_carry_the_configured_name_not_the_command_line(marker):
    child = start(marker)
    try:
        time.sleep(0.2)
        probe = configured(ProcessProbe(), watch=[{"name": "py", "match": "python*", "cmdline": f"*{marker}*"}])
        samples = probe.collect()
        assert {s.labels for s in samples} == {(("name", "py"),)}
        assert by_metric(samples, "process.count")[0].value == 1
    finally:
        child.kill()
        child.wait()


def test_process_user_filter_excludes_other_users(marker):
    child = start(marker)
    try:
        time.sleep(0.2)
        me = psutil.Process().username()
        probe = configured(
            ProcessProbe(),
            watch=[
                {"name": "mine", "cmdline": f"*{marker}*", "user": me},
                {"name": "theirs", "cmdline": f"*{marker}*", "user": me + "-nobody"},
            ],
        )
        samples = probe.collect()
        assert by_metric(samples, "process.count", name="mine")[0].value == 1
        assert by_metric(samples, "process.count", name="theirs")[0].value == 0
    finally:
        child.kill()
        child.wait()


def test_watch_errors_name_each_entry_and_key():
    with pytest.raises(ValueError) as err:
        parse_watch(
            [
                {"name": "a", "match": "x"},
                {"name": "a", "cmdline": "y"},
                {"nam": "b", "match": "z"},
                {"name": "c"},
                "nginx",
            ]
        )
    lines = str(err.value).splitlines()
    assert "watch[1].name: 'a' is used twice; each watch needs its own name" in lines
    assert "watch[2].nam: unknown key; did you mean 'name'?" in lines
    assert any(line.startswith("watch[3]: needs match =") for line in lines)
    assert any(line.startswith("watch[4]: expected a table") for line in lines)


def test_configure_problems_come_back_with_the_probe_key_path():
    problems = configure_probe("process", ProcessProbe(), ProcessSettings(watch=[{"name": "x", "match": 3}]))
    assert problems == ["probes.process.watch[0].match: expected a non-empty string, got 3"]
    assert configure_probe("process", ProcessProbe(), ProcessSettings(watch="nginx"))[0].startswith(
        "probes.process.watch: expected a list"
    )


def test_process_probe_never_counts_the_agent_itself(marker):
    code = (
        "import sys; from alertmail.plugins.probes.process import ProcessProbe, ProcessSettings; p = ProcessProbe(); "
        "p.configure(ProcessSettings(watch=[{'name': 'me', 'cmdline': '*' + sys.argv[1] + '*'}])); "
        "print(int(p.collect()[0].value))"
    )
    out = subprocess.run([sys.executable, "-c", code, marker], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "0"


def test_metric_catalogue_documents_every_bundled_metric_with_its_unit():
    from pathlib import Path

    from alertmail.cli.probe import catalogue
    from alertmail.loader import load_plugins

    doc = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()
    rows = {
        line.split("|")[1].strip().strip("`"): line.split("|")[2].strip() for line in doc.splitlines() if line.startswith("| `")
    }
    for probe, info in catalogue(load_plugins().probes):
        if probe in {p.name for p in system.PROBES} | {"process"}:
            assert rows.get(info.name) == info.unit, f"docs/metrics.md: {info.name} ({info.unit}) missing or stale"


def test_disk_exclusions_can_be_emptied_and_extended():
    probe = system.DiskProbe()
    probe.configure(system.DiskSettings(exclude_fstypes=[]))
    assert probe.settings.exclude_fstypes == [], "an empty list means: exclude no type"
    probe.configure(system.DiskSettings())
    assert probe.settings.exclude_fstypes == list(system.PSEUDO_FSTYPES)

    def mounts(**options) -> set[str]:
        probe.configure(system.DiskSettings(**options))  # the disk probe keeps no counters: no span to wait for
        return {s.label_dict()["mount"] for s in probe.collect()}

    everything = mounts()
    assert everything, "every host has at least the filesystem it runs from"
    # Whatever this host has mounted (a second disk, bind mounts): each one, and all of them, can be left out.
    for mount in everything:
        assert mount not in mounts(exclude_mounts=[glob.escape(mount)])
    assert not mounts(exclude_mounts=["*"])


def test_the_probe_tests_hold_on_a_host_with_more_mounts_and_only_loopback(tmp_path):
    """This file and test_probing.py again, in namespaces of their own: bind mounts (one with a
    space and one with glob characters in its name) on top of this host's, and a network with
    nothing but loopback. No test here may depend on what this host happens to have."""
    import os
    import shutil
    from pathlib import Path

    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs root, unshare(1) and ip(8) for namespaces of its own")
    source = tmp_path / "source"
    targets = [tmp_path / "bound", tmp_path / "with space", tmp_path / "[odd]*"]
    for folder in (source, *targets):
        folder.mkdir()
    binds = " && ".join(f"mount --bind {shlex.quote(str(source))} {shlex.quote(str(t))}" for t in targets)
    here = Path(__file__).resolve().parent
    inner = (
        f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider {here / 'test_probes.py'} {here / 'test_probing.py'}"
        " -k 'not more_mounts'"
    )
    done = subprocess.run(
        ["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", f"ip link set lo up && {binds} && {inner}"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=here.parent,
    )
    if done.returncode != 0 and "passed" not in done.stdout and "failed" not in done.stdout:
        pytest.skip(f"no namespaces here: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stdout[-3000:]
