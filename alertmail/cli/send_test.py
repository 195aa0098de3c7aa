"""``alertmail send-test``: one alert mail, made as the agent makes them, through the route now.

The mail is a real alert of one of the configured rules, rendered by the notifier with the
configured templates and charts, but with made-up figures: a crossing of the rule's
threshold a few minutes ago. It is marked as a test in the subject (``[TEST]``) and in a
paragraph at the top of both parts, so nobody acts on it.
"""

from __future__ import annotations

import asyncio
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from alertmail.cli.options import config_option, load_or_exit
from alertmail.exitcodes import ExitCode
from alertmail.rules.model import AlertEvent, Rule

if TYPE_CHECKING:
    from alertmail.config.load import Config

SUBJECT_TAG = "[TEST]"
# When the config has no rules: what most people watch first.
EXAMPLE_RULE = Rule(name="cpu-busy", metric="cpu.percent", above=90, severity="warning")
HISTORY = 30 * 60  # seconds of made-up samples the chart shows
FIRED = 4 * 60  # how long ago the made-up crossing was


@click.command("send-test")
@config_option
@click.option("--to", "to", multiple=True, help="recipient address (repeat for more)  [default: [mail].to]")
@click.option("--rule", "rule_name", metavar="NAME", help="the rule whose alert to send  [default: the first rule]")
@click.option("--route", help="comma-separated transports to use instead of [mail].route")
@click.option("--json", "as_json", is_flag=True, help="print JSON: each recipient's result, transport and reply")
def send_test(config_path: Path, to: tuple[str, ...], rule_name: str | None, route: str | None, as_json: bool) -> None:
    """Send one test alert through the route now and report what happened to each recipient.

    The mail is an alert of a configured rule (made-up figures), rendered with the configured
    templates and charts and marked [TEST]. Exit status: 0 all delivered, 75 a temporary
    failure, 69 a permanent failure.
    """
    from alertmail.cli.table import format_table
    from alertmail.delivery.delivery import SECTION as QUEUE
    from alertmail.delivery.delivery import build_transports, close_transports, send_through_route
    from alertmail.model import Envelope, Status, TransportContext
    from alertmail.units import valid_address

    cfg, plugins = load_or_exit(config_path)
    recipients = tuple(to) or tuple(cfg.mail.to)
    if not recipients:
        click.echo("no recipient: pass --to ADDRESS or set [mail].to", err=True)
        sys.exit(ExitCode.USAGE)
    bad = [a for a in recipients if not valid_address(a)]
    if bad:
        click.echo(f"not a valid mail address: {', '.join(map(repr, bad))}; write it as user@example.com", err=True)
        sys.exit(ExitCode.USAGE)
    rule = pick_rule(cfg.rules, rule_name)
    chain = [t.strip() for t in route.split(",") if t.strip()] if route else list(cfg.mail.route)
    unknown = [t for t in chain if t not in plugins.transports]
    if unknown:
        click.echo(f"no transport named {', '.join(unknown)}; installed: {', '.join(sorted(plugins.transports))}", err=True)
        sys.exit(ExitCode.USAGE)
    for name in chain:
        if name not in cfg.transports:
            from alertmail.config.schema import Checker, options_of, typed

            check = Checker(cfg.path.resolve().parent)
            declared = plugins.transports[name].options
            cfg.transports[name] = typed(declared, check.table(f"transports.{name}", {}, options_of(declared)))
            if check.problems:
                click.echo("\n".join(f"{cfg.path}: {p}" for p in check.problems), err=True)
                sys.exit(ExitCode.CONFIG)
    data = asyncio.run(build_mail(cfg, plugins, rule, recipients, chain))
    from alertmail.delivery.dkim import SECTION as DKIM
    from alertmail.delivery.dkim import DkimKeyError, Signer

    try:
        signer = Signer.from_options(cfg.section(DKIM))
    except DkimKeyError as exc:
        click.echo(f"{cfg.path}: mail.dkim: {exc}", err=True)
        sys.exit(ExitCode.CONFIG)
    if signer is not None:
        data = signer(data)  # signed as the agent signs what it queues
    send_timeout = min(cfg.section(QUEUE).send_timeout, 120.0)
    context = TransportContext(state_dir=cfg.state_dir, hostname=cfg.hostname, config_path=cfg.path)

    async def send() -> dict:
        try:
            transports = build_transports(cfg.transports, plugins, context)
        except (ValueError, LookupError, OSError) as exc:
            click.echo(f"cannot set up the transports: {exc}", err=True)
            sys.exit(ExitCode.CONFIG)
        try:
            return await send_through_route(transports, chain, data, Envelope(cfg.mail.sender, recipients), timeout=send_timeout)
        finally:
            # A transport that fails to close changes nothing: the result is already known.
            await close_transports(
                transports.values(), failed=lambda transport, exc: click.echo(f"closing {transport.name}: {exc}", err=True)
            )

    results = asyncio.run(send())
    rows = [
        [
            rcpt,
            status.status.value,
            name,
            " ".join(x for x in (str(status.code or ""), status.enhanced, status.message) if x),
        ]
        for rcpt, (name, status) in results.items()
    ]
    if as_json:
        import json

        click.echo(
            json.dumps([dict(zip(("recipient", "result", "transport", "reply"), row, strict=True)) for row in rows], indent=2)
        )
    else:
        click.echo(format_table(["recipient", "result", "transport", "reply"], rows))
    statuses = {status.status for _, status in results.values()}
    if Status.PERMANENT in statuses:
        sys.exit(ExitCode.UNAVAILABLE)
    if Status.TEMPORARY in statuses:
        sys.exit(ExitCode.TEMPFAIL)


