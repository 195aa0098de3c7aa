"""No silent rule: a rule on a metric no loaded probe declares is refused by check, run and reload.

Where a loaded probe declares no metrics the metric may come from it: a warning names
the rule. ``undeclared = true`` on a rule, or a replay whose samples hold the metric,
accepts it.
"""

from __future__ import annotations

import subprocess
import sys
import time

from alertmail.exitcodes import ExitCode
from tests.gauge import install_gauge
from tests.test_reload import Agent, config_text

ALERTMAIL = [sys.executable, "-m", "alertmail"]
HEAD = '[agent]\nstate_dir = "var"\n[mail]\nroute = ["pickup"]\nto = ["ops@example.test"]\n'


def rule(name: str, metric: str, extra: str = "") -> str:
    return f'\n[[rules]]\nname = "{name}"\nmetric = "{metric}"\nabove = 90\n{extra}'


def check(folder, text: str) -> subprocess.CompletedProcess:
    config = folder / "config.toml"
    config.write_text(text)
    return subprocess.run([*ALERTMAIL, "check", "-c", str(config)], capture_output=True, text=True, timeout=60, cwd=folder)


def test_check_refuses_a_rule_on_a_metric_no_probe_declares_with_did_you_mean_and_the_fix(tmp_path):
    done = check(tmp_path, HEAD + rule("disk", "disk.use_percent") + rule("cpu", "cpu.percent"))
    assert done.returncode == ExitCode.CONFIG, done.stderr
    line = next(x for x in done.stderr.splitlines() if "rules[0].metric" in x)
    assert line.startswith(f"{tmp_path / 'config.toml'}: rules[0].metric: no loaded probe declares 'disk.use_percent'")
    assert "rule 'disk' would never fire; did you mean 'disk.used_percent'?" in line
    assert "add undeclared = true" in line
    assert "rules[1]" not in done.stderr


def test_check_refuses_a_misspelt_metric_in_an_included_file_naming_that_file(tmp_path):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "team.toml").write_text(rule("load", "load.1m"))
    done = check(tmp_path, 'include = ["conf.d/*.toml"]\n' + HEAD)
    assert done.returncode == ExitCode.CONFIG
    assert f"{tmp_path / 'conf.d' / 'team.toml'}: rules[0].metric: no loaded probe declares 'load.1m'" in done.stderr
    assert "did you mean 'load.1'?" in done.stderr


def test_the_agents_own_metrics_are_the_ones_the_exporter_describes():
    from alertmail.config.load import AGENT_METRICS
    from alertmail.exporter.collector import AGENT_METRICS as DESCRIBED

    assert set(AGENT_METRICS) == set(DESCRIBED)


def test_the_agents_own_metrics_need_no_probe_and_a_typo_in_one_is_caught(tmp_path):
    done = check(tmp_path, HEAD + rule("slow-probe", "agent.probe_seconds"))
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    done = check(tmp_path, HEAD + rule("slow-probe", "agent.probe_second"))
    assert done.returncode == ExitCode.CONFIG and "did you mean 'agent.probe_seconds'?" in done.stderr


def test_undeclared_true_accepts_the_metric_and_says_so_when_it_is_declared_after_all(tmp_path):
    done = check(
        tmp_path, HEAD + rule("app", "app.queue_depth", "undeclared = true\n") + rule("cpu", "cpu.percent", "undeclared = true\n")
    )
    assert done.returncode == 0, done.stderr
    assert "app.queue_depth" not in done.stderr
    assert "rules[1].undeclared: 'cpu.percent' of rule 'cpu' is declared by cpu; remove `undeclared`" in done.stderr


def test_a_probe_that_declares_no_metrics_turns_the_refusal_into_a_warning_naming_the_rule(tmp_path):
    install_gauge(tmp_path)  # declares nothing
    done = check(tmp_path, HEAD.replace("[mail]", 'plugin_dirs = ["plugins.d"]\n[mail]') + rule("typo", "test.gauges"))
    assert done.returncode == 0, done.stderr
    assert "rules[0].metric: no loaded probe declares 'test.gauges' of rule 'typo'" in done.stderr
    assert "it may come from gauge, which declare no metrics" in done.stderr


