"""alertmail: watch a machine, mail people when it needs them."""

from alertmail.hookspecs import hookimpl
from alertmail.model import (
    DeliveryResult,
    Envelope,
    MetricInfo,
    Option,
    Probe,
    RecipientStatus,
    Sample,
)

__version__ = "0.1.0"

__all__ = [
    "DeliveryResult",
    "Envelope",
    "MetricInfo",
    "Option",
    "Probe",
    "RecipientStatus",
    "Sample",
    "hookimpl",
    "__version__",
]
