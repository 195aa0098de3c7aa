"""alertmail: watch a machine, mail people when it needs them.

This module is the public API: everything a plugin (bundled or third-party) may use is
named in ``__all__`` and imported from here, never from the modules behind it. Each name
loads its module on first use, so ``import alertmail`` costs next to nothing: a plugin
pays for what it uses, and ``alertmail-sendmail`` (a process per mail) for none of it.
"""

from alertmail.version import __version__

# ``typing`` alone costs more than the rest of ``import alertmail``: type checkers take
# this name as true (mypy, pyright), the interpreter never imports what it guards.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from alertmail.cli.options import DEFAULT_CONFIG, config_option, load_or_exit
    from alertmail.config.schema import (
        Checker,
        ConfigError,
        Option,
        Settings,
        did_you_mean,
        resolve_secret,
        setting,
    )
    from alertmail.delivery.sevenbit import ConversionError, fit_for_server
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
    from alertmail.rules.wire import alert_key, alerts_in, read_key, sealed_alerts
    from alertmail.units import format_duration, parse_address, parse_duration, parse_size

# The module behind each public name, imported on first access (PEP 562): every process
# that imports the package, `alertmail-sendmail` for each mail, pays only for what it uses.
_LAZY = {
    name: module
    for module, names in {
        "alertmail.config.schema": (
            "Checker",
            "ConfigError",
            "Option",
            "Settings",
            "did_you_mean",
            "resolve_secret",
            "setting",
        ),
        "alertmail.errors": ("AlertmailError",),
        "alertmail.exitcodes": ("ExitCode",),
        "alertmail.fsutil": ("fsync_dir", "write_atomic"),
        "alertmail.hookspecs": ("hookimpl",),
        "alertmail.model": (
            "DeliveryResult",
            "Envelope",
            "MetricInfo",
            "Probe",
            "RecipientStatus",
            "Sample",
            "ServiceContext",
            "Status",
            "TransportContext",
            "label_text",
            "message_bytes",
        ),
        "alertmail.protocols": ("ProbeProtocol", "Service", "Transport"),
        "alertmail.units": ("format_duration", "parse_address", "parse_duration", "parse_size"),
        "alertmail.delivery.sevenbit": ("ConversionError", "fit_for_server"),
        "alertmail.rules.wire": ("alert_key", "alerts_in", "read_key", "sealed_alerts"),
        "alertmail.cli.options": ("DEFAULT_CONFIG", "config_option", "load_or_exit"),
    }.items()
    for name in names
}


def __getattr__(name: str) -> "Any":
    module = _LAZY.get(name) if name in __all__ else None
    if module is None:
        raise AttributeError(f"module 'alertmail' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
