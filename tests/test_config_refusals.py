"""Wrong configs, section by section and key by key: `alertmail check` refuses each one.

A systematic table: for every section of the config (config.toml, docs/, the option
declarations), the values that are well-formed TOML and still wrong: empty lists where
one item is needed, NaN, infinities, negative, zero and huge numbers and durations,
CR, LF and NUL in strings that reach headers, labels or SMTP lines, addresses that
cannot be bound or parsed, unknown timezones, duplicates and globs that match nothing.
Each case: exit 78, the key path named, no traceback. test_config_edges_run.py runs
`alertmail run` on the edge values that are accepted.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from click.testing import CliRunner

from alertmail.cli import cli

NAN, INF = float("nan"), float("inf")
HUGE = "99999999999d"
BASE: dict[str, Any] = {
    "agent": {"state_dir": "var", "interval": "10s"},
    "mail": {"from": "alerts@example.test", "to": ["ops@example.test"], "route": ["pickup"]},
}
SMTP = {"servers": ["127.0.0.1:25"]}
RULE = {"name": "r", "metric": "cpu.percent", "above": 90}
SILENCE = {"rule": "*", "start": "02:00", "end": "04:00"}
RELAY = {"enabled": True, "listen": ["127.0.0.1:2525"], "route": ["smtp"], "workers": 0}


def section(name: str, **keys: Any) -> dict[str, Any]:
    return {name: keys}


def rule(**keys: Any) -> dict[str, Any]:
    return {"rules": [{**RULE, **keys}]}


def silence(**keys: Any) -> dict[str, Any]:
    return {"silences": [{**SILENCE, **keys}]}


def transport(name: str, **keys: Any) -> dict[str, Any]:
    table = {**SMTP, **keys} if name == "smtp" else keys
    if name == "alertmanager":
        table = {"urls": ["http://127.0.0.1:9093"], **keys}
    return {"mail": {"route": [name]}, "transports": {name: table}}


def relay(**keys: Any) -> dict[str, Any]:
    return {"relay": {**RELAY, **keys}, "transports": {"smtp": SMTP}}


def probe(name: str, **keys: Any) -> dict[str, Any]:
    return {"probes": {name: keys}}


CASES: list[tuple[str, str, dict[str, Any]]] = []  # (id, key path named, what is merged into BASE)


def case(keypath: str, override: dict[str, Any], what: str) -> None:
    CASES.append((f"{keypath}: {what}", keypath, override))


# -- durations: negative, NaN, beyond the longest allowed, zero where zero cannot work --
DURATIONS = {
    "agent": ["interval", "resolution", "probe_timeout"],
    "notify": ["group_wait", "digest_interval"],
    "queue": ["delay_notice", "expire", "send_timeout", "scan_interval"],
    "exporter": ["stale_after"],
}
for name, keys in DURATIONS.items():
    for key in keys:
        case(f"{name}.{key}", section(name, **{key: HUGE}), "99999999999d")
        case(f"{name}.{key}", section(name, **{key: "3651d"}), "just past ten years")
        case(f"{name}.{key}", section(name, **{key: -5}), "negative")
        case(f"{name}.{key}", section(name, **{key: NAN}), "nan")
case("heartbeat.every", section("heartbeat", every=HUGE), "99999999999d")
case("heartbeat.every", section("heartbeat", every="1ms"), "every millisecond")
for key in ("interval", "timeout"):
    case(f"probes.cpu.{key}", probe("cpu", **{key: HUGE}), "99999999999d")
    case(f"probes.cpu.{key}", probe("cpu", **{key: 0}), "zero")
case("probes.cpu.interval", probe("cpu", interval="1ms"), "a busy loop")
case("agent.interval", section("agent", interval=0), "zero")
case("agent.interval", section("agent", interval="1ms"), "a busy loop")
case("agent.probe_timeout", section("agent", probe_timeout=0), "zero")
case("queue.retry", section("queue", retry=[HUGE]), "99999999999d")
case("queue.retry", section("queue", retry=["0"]), "zero: a dead server retried in a busy loop")
case("queue.retry", section("queue", retry=["5m", NAN]), "nan")
case("queue.retry", section("queue", retry=[]), "empty")
case("queue.expire", section("queue", expire=0), "zero")
case("queue.send_timeout", section("queue", send_timeout=0), "zero")
case("queue.scan_interval", section("queue", scan_interval=0), "zero")
case("notify.digest_interval", section("notify", digest_interval=0), "zero")
case("queue.route_retry.pickup", section("queue", route_retry={"pickup": [HUGE]}), "99999999999d")
case("queue.route_retry.mxx", section("queue", route_retry={"mxx": ["5m"]}), "no such transport")

# -- whole numbers: zero, negative, beyond what C code takes --
case("queue.concurrency", section("queue", concurrency=0), "zero")
case("queue.concurrency", section("queue", concurrency=-3), "negative")
case("queue.concurrency", section("queue", concurrency=10**12), "huge")
case("notify.max_mails_per_hour", section("notify", max_mails_per_hour=-1), "negative")
case("notify.max_mails_per_hour", section("notify", max_mails_per_hour=10**15), "huge")

# -- [agent] and [mail]: strings that reach headers, names, timezones, routes --
case("mail.route", section("mail", route=[]), "empty: mail never leaves")
case("mail.route[1]", section("mail", route=["pickup", "pickup"]), "a transport twice")
case("mail.route[0]", section("mail", route=[""]), "an empty name")
case("mail.also_route[1]", section("mail", also_route=["pickup", "pickup"]), "a transport twice")
case("mail.to[0]", section("mail", to=[""]), "an empty address")
case("mail.to[1]", section("mail", to=["a@b.test", "a@b.test"]), "an address twice")
case("mail.from", section("mail", **{"from": "a@b.test\r\nBcc: x@evil.test"}), "CR LF: a forged header")
case("mail.subject_prefix", section("mail", subject_prefix="[x]\r\nBcc: x@evil.test"), "CR LF: a forged header")
case("mail.subject_prefix", section("mail", subject_prefix="a\0b"), "NUL")
case("agent.hostname", section("agent", hostname="web\r\n01"), "CR LF")
case("agent.hostname", section("agent", hostname="web\x0001"), "NUL")
case("agent.hostname", section("agent", hostname=""), "empty")
case("agent.hostname", section("agent", hostname="web 01"), "a space: not a host name")
case("agent.timezone", section("agent", timezone="Mars/Olympus"), "unknown timezone")
case("agent.timezone", section("agent", timezone=""), "empty")
case("agent.timezone", section("agent", timezone="../../etc/passwd"), "a path")
case("agent.plugin_dirs[0]", section("agent", plugin_dirs=[""]), "an empty folder name")
case("agent.state_dir", section("agent", state_dir="va\nr"), "LF in a path")
case("agent.state_dir", section("agent", state_dir="/proc/alertmail/var"), "a folder that cannot be made")
case("agent.state_dir", section("agent", state_dir="/dev/null/var"), "under a file")
case("agent.log_level", section("agent", log_level="verbose"), "not a level")

# -- [heartbeat] --
case("heartbeat.at", section("heartbeat", every="1d", at="25:00"), "no such hour")
case("heartbeat.at", section("heartbeat", every="1d", at="8"), "no minutes")
case("heartbeat.to[0]", section("heartbeat", every="1d", to=["not an address"]), "not an address")
case("heartbeat.to[0]", section("heartbeat", every="1d", to=["a@b.test\r\nBcc: x@evil.test"]), "CR LF")

# -- [exporter]: an address that cannot be bound or parsed --
case("exporter.listen", section("exporter", listen="[::ffff:127.0.0.1]:9464"), "IPv4-mapped IPv6: cannot be bound")
case("exporter.listen", section("exporter", listen="127.0.0.1"), "no port")
case("exporter.listen", section("exporter", listen="127.0.0.1:99999"), "port out of range")
case("exporter.listen", section("exporter", listen="192.0.2.1:9464"), "an address of another host")
case("exporter.listen", section("exporter", listen="no-such-host.invalid:9464"), "a name that does not resolve")
case("exporter.listen", section("exporter", listen="127.0.0.1:9464\r\n"), "CR LF")
case("exporter.listen", section("exporter", listen=""), "empty")
case("exporter.stale_after", section("exporter", listen="127.0.0.1:9464", stale_after=0), "zero")

# -- [[rules]] --
case("rules[0].above", rule(above=NAN), "nan: never fires")
case("rules[0].above", rule(above=INF), "inf")
case("rules[0].above", rule(above=-INF), "-inf")
case("rules[0].below", {"rules": [{"name": "r", "metric": "cpu.percent", "below": NAN}]}, "nan")
case("rules[0].clear", rule(clear=NAN), "nan")
case("rules[0].warning", {"rules": [{"name": "r", "metric": "cpu.percent", "warning": NAN, "critical": 95}]}, "nan")
case("rules[0].critical", {"rules": [{"name": "r", "metric": "cpu.percent", "warning": 90, "critical": INF}]}, "inf")
case("rules[0].min_coverage", rule(over="1m", min_coverage=NAN), "nan")
case("rules[0].min_coverage", rule(over="1m", min_coverage=0), "zero")
for key in ("for", "repeat", "keep_firing_for", "over", "absent"):
    case(f"rules[0].{key}", rule(**{key: HUGE}), "99999999999d")
case("rules[0].labels.mount", rule(labels={"mount": "/\r\nx"}), "CR LF in a label value")
case("rules[0].labels.mount", rule(labels={"mount": "/data[1"}), "a glob that opens [ and never closes it")
case("rules[0].labels", rule(labels={"": "/"}), "an empty label name")
case("rules[0].labels", rule(labels={"mo unt": "/"}), "a label name with a space")
case("rules[0].description", rule(description="a\0b"), "NUL")
case("rules[0].severity", rule(severity=""), "empty")
case("rules[1].name", {"rules": [RULE, RULE]}, "a name twice")
case("rules[0].name", rule(name=""), "empty")
case("rules[0].name", rule(name="r\r\nBcc: x@evil.test"), "CR LF: a forged subject")
case("rules[0].to[1]", rule(to=["ops@example.test", "ops@example.test"]), "an address twice")
case("rules[0].to", rule(to=[]), "empty")
case("rules[0].metric", rule(metric="cpu.percent\n"), "LF")
case("rules[0].runbook", rule(runbook="https://wiki.example.test/a\r\nb"), "CR LF")

# -- [[silences]] --
case("silences[0].timezone", silence(timezone="Mars/Olympus"), "unknown timezone")
case("silences[0].timezone", silence(timezone=""), "empty")
case("silences[0].start", silence(start="25:00"), "no such hour")
case("silences[0].end", silence(end="4"), "no minutes")
case("silences[0].days", silence(days=["someday"]), "no such day")
case("silences[0].cron", {"silences": [{"cron": "99 * * * *", "duration": "1h"}]}, "no such minute")
case("silences[0].duration", {"silences": [{"cron": "0 2 * * 6"}]}, "a cron window without a length")
case("silences[0].duration", {"silences": [{"cron": "0 2 * * 6", "duration": HUGE}]}, "99999999999d")
case("silences[0].duration", {"silences": [{"cron": "0 2 * * 6", "duration": 0}]}, "zero")
case("silences[0].rule", silence(rule=""), "empty")
case("silences[0].rule", silence(rule="[disk"), "a glob that opens [ and never closes it")
case("silences[0].labels.mount", silence(labels={"mount": "/\nx"}), "LF")
case("silences[0].severity[0]", silence(severity=[""]), "an empty severity")
case("silences[0].comment", silence(comment="a\0b"), "NUL")

# -- [transports.*] --
case("transports.smtp.servers", transport("smtp", servers=[]), "empty")
case("transports.smtp.servers[0]", transport("smtp", servers=[""]), "an empty server")
case("transports.smtp.servers[0]", transport("smtp", servers=["a.test:25\r\n"]), "CR LF")
case("transports.smtp.servers[1]", transport("smtp", servers=["a.test:25", "a.test:25"]), "a server twice")
case("transports.smtp.helo", transport("smtp", helo="x\r\nRCPT TO:<a@b.test>"), "CR LF: a forged SMTP command")
case("transports.smtp.helo", transport("smtp", helo=""), "empty")
case("transports.smtp.username", transport("smtp", username="a\r\nb"), "CR LF")
for key in ("connect_timeout", "command_timeout", "data_timeout", "idle_timeout"):
    case(f"transports.smtp.{key}", transport("smtp", **{key: HUGE}), "99999999999d")
for key in ("connect_timeout", "command_timeout", "data_timeout"):
    case(f"transports.smtp.{key}", transport("smtp", **{key: 0}), "zero")
case("transports.mx.helo", transport("mx", helo="x\r\nQUIT"), "CR LF")
case("transports.mx.port", transport("mx", port=0), "port zero")
case("transports.mx.port", transport("mx", port=-1), "negative")
case("transports.mx.port", transport("mx", port=70000), "out of range")
case("transports.mx.smart_host", transport("mx", mode="mx-then-smarthost", smart_host="a\nb:25"), "LF")
case("transports.mx.resolver", transport("mx", resolver="not an address"), "not host:port")
case("transports.mx.dns_timeout", transport("mx", dns_timeout=HUGE), "99999999999d")
case("transports.mx.dns_timeout", transport("mx", dns_timeout=0), "zero")
case("transports.pickup.directory", {"transports": {"pickup": {"directory": "var/pick\nup"}}}, "LF in a path")
case("transports.pickup.directory", {"transports": {"pickup": {"directory": "/proc/alertmail/out"}}}, "cannot be made")
case("transports.alertmanager.urls", transport("alertmanager", urls=[]), "empty")
case("transports.alertmanager.urls[0]", transport("alertmanager", urls=["ftp://am.test"]), "not http")
case("transports.alertmanager.urls[0]", transport("alertmanager", urls=["http://am.test:9093/\r\nX: y"]), "CR LF")
case("transports.alertmanager.timeout", transport("alertmanager", timeout=HUGE), "99999999999d")
case("transports.alertmanager.timeout", transport("alertmanager", timeout=0), "zero")
case("transports.alertmanager.labels", transport("alertmanager", labels={"a b": "x"}), "a label name with a space")
case("transports.alertmanager.labels.team", transport("alertmanager", labels={"team": "a\nb"}), "LF")
case("transports.alertmanager.generator_url", transport("alertmanager", generator_url="x\ny"), "LF")

# -- [probes.*] --
case("probes.disk.exclude_mounts[0]", probe("disk", exclude_mounts=[""]), "an empty glob")
case("probes.disk.exclude_mounts[0]", probe("disk", exclude_mounts=["/mnt/[a"]), "a glob that never closes [")
case("probes.diskio.exclude[0]", probe("diskio", exclude=[""]), "an empty glob")
case("probes.network.exclude[0]", probe("network", exclude=["veth["]), "a glob that never closes [")
case("probes.process.watch[1].name", probe("process", watch=[{"name": "a", "match": "x"}, {"name": "a", "match": "y"}]), "twice")
case("probes.process.watch[0].name", probe("process", watch=[{"name": "a\nb", "match": "x"}]), "LF in a label value")
case("probes.nosuch", probe("nosuch", enabled=True), "no such probe")

# -- [relay] --
case("relay.listen[0]", relay(listen=["[::ffff:127.0.0.1]:2525"]), "IPv4-mapped IPv6: run cannot bind it")
case("relay.listen", relay(listen=[]), "empty: nothing to listen on")
case("relay.listen[0]", relay(listen=["192.0.2.1:2525"]), "an address of another host")
case("relay.listen[1]", relay(listen=["127.0.0.1:2526", "127.0.0.1:2526"]), "an address twice")
case("relay.listen[0]", relay(listen=["no-such-host.invalid:2525"]), "a name that does not resolve")
case("relay.listen[0]", relay(listen=["::1:2525"]), "IPv6 without brackets")
case(
    "relay.listen[0]", {**relay(listen=["127.0.0.1:9464"]), **section("exporter", listen="127.0.0.1:9464")}, "the exporter's port"
)
case(
    "relay.listen[0]",
    {**relay(listen=["0.0.0.0:9464"]), **section("exporter", listen="127.0.0.1:9464")},
    "all addresses on the exporter's port",
)
case("relay.hostname", relay(hostname="mx\r\n250 evil"), "CR LF: forged EHLO lines")
case("relay.hostname", relay(hostname="mx\0"), "NUL")
case("relay.hostname", relay(hostname="has space"), "not a host name")
case("relay.hostname", relay(hostname=""), "empty")
case("relay.route", relay(route=[]), "empty: relayed mail never leaves")
case("relay.route", relay(route=["nosuch"]), "no such transport")
case("relay.route[1]", relay(route=["smtp", "smtp"]), "a transport twice")
case("relay.allow[0]", relay(allow=["300.1.1.1"]), "not an address")
case("relay.allow[0]", relay(allow=[""]), "empty")
case("relay.allow[0]", relay(allow=["10.0.0.0/33"]), "no such prefix")
case("relay.local_domains[0]", relay(local_domains=["bad domain"]), "not a domain")
case("relay.local_domains[0]", relay(local_domains=["a.test\r\n"]), "CR LF")
case("relay.max_size", relay(max_size=0), "zero")
case("relay.max_size", relay(max_size="999999999999999GB"), "huge")
for key in ("max_recipients", "max_commands", "max_connections", "max_connections_per_client", "max_auth_failures"):
    case(f"relay.{key}", relay(**{key: 0}), "zero")
    case(f"relay.{key}", relay(**{key: -1}), "negative")
    case(f"relay.{key}", relay(**{key: 10**15}), "huge")
for key in ("rate_window", "pickup_interval", "greet_pause", "timeout", "stop_timeout"):
    case(f"relay.{key}", relay(**{key: HUGE}), "99999999999d")
for key in ("timeout", "pickup_interval", "rate_window"):
    case(f"relay.{key}", relay(**{key: 0}), "zero")
case("relay.workers", relay(workers=-1), "negative")
case("relay.workers", relay(workers=10**9), "huge")
case("relay.workers", relay(workers="many"), "not a number")
case("relay.workers", relay(workers=NAN), "nan")

# -- include and [mail.dkim] --
case("include[0]", {"include": ["conf.d/[*.toml"]}, "a glob that never closes [")
case("include", {"include": [""]}, "empty")
case("mail.dkim.selector", {"mail": {"dkim": {"domain": "example.test", "selector": "a\nb", "key_file": "k"}}}, "LF")


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def test_the_base_config_is_good(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps(BASE))
    result = CliRunner().invoke(cli, ["check", "--config", str(config)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("keypath", "override"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_refuses_a_wrong_value_naming_its_key(tmp_path: Path, keypath: str, override: dict[str, Any]):
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps(merged(BASE, override)))
    result = CliRunner().invoke(cli, ["check", "--config", str(config)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 78, result.output
    assert f"{config}: {keypath}" in result.output, result.output
    assert "Traceback" not in result.output


# -- the same, generated from every option each section, transport, probe and service declares:
# a key added later is covered without being listed here.


def _declared() -> list[tuple[str, str, Any, Any]]:
    """(key path of the table, key, Option, a function putting a value at that key into a config)."""
    from alertmail.config.load import SECTIONS
    from alertmail.config.schema import options_of
    from alertmail.loader import load_plugins
    from alertmail.probes.runner import PROBE_OPTIONS

    plugins = load_plugins()
    out: list[tuple[str, str, Any, Any]] = []
    for sec in SECTIONS:
        for key, option in sec.options.items():
            if sec.name == "rules":
                out.append(("rules[0]", key, option, lambda k, v: rule(**{k: v})))
            elif sec.name == "silences":
                out.append(("silences[0]", key, option, lambda k, v: silence(**{k: v})))
            elif sec.name == "mail.dkim":
                out.append(("mail.dkim", key, option, lambda k, v: {"mail": {"dkim": {k: v}}}))
            else:
                out.append((sec.name, key, option, lambda k, v, s=sec.name: section(s, **{k: v})))
    for name, cls in plugins.transports.items():
        for key, option in options_of(getattr(cls, "options", None)).items():
            out.append((f"transports.{name}", key, option, lambda k, v, n=name: transport(n, **{k: v})))
    for name, probe_obj in plugins.probes.items():
        for key, option in {**PROBE_OPTIONS, **options_of(getattr(probe_obj, "options", None))}.items():
            out.append((f"probes.{name}", key, option, lambda k, v, n=name: probe(n, **{k: v})))
    for service in plugins.services:
        if service.section == "relay":
            for key, option in options_of(service.options).items():
                out.append(("relay", key, option, lambda k, v: relay(**{k: v})))
    return out


def _wrong_values(option: Any) -> list[tuple[str, Any]]:
    """Values of the option's own kind that are still wrong, whatever the key."""
    kind = option.kind
    if kind == "duration":
        return [("99999999999d", HUGE), ("negative", -1), ("nan", NAN)]
    if kind == "durations":
        return [("99999999999d", [HUGE]), ("nan", [NAN]), ("empty", [])]
    if kind == "int":
        return [("huge", 10**15)]
    if kind in ("float", "number"):
        return [("nan", NAN), ("inf", INF)]
    if kind == "size":
        return [("huge", "99999999999GB")]
    if kind == "path":
        return [("LF", "a\nb"), ("NUL", "a\0b")]
    if kind == "str" and not option.choices:
        return [("NUL", "a\0b")] + ([] if option.multiline else [("CR LF", "a\r\nX-Forged: 1")])
    if kind == "list" and not option.choices:
        return [("CR LF item", ["a\r\nX-Forged: 1"]), ("an item twice", ["x.test", "x.test"]), ("empty item", [""])]
    if kind == "table":
        return [("LF in a value", {"team": "a\nb"}), ("a label name with a space", {"a b": "x"})]
    return []