def pick_rule(rules: Sequence[Rule], name: str | None) -> Rule:
    """The rule named ``name``, else the first configured one, else an example CPU rule."""
    if name is None:
        return rules[0] if rules else EXAMPLE_RULE
    for rule in rules:
        if rule.name == name:
            return rule
    from alertmail.config.schema import did_you_mean

    known = [r.name for r in rules]
    hint = did_you_mean(name, known, listing="rules") if known else "the config has no [[rules]]"
    raise click.BadParameter(f"no rule named {name!r}; {hint}", param_hint="--rule")


def made_up_event(rule: Rule, now: float) -> AlertEvent:
    """A firing event of ``rule``: its threshold crossed ``FIRED`` seconds ago by a made-up margin."""
    comparison, threshold, severity = ">", rule.above, rule.severity
    if rule.critical is not None:
        threshold, severity = rule.critical, "critical"
        comparison = ">" if rule.direction >= 0 else "<"
    elif rule.below is not None:
        comparison, threshold = "<", rule.below
    if threshold is None:  # a rule that only watches for absence
        return AlertEvent("firing", rule, _labels(rule), None, None, "absent", severity, now - FIRED, now, _incident(now))
    margin = max(abs(threshold) * 0.04, 1.0 if abs(threshold) >= 1 else abs(threshold) * 0.5 or 0.01)
    value = threshold + margin if comparison == ">" else threshold - margin
    return AlertEvent("firing", rule, _labels(rule), value, threshold, comparison, severity, now - FIRED, now, _incident(now))


def made_up_history(event: AlertEvent) -> list[tuple[float, float]]:
    """Made-up samples of the last half hour: calm, then a climb that crosses the threshold at ``event.since``."""
    if event.value is None or event.threshold is None:
        return []
    step = 30.0
    start = event.at - HISTORY
    margin = event.value - event.threshold  # signed: the side the value is on
    points = []
    for i in range(int(HISTORY / step) + 1):
        t = start + i * step
        if t <= event.since:
            approach = (t - start) / (event.since - start)
            value = event.threshold - margin * (3 - 3 * approach**2 + 0.3 * math.sin(i / 1.7))
        else:
            value = event.threshold + margin * (t - event.since) / (event.at - event.since)
        points.append((t, value))
    return points


def _labels(rule: Rule) -> tuple[tuple[str, str], ...]:
    """Labels like a matching series would carry: the rule's exact matchers (globs are left out)."""
    return tuple(sorted((k, v) for k, v in rule.labels.items() if not any(c in v for c in "*?[")))


def _incident(now: float) -> str:
    return f"send-test-{int(now * 1000):x}"


def notice(rule: Rule, hostname: str, chain: Sequence[str]) -> str:
    return (
        f"This is a test sent with `alertmail send-test` on {hostname}: no rule fired. It shows how an alert of "
        f"the rule {rule.name} looks, with made-up figures (the value, the time it fired and the chart); the "
        f"process and disk figures, if any, are this host's now. It went through the route {' -> '.join(chain)}: "
        "if you read this, alerts can reach you."
    )


async def build_mail(cfg: Config, plugins: Any, rule: Rule, to: Sequence[str], chain: Sequence[str]) -> bytes:
    """The test alert as the agent's notifier makes it: rendered, with the configured templates, headers and all."""
    from alertmail.agent import render_options
    from alertmail.notify.notifier import SECTION as NOTIFY
    from alertmail.notify.notifier import Notifier
    from alertmail.render.context import collect_context
    from alertmail.replay import MailCollector

    now = time.time()
    event = made_up_event(replace(rule, to=tuple(to), repeat=0.0), now)
    points = made_up_history(event)
    paragraph = notice(rule, cfg.hostname, chain)

    def context_for(events: Sequence[AlertEvent]) -> dict:
        return {**collect_context(events), "notice": paragraph}

    prefix = " ".join(p for p in (SUBJECT_TAG, cfg.mail.subject_prefix) if p)
    collector = MailCollector()
    key = None  # sealed as the agent seals, so the alertmanager transport takes the test alert
    if getattr(cfg, "state_dir", None) is not None:
        from alertmail.rules.wire import alert_key

        try:
            key = alert_key(Path(cfg.state_dir))
        except (OSError, ValueError):
            pass
    with tempfile.TemporaryDirectory(prefix="alertmail-send-test-") as folder:
        notifier = Notifier(
            notify=cfg.section(NOTIFY),
            mail=replace(cfg.mail, route=list(chain), also_route=[], subject_prefix=prefix),
            hostname=cfg.hostname,
            timezone=cfg.agent.timezone,
            queue=collector,
            state_dir=Path(folder),
            history=lambda metric, labels: points if (metric, labels) == (event.rule.metric, event.labels) else [],
            context_for=context_for,
            render_options=render_options(cfg, plugins),
            durable=False,
            seal_key=key,
        )
        await notifier.notify([event], now)
    [mail] = collector.mails
    return mail.data
