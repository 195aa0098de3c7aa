"""Config parsing: durations, sizes, addresses, and whole-file validation."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alertmail.config.load import load_config
from alertmail.config.schema import ConfigError
from alertmail.notify.notifier import SECTION as NOTIFY
from alertmail.units import format_duration, parse_address, parse_duration, parse_size, valid_address


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("250ms", 0.25), ("0", 0), (45, 45), (1.5, 1.5)],
)
def test_durations_parse_to_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "5 minutes", "m5", "", "-5s", "5x", True, [1]])
def test_bad_durations_are_refused_with_an_example(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**7))
def test_format_duration_round_trips(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("seconds", [-1, -0.4, -320800])
def test_format_duration_reads_a_negative_span_as_zero(seconds):
    assert format_duration(seconds) == "0s"


@pytest.mark.parametrize(
    ("text", "size"), [("10MB", 10_000_000), ("512KiB", 524288), ("100", 100), (2048, 2048), ("1.5 GB", 1_500_000_000)]
)
def test_sizes_parse_to_bytes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("smtp.example.com:587", ("smtp.example.com", 587)),
        ("[10.10.10.1]:25", ("10.10.10.1", 25)),
        ("[::1]:2525", ("::1", 2525)),
        ("[10.10.10.1]", ("10.10.10.1", 25)),
    ],
)
def test_addresses_parse_with_brackets_and_ports(text, expected):
    assert parse_address(text, default_port=25) == expected


@pytest.mark.parametrize("text", ["host:0", "host:99999", "[::1", "host:port", ""])
def test_bad_addresses_are_refused(text):
    with pytest.raises(ValueError):
        parse_address(text, default_port=25)


@pytest.mark.parametrize("address", ["ops@example.com", "a.b+c@mail.example.org", "root@localhost", "x@[127.0.0.1]"])
def test_plain_mail_addresses_are_valid(address):
    assert valid_address(address)


@pytest.mark.parametrize(
    "address", ["ops@example.com\n", "a\r\nBcc: x@y@z", "<ops@example.com>", "ops", "a b@c.d", "ops@exa mple.com"]
)
def test_addresses_that_could_break_a_header_are_invalid(address):
    assert not valid_address(address)


def write(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_minimal_config_gets_defaults_and_paths_relative_to_the_file(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            """
        [mail]
        to = ["ops@example.com"]
    """,
        )
    )
    assert cfg.state_dir == tmp_path / "var"
    assert cfg.agent.interval == 10
    assert cfg.mail.route == ["pickup"]
    assert cfg.transports["pickup"].envelope is True
    assert cfg.section(NOTIFY).group_wait == 30


def test_unknown_section_gets_a_did_you_mean(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(
            write(
                tmp_path,
                """
            [mial]
            to = ["ops@example.com"]
        """,
            )
        )
    assert any("mial: unknown section; did you mean [mail]?" in p for p in err.value.problems)


def test_broken_toml_names_the_file_and_the_place(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "[agent\nstate_dir = 1\n"))
    assert "not valid TOML" in str(err.value) and str(tmp_path) in str(err.value)


def test_inline_secret_is_refused_without_echoing_it(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(
            write(
                tmp_path,
                """
            [transports.pickup]
            api_key = "s3cr3t-value"
        """,
            )
        )
    text = str(err.value)
    assert "transports.pickup.api_key: secrets are never written inline" in text
    assert "s3cr3t-value" not in text


def test_unknown_probe_table_is_reported(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(
            write(
                tmp_path,
                """
            [probes.nosuchprobe]
            interval = "5s"
        """,
            )
        )
    assert any(p.startswith("probes.nosuchprobe: no such probe") for p in err.value.problems)