GENERATED = [
    (f"{where}.{key}: {what}", f"{where}.{key}", place(key, value))
    for where, key, option, place in _declared()
    for what, value in _wrong_values(option)
]


@pytest.mark.parametrize(("keypath", "override"), [c[1:] for c in GENERATED], ids=[c[0] for c in GENERATED])
def test_check_refuses_a_wrong_value_of_any_declared_key(tmp_path: Path, keypath: str, override: dict[str, Any]):
    test_check_refuses_a_wrong_value_naming_its_key(tmp_path, keypath, override)


def test_a_privileged_port_is_refused_to_a_process_that_may_not_bind_it(tmp_path):
    """Port 25 without CAP_NET_BIND_SERVICE: `run` could not bind it, so `check` refuses it,
    in a real process that has lost the capability (setpriv); with it, the same config passes."""
    import os
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv(1) to run check without CAP_NET_BIND_SERVICE")
    config = tmp_path / "config.toml"
    config.write_text(
        tomli_w.dumps(merged(BASE, {**relay(listen=["127.0.0.1:25"]), **section("exporter", listen="127.0.0.1:80")}))
    )
    check = [sys.executable, "-m", "alertmail", "check", "--config", str(config)]
    drop = ["setpriv", "--inh-caps=-net_bind_service", "--bounding-set=-net_bind_service"]
    refused = subprocess.run([*drop, *check], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 78, refused.stderr
    assert f"{config}: relay.listen[0]: port 25 is privileged" in refused.stderr
    assert f"{config}: exporter.listen: port 80 is privileged" in refused.stderr
    allowed = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert allowed.returncode == 0, allowed.stderr
