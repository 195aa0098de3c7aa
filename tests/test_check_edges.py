"""`alertmail check` sees every problem `alertmail run` would hit, and never shows a traceback.

Each case: exit 78 with a line naming the file and the problem. Then random bytes and
random TOML (hypothesis): check exits 0 or 78 with a message, whatever it is given.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alertmail.cli import cli

GOOD = """
[agent]
state_dir = "var"

[mail]
from = "alerts@example.test"
to = ["ops@example.test"]
route = ["pickup"]
"""


def check(config: Path):
    result = CliRunner().invoke(cli, ["check", "--config", str(config)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback: the test fails with it
    return result


def assert_problem(config: Path, *expected: str) -> str:
    result = check(config)
    output = result.output
    assert result.exit_code == 78, output
    assert "Traceback" not in output, output
    for text in expected:
        assert text in output, f"{text!r} not in:\n{output}"
    return output


def write(tmp_path: Path, text: str | bytes) -> Path:
    config = tmp_path / "config.toml"
    config.write_bytes(text if isinstance(text, bytes) else textwrap.dedent(text).encode())
    return config


def test_the_good_config_is_ok(tmp_path):
    result = check(write(tmp_path, GOOD))
    assert result.exit_code == 0, result.output


def test_bytes_that_are_not_utf8(tmp_path):
    assert_problem(write(tmp_path, GOOD.encode() + b"\n# caf\xe9 \xff\n"), "not UTF-8", "line 10")


def test_a_utf16_file(tmp_path):
    assert_problem(write(tmp_path, "\ufeff".encode("utf-16-le") + GOOD.encode("utf-16-le")), "UTF-16", "save it as UTF-8")


def test_arrays_nested_too_deep(tmp_path):
    assert_problem(write(tmp_path, GOOD + "\n[extra]\nx = " + "[" * 5000 + "]" * 5000 + "\n"), "nested too deep")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "+inf"])
def test_durations_must_be_finite(tmp_path, value):
    config = write(tmp_path, GOOD.replace('state_dir = "var"', f'state_dir = "var"\ninterval = {value}'))
    assert_problem(config, "agent.interval:")


@pytest.mark.parametrize(
    "where",
    [
        ("notify", "group_wait"),
        ("queue", "expire"),
        ("queue", "send_timeout"),
        ("agent", "probe_timeout"),
    ],
)
def test_every_duration_option_refuses_nan_and_inf(tmp_path, where):
    section, key = where
    text = GOOD + f"\n[{section}]\n{key} = inf\n" if section != "agent" else GOOD.replace("[agent]", f"[agent]\n{key} = inf")
    assert_problem(write(tmp_path, text), f"{section}.{key}:")


def test_a_duration_too_large_for_a_float(tmp_path):
    config = write(tmp_path, GOOD.replace('state_dir = "var"', 'state_dir = "var"\ninterval = ' + "9" * 400))
    assert_problem(config, "agent.interval:")


def test_durations_list_refuses_nan(tmp_path):
    assert_problem(write(tmp_path, GOOD + "\n[queue]\nretry = [nan]\n"), "queue.retry:")


def test_state_dir_that_is_a_file(tmp_path):
    (tmp_path / "var").write_text("not a folder")
    assert_problem(write(tmp_path, GOOD), "agent.state_dir:", "not a folder")


def test_a_missing_plugin_folder(tmp_path):
    config = write(tmp_path, GOOD.replace('state_dir = "var"', 'state_dir = "var"\nplugin_dirs = ["plugins.d"]'))
    assert_problem(config, "agent.plugin_dirs[0]:", "plugins.d")


def test_a_missing_templates_folder(tmp_path):
    config = write(tmp_path, GOOD + 'templates = "mytemplates"\n')
    assert_problem(config, "mail.templates:", "mytemplates")


def test_a_template_with_a_syntax_error(tmp_path):
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "alert.txt.j2").write_text("Hello\n{% if x %}\nno end\n")
    (tmp_path / "tpl" / "alert.html.j2").write_text("<p>{{ alert.rule | nosuchfilter }}</p>\n")
    config = write(tmp_path, GOOD + 'templates = "tpl"\n')
    assert_problem(config, "mail.templates:", "alert.txt.j2", "alert.html.j2")


def test_a_good_template_folder_is_ok(tmp_path):
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "alert.txt.j2").write_text("{{ subject }}\n")
    result = check(write(tmp_path, GOOD + 'templates = "tpl"\n'))
    assert result.exit_code == 0, result.output


def test_a_broken_plugin_is_a_problem(tmp_path):
    (tmp_path / "plugins.d").mkdir()
    (tmp_path / "plugins.d" / "broken.py").write_text("import no_such_module_here\n")
    config = write(tmp_path, GOOD.replace('state_dir = "var"', 'state_dir = "var"\nplugin_dirs = ["plugins.d"]'))
    assert_problem(config, "plugin broken", "ModuleNotFoundError")
    plugins = CliRunner().invoke(cli, ["plugins", "--config", str(config)])
    assert plugins.exit_code == 78  # the two commands agree


def test_check_in_a_real_process_on_damaged_bytes(tmp_path):
    config = write(tmp_path, b"\xff\xfe[\x00a\x00\n\x00" + bytes(range(256)))
    result = subprocess.run(
        [sys.executable, "-m", "alertmail", "check", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 78, result.stderr
    assert "Traceback" not in result.stderr and str(config) in result.stderr


# -- anything at all ------------------------------------------------------------

# ALERTMAIL_FUZZ=5000 for a longer search than the suite's.
FUZZ = settings(
    max_examples=int(os.environ.get("ALERTMAIL_FUZZ", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def run_check(tmp_path: Path, content: bytes) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes(content)
    result = check(config)
    assert result.exit_code in (0, 78), result.output
    assert result.output.strip(), "a message, always"
    assert "Traceback" not in result.output


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_never_give_a_traceback(tmp_path, content):
    run_check(tmp_path, content)


SECTIONS = {
    "agent": [
        "state_dir",
        "interval",
        "resolution",
        "plugin_dirs",
        "disable_plugins",
        "timezone",
        "hostname",
        "probe_timeout",
        "log_level",
    ],
    "mail": ["from", "to", "route", "templates", "charts", "subject_prefix"],
    "notify": ["group_wait", "max_mails_per_hour"],
    "queue": ["retry", "expire", "delay_notice", "concurrency", "route_retry", "send_timeout"],
    "heartbeat": ["every", "to"],
    "transports": ["smtp", "pickup", "mx"],
    "probes": ["cpu", "disk", "process", "network"],
    "silences": ["name", "rule", "labels", "schedule", "timezone"],
    "relay": ["enabled", "listen", "allow", "max_size"],
}
scalars = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["5s", "1m", "0", "-1s", "1e9d", "9" * 30 + "d", "var", ".", "/", "pickup", "a@b.test"]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)


@st.composite
def configs(draw) -> dict:
    out: dict = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=4, unique=True)):
        keys = draw(st.lists(st.sampled_from(SECTIONS[section]), max_size=4, unique=True))
        table = {k: draw(values) for k in keys}
        out[section] = [table] if section == "silences" else table
    if draw(st.booleans()):
        rule = {"name": draw(st.text(max_size=5)), "metric": "cpu.percent", "above": draw(scalars)}
        rule.update(draw(st.dictionaries(st.sampled_from(["for", "over", "repeat", "clear", "agg"]), scalars, max_size=2)))
        out["rules"] = [rule]
    return out


def toml_text(config: dict) -> bytes:
    return tomli_w.dumps(config).encode()  # nan and inf written as TOML writes them


@FUZZ
@given(configs())
def test_random_toml_never_gives_a_traceback(tmp_path, config):
    run_check(tmp_path, toml_text(config))


@pytest.mark.parametrize("value", ['["5m", nan]', '"soon"', '["5m", "later"]', "[]", '{ every = "5m" }'])
def test_route_retry_is_checked_as_run_reads_it(tmp_path, value):
    assert_problem(write(tmp_path, GOOD + f"\n[queue]\nroute_retry = {{ mx = {value} }}\n"), "queue.route_retry")


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("[transports.mx]\nport = 70000\n", "transports.mx.port:"),
        ('[transports.smtp]\nservers = ["a.example:99999"]\n', "transports.smtp.servers[0]:"),
        ('[transports.mx]\nmode = "smarthost"\n', "transports.mx"),
    ],
)
def test_transports_are_built_as_run_builds_them(tmp_path, table, expected):
    assert_problem(write(tmp_path, GOOD + "\n" + table), expected)


def test_a_template_naming_a_variable_that_does_not_exist_is_a_problem_with_its_line(tmp_path):
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "alert.txt.j2").write_text("{{ subject }}\n{% for a in alerts %}{{ a.rulle }}{% endfor %}\n")
    (tmp_path / "tpl" / "alert.html.j2").write_text(
        '{% extends "builtin/alert.html.j2" %}{% block footer %}\n\n{{ extra.oncall }}{% endblock %}'
    )
    config = write(tmp_path, GOOD + 'templates = "tpl"\n')
    assert_problem(config, "mail.templates: alert.txt.j2 line 2: fails on a sample", "has no attribute 'rulle'")
    assert_problem(config, "mail.templates: alert.html.j2 line 3: fails on a sample", "'oncall'", "docs/templates.md")


def test_every_variable_docs_templates_md_names_exists_and_every_one_there_is_is_named(tmp_path):
    """docs/templates.md against the code: a template using each documented variable passes `check`."""
    import dataclasses
    import re

    from alertmail.render.mail import sample_variables
    from alertmail.render.view import AlertView

    doc = (Path(__file__).parents[1] / "docs" / "templates.md").read_text()
    top = re.findall(r"^\| `(\w+)` \|", doc.split("### Top level")[1].split("###")[0], re.M)
    alert = re.findall(r"^\| `a\.(\w+)` \|", doc, re.M)
    [(_, variables), *_] = sample_variables()
    assert sorted(top) == sorted(variables)
    assert sorted(alert) == sorted(f.name for f in dataclasses.fields(AlertView))
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "alert.txt.j2").write_text(
        " ".join(f"{{{{ {name} }}}}" for name in top)
        + "\n{% for a in alerts %}"
        + " ".join(f"{{{{ a.{name} }}}}" for name in alert)
        + "{% for p in a.processes %}{{ p.name }} {{ p.pid }} {{ p.cpu_percent }} {{ p.rss|bytes }}{% endfor %}\n{% endfor %}"
    )
    result = check(write(tmp_path, GOOD + 'templates = "tpl"\n'))
    assert result.exit_code == 0, result.output
