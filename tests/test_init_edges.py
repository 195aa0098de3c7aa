"""`alertmail init`: one disk rule per filesystem; `init --systemd` writes a sandbox the service can start in."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from types import SimpleNamespace

import psutil

from alertmail.cli import init as init_module
from alertmail.cli import systemd

ALERTMAIL = [sys.executable, "-m", "alertmail"]


def disk_rules(text: str) -> list[dict]:
    return [r for r in tomllib.loads(text)["rules"] if r["metric"] == "disk.used_percent"]


def test_a_bind_mount_of_a_listed_filesystem_gets_no_second_disk_rule(tmp_path, monkeypatch):
    # Two folders of one filesystem stand for "/" and its bind mount "/run/netns".
    root, bound = tmp_path / "root", tmp_path / "root-again"
    root.mkdir()
    bound.mkdir()
    parts = [
        SimpleNamespace(device="/dev/sda1", mountpoint=str(bound), fstype="ext4", opts="rw,bind"),
        SimpleNamespace(device="/dev/sda1", mountpoint=str(root), fstype="ext4", opts="rw"),
    ]
    monkeypatch.setattr(psutil, "disk_partitions", lambda all=False: parts)
    rules = disk_rules(init_module.starter_config())
    assert [r["labels"]["mount"] for r in rules] == [str(root)]


def test_filesystems_on_different_devices_each_get_a_rule(monkeypatch):
    parts = [
        SimpleNamespace(device="/dev/sda1", mountpoint="/", fstype="ext4", opts="rw"),
        SimpleNamespace(device="/dev/sdb1", mountpoint="/srv/db", fstype="xfs", opts="rw"),
    ]
    monkeypatch.setattr(psutil, "disk_partitions", lambda all=False: parts)
    monkeypatch.setattr(init_module, "_device_of", {"/": 1, "/srv/db": 2}.get)
    assert [r["labels"]["mount"] for r in disk_rules(init_module.starter_config())] == ["/", "/srv/db"]


def test_a_venv_under_home_gets_protect_home_read_only_and_a_warning():
    fit, warnings = systemd.sandbox_fit(["/home/ops/venv/bin/alertmail", "/home/ops/venv", "/etc/alertmail/config.toml"])
    assert fit == {"ProtectHome": "read-only"}
    assert len(warnings) == 1 and "/home/ops/venv/bin/alertmail" in warnings[0] and "ProtectHome" in warnings[0]
    text = systemd.unit(["/home/ops/venv/bin/alertmail"], "/etc/alertmail/config.toml", **fit)
    assert "\nProtectHome=read-only\n" in text and "\nPrivateTmp=yes\n" in text


def test_a_venv_under_tmp_gets_private_tmp_off_and_a_warning():
    fit, warnings = systemd.sandbox_fit(["/tmp/venv/bin/alertmail", "/tmp/venv", "/etc/alertmail/config.toml"])
    assert fit == {"PrivateTmp": "no"} and "PrivateTmp" in warnings[0]


def test_a_venv_elsewhere_keeps_the_full_sandbox():
    assert systemd.sandbox_fit(["/opt/alertmail/bin/alertmail", "/opt/alertmail", "/etc/alertmail/config.toml"]) == ({}, [])


def test_init_systemd_warns_when_the_config_is_where_the_sandbox_hides_it(tmp_path):
    config = tmp_path / "config.toml"  # pytest's tmp_path is under /tmp, which PrivateTmp=yes hides
    if not str(config.resolve()).startswith(("/tmp/", "/var/tmp/")):
        config = "/tmp/alertmail-test/config.toml"
    done = subprocess.run([*ALERTMAIL, "init", "--systemd", "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "\nPrivateTmp=no\n" in done.stdout
    assert "warning:" in done.stderr and "PrivateTmp" in done.stderr
