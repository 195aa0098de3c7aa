"""Checking [[rules]]: every mistake at once, each with its key path and a fix."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from alertmail.config.load import load_config
from alertmail.config.schema import Checker, ConfigError
from alertmail.rules.config import check_address, rules_from_config
from alertmail.rules.model import Rule


def check_rules(text: str, default_to=("ops@example.com",)) -> tuple[list[Rule], list[str]]:
    check = Checker(Path("."))
    rules = rules_from_config(tomllib.loads(text).get("rules", []), check, default_to=default_to)
    return rules, check.problems


def problem_for(problems: list[str], keypath: str) -> str:
    found = [p for p in problems if p.startswith(keypath + ":")]
    assert found, f"no problem reported at {keypath}; got {problems}"
    return found[0]


GOOD = """
[[rules]]
name = "disk-root-full"
metric = "disk.used_percent"
labels = { mount = "/" }
above = 90
clear = 85
for = "2m"
repeat = "4h"
keep_firing_for = "30s"
severity = "critical"
to = ["storage@example.com", "storage2@example.com"]

[[rules]]
name = "net-errors"
metric = "net.errors"
labels = { interface = "eth*" }
warning = 10
critical = 100
over = "5m"
agg = "rate"

[[rules]]
name = "nginx-gone"
metric = "process.count"
labels = { name = "nginx" }
absent = "1m"
flapping = false
"""


def test_a_good_rules_array_builds_rules_with_every_field():
    rules, problems = check_rules(GOOD)
    assert problems == []
    disk, net, nginx = rules
    assert disk == Rule(
        name="disk-root-full",
        metric="disk.used_percent",
        labels={"mount": "/"},
        above=90.0,
        clear=85.0,
        for_=120.0,
        repeat=14400.0,
        keep_firing_for=30.0,
        severity="critical",
        to=("storage@example.com", "storage2@example.com"),
    )
    assert (net.levels, net.over, net.agg, net.to) == (((10, "warning"), (100, "critical")), 300.0, "rate", ("ops@example.com",))
    assert (nginx.absent, nginx.flapping, nginx.threshold) == (60.0, False, None)


def test_several_mistakes_are_each_reported_with_their_key_path():
    _, problems = check_rules("""
[[rules]]
name = "ok-one"
metric = "cpu.percent"
above = 90

[[rules]]
name = "two"
metric = "cpu.percent"
above = 90
below = 10

[[rules]]
name = "three"
metric = "disk.used_percent"
above = "ninety"
fro = "2m"

[[rules]]
name = "ok-one"
metric = "load.1"
above = 90
clear = 95

[[rules]]
name = "five"
metric = "net.bytes"
above = 1000
agg = "rate"

[[rules]]
name = "six"
metric = "m"
above = 1
to = ["ops@example.com\\r\\nBcc: evil@example.com", "not an address"]

