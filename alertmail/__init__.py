"""alertmail: watch a machine, mail people when it needs them.

This module is the public API: everything a plugin (bundled or third-party) may use is
named in ``__all__`` and imported from here, never from the modules behind it. The
values that flow through every stage are imported at once; the queue, badmail, outbox
and command-line helpers load on first use, so a probe plugin costs the agent nothing more.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from alertmail.config.schema import (
    Checker,
    ConfigError,
    Option,
    Settings,
    did_you_mean,
    resolve_secret,
    setting,
)
from alertmail.errors import AlertmailError
from alertmail.exitcodes import ExitCode
from alertmail.fsutil import fsync_dir, write_atomic
from alertmail.hookspecs import hookimpl
from alertmail.model import (
    DeliveryResult,
    Envelope,
    MetricInfo,
    Probe,
    RecipientStatus,
    Sample,
    ServiceContext,
    Status,
    TransportContext,
    label_text,
    message_bytes,
)
from alertmail.protocols import ProbeProtocol, Service, Transport  # what a probe, a service and a transport provide
from alertmail.units import format_duration, parse_address, parse_duration, parse_size
from alertmail.version import __version__

if TYPE_CHECKING:
    from alertmail.cli.options import DEFAULT_CONFIG, config_option, load_or_exit
    from alertmail.delivery.sevenbit import ConversionError, fit_for_server
    from alertmail.rules.wire import alert_key, alerts_in, read_key, sealed_alerts

# name -> module, imported on first access (PEP 562).
_LAZY = {
    "fit_for_server": "alertmail.delivery.sevenbit",
    "ConversionError": "alertmail.delivery.sevenbit",
    "alerts_in": "alertmail.rules.wire",
    "sealed_alerts": "alertmail.rules.wire",
    "alert_key": "alertmail.rules.wire",
    "read_key": "alertmail.rules.wire",
    "DEFAULT_CONFIG": "alertmail.cli.options",
    "config_option": "alertmail.cli.options",
    "load_or_exit": "alertmail.cli.options",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'alertmail' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [  # noqa: RUF022  grouped by what a plugin does with them
    # plugins and hooks
    "hookimpl",
    "Probe",
    "Sample",
    "MetricInfo",
    "label_text",
    "Transport",
    "TransportContext",
    "ProbeProtocol",
    "Service",
    "ServiceContext",
    # mail and its delivery
    "Envelope",
    "Status",
    "RecipientStatus",
    "DeliveryResult",
    "message_bytes",
    "fit_for_server",
    "ConversionError",
    "alerts_in",
    "sealed_alerts",
    "alert_key",
    "read_key",
    # configuration
    "Settings",
    "setting",
    "Option",
    "Checker",
    "ConfigError",
    "did_you_mean",
    "resolve_secret",
    "parse_address",
    "parse_duration",
    "parse_size",
    "format_duration",
    # errors, files, the command line
    "AlertmailError",
    "ExitCode",
    "write_atomic",
    "fsync_dir",
    "DEFAULT_CONFIG",
    "config_option",
    "load_or_exit",
    "__version__",
]
