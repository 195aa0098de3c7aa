"""The exporter's connections: a cap, an idle timeout, and pages written off the event loop and shared."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import subprocess
import sys
import threading
import time

import pytest

from alertmail.exporter.exposition import Family
from alertmail.exporter.server import MetricsServer
from tests.fleet_peers import HOST, Prometheus, http_get
from tests.gauge import install_gauge
from tests.peers import free_port
from tests.probe_agent import PLUGIN_AGENT, write_config
from tests.test_agent_e2e import pickup_mails, stop_agent, wait_for


class IdleFlood:
    """Keeps ``count`` connections open to host:port that never send a byte, opening a new one for each closed."""

    def __init__(self, host: str, port: int, count: int) -> None:
        self.address, self.count = (host, port), count
        self.sockets: list[socket.socket] = []
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            readable = select.select(self.sockets, [], [], 0)[0] if self.sockets else []
            for sock in readable:  # readable and idle: the server closed it
                self.sockets.remove(sock)
                sock.close()
            while len(self.sockets) < self.count and not self._stop.is_set():
                try:
                    self.sockets.append(socket.create_connection(self.address, timeout=2))
                    self.opened += 1
                except OSError:
                    break
            self._stop.wait(0.05)

    def __enter__(self) -> IdleFlood:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self.sockets:
            sock.close()


def start_agent_with_fds(config, fds: int) -> subprocess.Popen:
    """``alertmail run`` with at most ``fds`` file descriptors, as an agent under systemd's 1024 has."""
    code = (
        "import resource, runpy, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({fds}, {fds}))\n"
        f"sys.argv = ['alertmail', 'run', '--config', {str(config)!r}]\n"
        "runpy.run_module('alertmail', run_name='__main__')\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=config.parent)


@pytest.mark.peers
def test_idle_connections_to_the_exporter_never_take_the_agents_descriptors_nor_the_scrape(tmp_path):
    port = free_port()
    value = install_gauge(tmp_path, metric="test.level", labels={"mount": "/data"}, unit="percent", description="level")
    config = write_config(
        tmp_path,
        f"""
        [exporter]
        listen = "{HOST}:{port}"
        max_connections = 16
        idle_timeout = "2s"

        [[rules]]
        name = "level-high"
        metric = "test.level"
        above = 50
        """,
        agent=PLUGIN_AGENT,
    )
    agent = start_agent_with_fds(config, 160)
    try:
        wait_for(lambda: _get(f"http://{HOST}:{port}/metrics"), timeout=30, what="the exporter")
        with IdleFlood(HOST, port, 400) as flood, Prometheus(tmp_path / "prometheus", [f"{HOST}:{port}"]) as prometheus:
            wait_for(lambda: flood.opened >= 400, timeout=30, what="the idle connections")
            # The agent keeps its descriptors: it still probes, mails and answers scrapes.
            value.write_text("93")
            wait_for(lambda: pickup_mails(tmp_path), timeout=30, what="the alert mail, written while the flood goes on")
            wait_for(lambda: prometheus.query("alertmail_test_level_percent == 93"), timeout=30, what="a scrape of 93")
            time.sleep(3)
            assert prometheus.query('min_over_time(up{job="alertmail"}[3s]) == 1'), "a scrape failed during the flood"
            print(f"idle connections opened during the test: {flood.opened}")
    finally:
        log = stop_agent(agent)
    assert agent.returncode == 0, log
    assert "Too many open files" not in log, log
    assert "connection(s) closed at max_connections = 16" in log


def _get(url: str) -> bytes | None:
    try:
        return http_get(url)[2]
    except OSError:
        return None


class BlockingCollector:
    """A collector whose page takes until the test lets it go: shows where, and how often, pages are written."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.pages = 0
        self.gathered = 0

    def gather(self):
        self.gathered += 1
        return [], []

    def families(self, own, samples):
        self.pages += 1
        if not self.release.wait(10):
            raise TimeoutError("never let go: the page was written on the event loop")
        family = Family("alertmail_test", "gauge", "a test")
        family.add({}, 1.0)
        return [family]

    def collect(self):  # the shape of the collector before pages were written off the loop
        return self.families(*self.gather())


async def _scrape(port: int) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    return answer


def test_scrapes_that_come_together_share_one_page_written_off_the_event_loop():
    collector = BlockingCollector()

    async def main() -> list[bytes]:
        server = MetricsServer(f"{HOST}:{free_port()}", collector, cache_for=0)
        await server.start()
        try:
            scrapes = [asyncio.ensure_future(_scrape(server.port)) for _ in range(4)]
            while collector.pages == 0:
                await asyncio.sleep(0.01)  # the loop runs while the page is being written
            await asyncio.sleep(0.2)  # let every scrape arrive
            collector.release.set()
            return await asyncio.gather(*scrapes)
        finally:
            await server.stop()

    answers = asyncio.run(main())
    assert all(a.startswith(b"HTTP/1.1 200 OK") and a.endswith(b"alertmail_test 1.0\n") for a in answers), answers
    assert collector.pages == 1 and collector.gathered == 1


def test_a_page_is_reused_for_cache_for_and_then_written_anew():
    collector = BlockingCollector()
    collector.release.set()

    async def main() -> None:
        server = MetricsServer(f"{HOST}:{free_port()}", collector, cache_for=30)
        await server.start()
        try:
            await _scrape(server.port)
            await _scrape(server.port)
            assert collector.pages == 1
            server.cache_for = 0
            await _scrape(server.port)
            assert collector.pages == 2
        finally:
            await server.stop()

    asyncio.run(main())


def test_a_connection_that_sends_nothing_is_closed_after_idle_timeout_and_the_cap_pushes_out_the_oldest_idle():
    collector = BlockingCollector()
    collector.release.set()

    async def main() -> None:
        server = MetricsServer(f"{HOST}:{free_port()}", collector, max_connections=3, idle_timeout=1.0)
        await server.start()
        try:
            idle = [await asyncio.open_connection(HOST, server.port) for _ in range(3)]
            await asyncio.sleep(0.2)
            assert len(server._open) == 3
            # At the cap, a scrape still gets through: the oldest idle connection makes room.
            assert (await _scrape(server.port)).startswith(b"HTTP/1.1 200 OK")
            assert await asyncio.wait_for(idle[0][0].read(), 5) == b""
            assert len(server._open) <= 3 and server.refused == 1
            # The others are closed once idle_timeout is over, well before the old 10 s.
            started = time.monotonic()
            for reader, _ in idle[1:]:
                with contextlib.suppress(ConnectionError):
                    assert await asyncio.wait_for(reader.read(), 5) == b""
            assert time.monotonic() - started < 5
            assert not server._open
            for _, writer in idle:
                writer.close()
        finally:
            await server.stop()

    asyncio.run(main())


def test_connection_limits_out_of_range_are_refused_by_check_with_the_key_and_the_default(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        '[mail]\nfrom = "a@example.test"\nto = ["b@example.test"]\nroute = ["pickup"]\n'
        '[exporter]\nlisten = "127.0.0.1:9464"\nmax_connections = 0\nidle_timeout = "0s"\ncache_for = "2h"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "alertmail", "check", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 78, result.stdout + result.stderr
    out = result.stdout + result.stderr
    assert f"{config}: exporter.max_connections: 0 is out of range; give 1 to 10000 (default 32)" in out
    assert f"{config}: exporter.idle_timeout: 0s is out of range; give more than 0s and at most 1h (default 5s)" in out
    assert f"{config}: exporter.cache_for: 7200s is out of range; give 0s to 1h (default 1s)" in out
