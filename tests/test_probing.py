"""Running probes in isolation, and the ``alertmail probe`` command end to end."""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from alertmail import Probe, Sample
from alertmail.cli import cli
from alertmail.cli.probe import catalogue, format_value
from alertmail.loader import load_plugins
from alertmail.probes.runner import ProbeRun, run_all_once, run_probe


def good_probe(name: str = "good") -> Probe:
    return Probe(name, lambda: [Sample("good.value", 1.0)])


def raising() -> list[Sample]:
    raise RuntimeError("sensor unplugged")


def test_raising_probe_is_reported_by_name_and_others_still_run():
    runs = asyncio.run(run_all_once({"bad": Probe("bad", raising), "good": good_probe()}, timeout=2))
    bad, good = runs
    assert bad.error == "probe bad: RuntimeError: sensor unplugged" and not bad.timed_out
    assert good.ok and [s.metric for s in good.samples] == ["good.value"]


def test_slow_sync_probe_times_out_without_holding_back_the_others():
    release = threading.Event()

    def slow() -> list[Sample]:
        release.wait(10)
        return []

    async def main() -> tuple[list[ProbeRun], float]:
        start = time.monotonic()
        runs = await run_all_once({"slow": Probe("slow", slow), "good": good_probe()}, timeout=0.2)
        return runs, time.monotonic() - start

    try:
        (slow_run, good), elapsed = asyncio.run(main())
    finally:
        release.set()
    assert slow_run.timed_out and slow_run.error == "probe slow: timed out after 0.2s"
    assert good.ok and good.samples
    assert elapsed < 5, "the pass ended at the timeout, not when the slow probe let go"


def test_slow_async_probe_is_cancelled_at_its_timeout():
    cancelled = []

    class Sleepy:
        name = "sleepy"

        async def collect(self):
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            return []

    run = asyncio.run(run_probe(Sleepy(), 0.1))
    assert run.timed_out and run.name == "sleepy" and cancelled == [True]


def test_a_probe_still_stuck_from_its_last_run_is_not_started_again():
    release = threading.Event()
    calls = []

    def stuck() -> list[Sample]:
        calls.append(1)
        release.wait(10)
        return []

    probe = Probe("stuck", stuck)

    async def main() -> tuple[ProbeRun, ProbeRun]:
        first = await run_probe(probe, 0.1)
        second = await run_probe(probe, 0.1)
        release.set()
        return first, second

    try:
        first, second = asyncio.run(main())
    finally:
        release.set()
    assert first.timed_out and second.timed_out
    assert "previous run is still busy" in second.error
    assert len(calls) == 1


def test_sync_probe_runs_off_the_event_loop():
    def slow() -> list[Sample]:
        time.sleep(0.3)
        return [Sample("slow.value", 1)]

    async def main() -> int:
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        run = await run_probe(Probe("slow", slow), 2)
        task.cancel()
        assert run.ok
        return ticks

    assert asyncio.run(main()) >= 5


@pytest.mark.parametrize(
    "result, message",
    [
        ([Sample("x", 1), "x=1"], "item 1 is str, not a Sample"),
        (None, "collect() returned None"),
        ("x 1", "collect() returned str"),
        ({"x": 1}, "collect() returned dict"),
        (42, "collect() returned int"),
    ],
)
def test_invalid_results_become_an_error_naming_the_probe(result, message):
    run = asyncio.run(run_probe(Probe("odd", lambda: result), 2))
    assert run.error.startswith("probe odd: ") and message in run.error
    assert all(isinstance(s, Sample) for s in run.samples)


def test_valid_samples_survive_next_to_invalid_ones():
    run = asyncio.run(run_probe(Probe("mixed", lambda: [Sample("a", 1), "b=2"]), 2))
    assert [s.metric for s in run.samples] == ["a"] and "item 1 is str" in run.error


def test_nan_and_infinities_are_samples_not_probe_errors():
    # docs/rules.md "NaN and infinities": NaN is "no reading", +-Inf a reading; neither is bad data.
    values = [float("nan"), float("inf"), float("-inf")]
    run = asyncio.run(run_probe(Probe("odd", lambda: [Sample(f"m{i}", v) for i, v in enumerate(values)]), 2))
    assert run.ok, run.error
    assert [s.metric for s in run.samples] == ["m0", "m1", "m2"]