def test_a_rule_on_a_metric_of_a_disabled_probe_is_a_warning(tmp_path):
    done = check(tmp_path, HEAD + "[probes.load]\nenabled = false\n" + rule("load", "load.1"))
    assert done.returncode == 0, done.stderr
    assert "'load.1' of rule 'load' comes only from load, disabled by enabled = false in [probes.load]" in done.stderr


def test_run_refuses_to_start_on_such_a_rule(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(HEAD + rule("disk", "disk.use_percent"))
    done = subprocess.run([*ALERTMAIL, "run", "-c", str(config)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == ExitCode.CONFIG
    assert "no loaded probe declares 'disk.use_percent'" in done.stderr and "nothing was started" in done.stderr
    assert not (tmp_path / "var").exists()


def test_replay_accepts_a_metric_its_samples_hold_that_no_probe_declares(tmp_path):
    text = HEAD + rule("app-deep", "app.queue_depth")
    assert check(tmp_path, text).returncode == ExitCode.CONFIG
    samples = tmp_path / "samples.csv"
    samples.write_text(
        "timestamp,metric,labels,value\n" + "".join(f"{1795698000 + 10 * i},app.queue_depth,,{50 + 10 * i}\n" for i in range(8))
    )
    done = subprocess.run(
        [*ALERTMAIL, "replay", "-c", str(tmp_path / "config.toml"), "--samples", str(samples)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("8 samples over 1m10s, 1 rules, 1 alert events, 1 mails")
    # A metric the samples do not hold is still a rule on nothing.
    (tmp_path / "config.toml").write_text(text + rule("typo", "app.queue_dept"))
    done = subprocess.run(
        [*ALERTMAIL, "replay", "-c", str(tmp_path / "config.toml"), "--samples", str(samples)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == ExitCode.CONFIG and "did you mean 'app.queue_depth'?" in done.stderr


def test_reload_refuses_such_a_rule_and_keeps_the_running_configuration(tmp_path, monkeypatch):
    import tests.test_status

    # The gauge declares test.gauge here: every loaded probe says what it emits, so a typo is known to be one.
    monkeypatch.setattr(tests.test_status, "install_gauge", lambda folder, **kw: install_gauge(folder, **kw, unit="count"))
    agent = Agent(tmp_path, config_text('"pickup"'))
    try:
        assert "no loaded probe declares" not in agent.output()
        agent.reload(config_text('"pickup"', extra=rule("typo", "test.gauge.value")))
        out = agent.output()
        assert "reload refused" in out and "rules[1].metric: no loaded probe declares 'test.gauge.value'" in out
        assert "did you mean 'test.gauge'?" in out
        (tmp_path / "plugins.d" / "value.txt").write_text("93")  # the running rule gauge-high still fires
        deadline = time.monotonic() + 30
        while not list((tmp_path / "var" / "pickup").glob("*.eml")):
            assert time.monotonic() < deadline, agent.output()
            time.sleep(0.2)
    finally:
        agent.stop()


def window(over: str) -> str:
    return f'over = "{over}"\nagg = "avg"\n'


def test_a_window_no_longer_than_the_probe_interval_is_refused_and_a_tight_one_warned_about(tmp_path):
    done = check(tmp_path, HEAD + rule("cpu-10s", "cpu.percent", window("10s")))  # the cpu probe runs every 10 s
    assert done.returncode == ExitCode.CONFIG
    assert (
        "rules[0].over: 10s is not longer than the probe interval (10s, cpu): the window holds two samples only by chance,"
        " so the rule 'cpu-10s' seldom or never decides; make over at least 20s" in done.stderr
    )
    done = check(tmp_path, HEAD + rule("cpu-15s", "cpu.percent", window("15s")) + rule("cpu-20s", "cpu.percent", window("20s")))
    assert done.returncode == 0, done.stderr
    assert "rules[0].over: 15s holds two samples of cpu only when they come on time (interval 10s)" in done.stderr
    assert "rules[1]" not in done.stderr
    faster = HEAD + '[probes.cpu]\ninterval = "2s"\n' + rule("cpu-10s", "cpu.percent", window("10s"))
    assert check(tmp_path, faster).returncode == 0
