"""The root of alertmail's exceptions.

Every error alertmail or a bundled plugin raises on purpose derives from
``AlertmailError``; where one resembles a stdlib error it inherits that type too, so
callers may catch either (the shape aiosmtplib and httpx use)::

    AlertmailError
    ├── ConfigError            config.schema   every problem of one config file
    ├── PluginError            loader          a plugin broke the plugin contract
    ├── SampleFileError        probes.samples  a recorded-samples CSV that cannot be read (ValueError)
    ├── QueueWriteError        queue.spool     a message could not be made durable (OSError)
    ├── QueueLocked            queue.spool     another process owns the queue folder (RuntimeError)
    ├── DkimKeyError           delivery.dkim   a DKIM private key that cannot be used (ValueError)
    └── raised by the bundled plugins:
        ├── RouteError         transports.mx          no way to the recipient's domain
        ├── SessionError       transports.smtpclient  one SMTP session failed
        ├── RelayConfigError   relay.service          a [relay] table that cannot run (ValueError)
        ├── UsersFileError     relay.users            an unreadable relay users file (ValueError)
        ├── PickupError        relay.watcher          a malformed pickup file (ValueError)
        └── CommandRefused     relay.server           an SMTP command answered with an error reply
"""

from __future__ import annotations


class AlertmailError(Exception):
    """Base of every exception alertmail raises on purpose."""
