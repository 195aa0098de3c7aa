"""What a submission imports: ``import alertmail`` loads nothing behind its names, and the
``alertmail-sendmail`` console script reaches the submission without click or the config code.

Each check runs a fresh interpreter with ``-X importtime``, which lists every module imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CONSOLE_SCRIPT = Path(sys.executable).parent / "alertmail-sendmail"


def imported(command: list[str], **kwargs) -> set[str]:
    """The modules a run of ``command`` (a Python with ``-X importtime``) imported."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, **kwargs)
    assert done.returncode == 0, done.stderr[-2000:]
    return {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")} - {
        "imported package"
    }


def test_importing_the_package_loads_none_of_the_modules_behind_its_names():
    modules = imported([sys.executable, "-X", "importtime", "-c", "import alertmail"])
    assert {m for m in modules if m.startswith("alertmail")} == {"alertmail", "alertmail.version"}


def test_a_public_name_loads_its_module_on_first_use_and_every_name_is_listed():
    probe = (
        "import sys, alertmail\n"
        "assert 'alertmail.model' not in sys.modules\n"
        "from alertmail import Sample\n"
        "assert Sample is sys.modules['alertmail.model'].Sample and 'alertmail.queue.spool' not in sys.modules\n"
        "assert set(alertmail.__all__) <= set(dir(alertmail))\n"
        "try:\n    alertmail.Refused\nexcept AttributeError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "module 'alertmail' has no attribute 'Refused'"


def test_the_console_script_submits_without_click_the_config_code_or_the_email_package(tmp_path):
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"{CONSOLE_SCRIPT} is not installed (pip install -e .)")
    config = tmp_path / "config.toml"
    config.write_text('[agent]\nstate_dir = "var"\n[mail]\nfrom = "alerts@example.test"\n')
    (tmp_path / "var" / "maildrop").mkdir(parents=True)
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    modules = imported([str(CONSOLE_SCRIPT), "-C", str(config), "-i", "ops@example.test"], input="Subject: s\n\nb\n", env=env)
    assert [p.name for p in (tmp_path / "var" / "maildrop").iterdir() if not p.name.startswith(".")] != []
    # What this Python's start-up (site, .pth files) imports anyway is not the submission's doing.
    modules -= imported([sys.executable, "-X", "importtime", "-c", "pass"])
    ours = {m for m in modules if m.startswith("alertmail")}
    assert ours == {"alertmail", "alertmail.version", "alertmail.cli", "alertmail.cli.sendmail"}
    assert not {m for m in modules if m.split(".")[0] in ("click", "email", "tomllib", "typing", "pluggy")}
