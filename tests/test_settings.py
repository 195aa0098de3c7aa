"""Config values travel as typed settings objects: one default per key, read by attribute."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from alertmail.cli import sendmail
from alertmail.config.core import AgentSettings, MailSettings
from alertmail.config.load import SECTIONS
from alertmail.config.schema import Settings
from tests.config_reads import findings
from tests.config_reads import main as count


def test_config_is_read_by_attribute_outside_the_config_package():
    """At most 15 string-key reads of config-like objects and loosely typed config parameters
    (``python tests/config_reads.py -v`` lists them): the submission fast path of
    ``alertmail sendmail``, which reads the file as written, holds most of what is left."""
    root = Path(__file__).resolve().parent.parent
    reads, params = findings([root / "alertmail", root / "plugins"])
    assert len(reads) + len(params) <= 15, "\n".join(reads + params)


def test_the_count_is_printed_for_people(capsys):
    count([])
    assert "string-key config reads:" in capsys.readouterr().out


def test_sendmail_s_own_copies_of_the_defaults_are_the_declared_ones():
    """The wrapper runs sendmail.py without the package, so it carries two defaults itself."""
    assert AgentSettings().state_dir == sendmail.DEFAULT_STATE_DIR
    assert list(sendmail.DEFAULT_ROUTE) == MailSettings().route


@pytest.mark.parametrize("section", [s for s in SECTIONS if isinstance(s.settings, type)], ids=lambda s: s.name)
def test_every_section_is_a_frozen_settings_class_read_by_attribute_only(section):
    settings = section.typed({})
    assert isinstance(settings, Settings)
    field = next(iter(section.options))
    name = section.settings.keys_to_fields()[field]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(settings, name, None)
    with pytest.raises(TypeError):
        settings[field]  # no key access: a reader names the attribute, which mypy checks
