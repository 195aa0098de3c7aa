"""The Probe, Transport and Service protocols of the public API, checked when a plugin registers."""

from __future__ import annotations

import textwrap

from alertmail import ProbeProtocol, Service, Transport
from alertmail.loader import load_plugins


def test_every_bundled_probe_transport_and_service_satisfies_its_public_protocol():
    plugins = load_plugins()
    assert plugins.probes and plugins.transports and plugins.services
    assert all(isinstance(probe, ProbeProtocol) for probe in plugins.probes.values())
    assert all(isinstance(cls, type) and isinstance(cls, Transport) for cls in plugins.transports.values())
    assert all(isinstance(cls, type) and isinstance(cls, Service) for cls in plugins.services)


BROKEN = """
from alertmail import hookimpl


class Listener:  # no section: no config table could ever enable it
    name = "listener"
    options = {}

    async def start(self, context):
        pass

    async def stop(self):
        pass


class Webhook:
    name = "webhook"
    options = {}

    async def send(self, message, envelope):
        pass


@hookimpl
def register_services(register):
    register(Listener)


@hookimpl
def register_transports(register):
    register(Webhook())  # an instance where the class is due
"""


def test_a_service_or_transport_that_breaks_its_protocol_is_reported_not_registered(tmp_path):
    folder = tmp_path / "plugins.d"
    folder.mkdir()
    (folder / "broken.py").write_text(textwrap.dedent(BROKEN))
    plugins = load_plugins([folder])
    error = plugins.infos["broken"].error or ""
    assert "a service is a class with a str 'name' and 'section'" in error
    assert "listener" not in plugins.infos["broken"].services
    assert all(cls.name != "listener" for cls in plugins.services)
    assert "webhook" not in plugins.transports