def test_generator_async_and_async_generator_probes_are_collected():
    def gen():
        yield Sample("g", 1)

    async def coro():
        return [Sample("c", 2)]

    async def agen():
        yield Sample("a", 3)

    probes = {"gen": Probe("gen", gen), "coro": Probe("coro", coro), "agen": Probe("agen", agen)}
    runs = asyncio.run(run_all_once(probes, 2))
    assert [[s.metric for s in r.samples] for r in runs] == [["g"], ["c"], ["a"]]
    assert all(r.ok for r in runs)


def test_format_value_speaks_in_units_people_read():
    assert format_value(21.94, "percent") == "21.9 %"
    assert format_value(3.5 * 1024**3, "bytes") == "3.5 GiB"
    assert format_value(512, "bytes/s") == "512 B/s"
    assert format_value(68, "count") == "68"
    assert format_value(0.25, "load") == "0.25"
    assert format_value(12.5, "packets/s") == "12.50 packets/s"


# ---------------------------------------------------------------------------
# The command


def write_config(tmp_path, extra: str = "") -> str:
    (tmp_path / "plugins.d").mkdir(exist_ok=True)
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent("""
        [agent]
        state_dir = "var"
        plugin_dirs = ["plugins.d"]

        [mail]
        to = ["ops@example.com"]

        [probes.process]
        watch = [{ name = "me", match = "python*" }]

        # loopback: the one interface every host (container, network namespace) has
        [probes.network]
        loopback = true

        [[rules]]
        name = "root-full"
        metric = "disk.used_percent"
        labels = { mount = "/" }
        above = 99.9
    """)
        + textwrap.dedent(extra)
    )
    return str(config)


def bundled_metrics() -> set[str]:
    """The metrics of the bundled probes that run without a table of their own (not ``configured_only``)."""
    plugins = load_plugins()
    unconfigured = {n: p for n, p in plugins.probes.items() if not getattr(p, "configured_only", False)}
    return {info.name for _, info in catalogue(unconfigured)}


def test_probe_command_prints_every_bundled_metric_durations_and_rule_states(tmp_path):
    result = CliRunner().invoke(cli, ["probe", "--config", write_config(tmp_path)])
    assert result.exit_code == 0, result.output
    missing = {m for m in bundled_metrics() if m not in result.stdout}
    assert not missing
    assert "values from a second run 0.5s after the first" in result.stdout
    for probe in ("cpu", "memory", "swap", "disk", "diskio", "network", "load", "processes", "process"):
        assert any(line.startswith(probe + " ") and line.endswith(" ms  ok") for line in result.stdout.splitlines()), probe
    assert any(line.startswith("root-full ") and " ok " in line for line in result.stdout.splitlines())