[[rules]]
metric = "m"
""")
    assert problem_for(problems, "rules[1].below").startswith("rules[1].below: a rule watches one direction")
    assert problem_for(problems, "rules[2].above") == "rules[2].above: expected a number, got 'ninety'"
    assert "did you mean 'for'?" in problem_for(problems, "rules[2].fro")
    assert "duplicate name 'ok-one' (also rules[0])" in problem_for(problems, "rules[3].name")
    assert "at or below the threshold 90" in problem_for(problems, "rules[3].clear")
    assert 'add over = "5m"' in problem_for(problems, "rules[4].over")
    assert "line breaks" in problem_for(problems, "rules[5].to[0]")
    assert "not a valid mail address" in problem_for(problems, "rules[5].to[1]")
    assert "missing" in problem_for(problems, "rules[6].name")
    assert len(problems) == 10


def test_rules_without_recipients_are_refused():
    _, problems = check_rules('[[rules]]\nname = "r"\nmetric = "m"\nabove = 1\n', default_to=())
    assert "no recipients" in problem_for(problems, "rules[0].to")
    _, problems = check_rules('[[rules]]\nname = "r"\nmetric = "m"\nabove = 1\nto = []\n')
    assert "empty" in problem_for(problems, "rules[0].to")


def test_default_recipients_are_left_to_the_mail_section():
    # [mail].to is checked once with [mail]; rules using it must not repeat each mistake.
    rules, problems = check_rules('[[rules]]\nname = "a"\nmetric = "m"\nabove = 1\n', default_to=["ops at example"])
    assert problems == [] and rules[0].to == ("ops at example",)


@pytest.mark.parametrize(
    ("body", "keypath", "fix"),
    [
        ("below = 10\nclear = 5", "clear", "at or above the threshold 10"),
        ("critical = 5", "critical", "write above = N or below = N"),
        ("warning = 5\ncritical = 5", "critical", "must differ"),
        ("above = 90\ncritical = 80", "critical", "must be higher than above = 90"),
        ("below = 10\ncritical = 20", "critical", "must be lower than below = 10"),
        ("above = 90\nwarning = 80", "warning", "remove `warning`"),
        ('clear = 3\nabsent = "1m"', "clear", "needs a threshold"),
        ('above = 1\nagg = "avg"', "over", 'agg = "avg" needs a window'),
        ('above = 1\nagg = "median"', "agg", "expected one of"),
        ('above = 1\nover = "5m"\nagg = "rate"\nmin_coverage = 0', "min_coverage", "above 0 and at most 1"),
        ('above = 1\nover = "5m"\nagg = "rate"\nmin_coverage = 1.5', "min_coverage", "above 0 and at most 1"),
        ("above = 1\nmin_coverage = 0.8", "min_coverage", 'add over = "5m"'),
        ('above = 1\ncritical = 5\nseverity = "page"', "severity", "remove `severity`"),
        ('above = 1\nseverity = "very bad"', "severity", "use a word"),
        ('above = 1\nname = "a\\nb"', "name", "in a subject, a header"),
        ("", "", "no threshold; add above = N"),
    ],
)
def test_rule_level_mistakes_name_the_key_and_the_fix(body, keypath, fix):
    text = '[[rules]]\nmetric = "m"\n' + body + ("" if "name =" in body else '\nname = "r"')
    rules, problems = check_rules(text)
    where = f"rules[0].{keypath}" if keypath else "rules[0]"
    assert rules == []
    assert fix in problem_for(problems, where)


def test_min_coverage_is_read_as_a_fraction_of_the_window():
    rules, problems = check_rules('[[rules]]\nname = "r"\nmetric = "m"\nabove = 1\nover = "5m"\nagg = "rate"\nmin_coverage = 1\n')
    assert problems == [] and rules[0].min_coverage == 1.0
    rules, _ = check_rules('[[rules]]\nname = "r"\nmetric = "m"\nabove = 1\nover = "5m"\nagg = "rate"\n')
    assert rules[0].min_coverage == 0.5


def test_rules_must_be_an_array_of_tables():
    check = Checker(Path("."))
    assert rules_from_config({"name": "x"}, check, default_to=["a@b"]) == []
    assert check.problems == ["rules: expected an array of tables: [[rules]]"]


@pytest.mark.parametrize(
    "address", ["ops@example.com", "first.last+tag@sub.example.org", "a+b@[127.0.0.1]", "alertmail@localhost"]
)
def test_usual_addresses_pass(address):
    assert check_address(address) is None


@pytest.mark.parametrize("address", ["", "ops", "ops@", "@example.com", "a@b\n", "ops@exa mple.com", "Ops <ops@example.com>", 42])
def test_broken_addresses_are_refused(address):
    assert check_address(address)


def test_config_file_with_rule_mistakes_names_file_and_key_path(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("""
[mail]
to = ["ops@example.com"]

[[rules]]
name = "a"
metric = "m"
above = 1

[[rules]]
name = "b"
metric = "m"
above = 1

[[rules]]
name = "c"
metric = "disk.used_percent"
above = "ninety"
""")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"{path}: rules[2].above: expected a number, got 'ninety'" in str(caught.value).splitlines()