def test_probe_command_json_parses_with_units_and_states(tmp_path):
    result = CliRunner().invoke(cli, ["probe", "--json", "--config", write_config(tmp_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    metrics = {s["metric"] for p in doc["probes"] for s in p["samples"]}
    assert metrics == bundled_metrics()
    cpu = next(p for p in doc["probes"] if p["name"] == "cpu")
    assert cpu["second_run"] and cpu["duration"] > 0 and cpu["error"] is None
    assert {s["unit"] for s in cpu["samples"]} == {"percent"}
    assert doc["rules"][0]["rule"] == "root-full" and doc["rules"][0]["labels"]["mount"] == "/"


def test_probe_list_prints_the_catalogue_without_collecting(tmp_path):
    (tmp_path / "plugins.d").mkdir()
    (tmp_path / "plugins.d" / "never.py").write_text(
        textwrap.dedent("""
        from alertmail import MetricInfo, hookimpl

        class Never:
            name = "never"
            metrics = (MetricInfo("never.value", "count", "must not be collected"),)

            def collect(self):
                raise AssertionError("--list collected")

        @hookimpl
        def register_probes(register):
            register(Never())
    """)
    )
    config = tmp_path / "config.toml"
    config.write_text('[agent]\nplugin_dirs = ["plugins.d"]\n')
    result = CliRunner().invoke(cli, ["probe", "--list", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert all(m in result.stdout for m in bundled_metrics() | {"never.value"})
    listed = json.loads(CliRunner().invoke(cli, ["probe", "--list", "--json", "--config", str(config)]).stdout)
    assert {
        "probe": "never",
        "metric": "never.value",
        "unit": "count",
        "kind": "gauge",
        "labels": [],
        "description": "must not be collected",
    } in listed


def test_probe_command_exits_75_naming_a_failing_plugin_probe(tmp_path):
    config = write_config(tmp_path)
    (tmp_path / "plugins.d" / "broken.py").write_text(
        textwrap.dedent("""
        from alertmail import Probe, hookimpl

        def collect():
            raise OSError("no such sensor")

        @hookimpl
        def register_probes(register):
            register(Probe("broken", collect))
    """)
    )
    result = CliRunner().invoke(cli, ["probe", "--config", config])
    assert result.exit_code == 75
    assert "probe broken: OSError: no such sensor" in result.stdout
    assert "cpu.percent" in result.stdout, "the other probes still report"


def test_probe_command_exits_78_on_a_bad_watch_table(tmp_path):
    config = Path(write_config(tmp_path))
    config.write_text(config.read_text().replace('{ name = "me", match = "python*" }', '{ name = "me" }'))
    result = CliRunner().invoke(cli, ["probe", "--config", str(config)])
    assert result.exit_code == 78
    assert f"{config}: probes.process.watch[0]: needs match =" in result.stderr


def test_probe_command_skips_disabled_probes(tmp_path):
    result = CliRunner().invoke(
        cli, ["probe", "--json", "--config", write_config(tmp_path, "\n[probes.processes]\nenabled = false\n")]
    )
    assert result.exit_code == 0, result.output
    assert "processes" not in {p["name"] for p in json.loads(result.stdout)["probes"]}


def test_a_probe_stuck_for_good_does_not_keep_the_command_from_exiting(tmp_path):
    import subprocess
    import sys

    config = write_config(tmp_path, '\n[probes.stuck]\ntimeout = "0.5s"\n')
    (tmp_path / "plugins.d" / "stuck.py").write_text(
        textwrap.dedent("""
        import time
        from alertmail import Probe, hookimpl

        def collect():
            time.sleep(3600)

        @hookimpl
        def register_probes(register):
            register(Probe("stuck", collect))
    """)
    )
    done = subprocess.run(
        [sys.executable, "-c", "from alertmail.cli import main; main()", "probe", "--config", config],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 75, done.stderr
    assert "probe stuck: timed out after 0.5s" in done.stdout


def test_configure_problems_keep_their_key_paths_under_the_probe_table():
    from alertmail.probes.runner import configure_probe

    class Picky:
        name = "picky"

        def configure(self, options):
            raise ValueError("needs a sensor name\nsensors[1].port: expected a number, got 'x'")

    assert configure_probe("picky", Picky(), {}) == [
        "probes.picky: needs a sensor name",
        "probes.picky.sensors[1].port: expected a number, got 'x'",
    ]


@pytest.mark.skipif(
    "FAKETIME" in os.environ,
    reason="libfaketime shifts the deadline of a timed thread wait, "
    "so the idle timeout never comes under it; nothing here reads the date",
)
def test_idle_worker_thread_ends_and_the_probe_still_runs_later(monkeypatch):
    from alertmail.probes import runner as probing

    monkeypatch.setattr(probing, "WORKER_IDLE", 0.1)
    probe = good_probe("idle")
    assert asyncio.run(run_probe(probe, 2)).ok
    deadline = time.monotonic() + 5
    while probing._Worker.of(probe) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert probing._Worker.of(probe) is None, "the idle worker went away"
    assert [s.metric for s in asyncio.run(run_probe(probe, 2)).samples] == ["good.value"]


def test_a_stuck_probe_runs_again_once_it_comes_back():
    release = threading.Event()

    def sometimes_stuck() -> list[Sample]:
        release.wait(10)
        return [Sample("back", 1)]

    probe = Probe("flaky", sometimes_stuck)
    assert asyncio.run(run_probe(probe, 0.1)).timed_out
    release.set()
    deadline = time.monotonic() + 5
    while True:
        run = asyncio.run(run_probe(probe, 2))
        if run.ok or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [s.metric for s in run.samples] == ["back"]


def test_probe_command_reports_a_crashing_configure_and_runs_the_rest(tmp_path):
    config = write_config(tmp_path)
    (tmp_path / "plugins.d" / "fragile.py").write_text(
        textwrap.dedent("""
        from alertmail import hookimpl

        class Fragile:
            name = "fragile"

            def configure(self, options):
                raise KeyError("sensor")

            def collect(self):
                return []

        @hookimpl
        def register_probes(register):
            register(Fragile())
    """)
    )
    result = CliRunner().invoke(cli, ["probe", "--config", config])
    assert result.exit_code == 75
    assert "probe fragile: configure failed: KeyError: 'sensor'" in result.stdout
    assert "memory.used_percent" in result.stdout
