"""What an alert mail with a chart costs: RSS before and after the first render, time per mail.

    python bench/render_mail.py [subprocess|in-process|off] [--runs 20] [--alerts 1]

Run each mode in its own process (RSS only grows). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time


def rss_mib() -> float:
    """Resident set size of this process, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_seconds() -> float:
    """CPU time of this process and its finished children: steadier than wall time on a shared machine."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="subprocess", choices=("subprocess", "in-process", "off"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--alerts", type=int, default=1, help="events per mail (one chart each, up to 10)")
    args = parser.parse_args()

    bare = rss_mib()
    # What the idle agent already holds; the renderer is imported by the notifier.
    import apscheduler.schedulers.asyncio  # noqa: F401
    import pluggy  # noqa: F401
    import psutil  # noqa: F401

    from alertmail.render.mail import render_alert
    from alertmail.render.view import RenderContext
    from alertmail.rules.model import AlertEvent, Rule

    idle = rss_mib()
    now = time.time()
    rule = Rule(name="disk-root-full", metric="disk.used_percent", above=90, clear=85, severity="critical")
    events = [
        AlertEvent("firing", rule, (("mount", f"/srv/{n}"),), 93.4, 90, ">", "critical", now - 720, now, f"i{n}")
        for n in range(args.alerts)
    ]

    def history(metric, labels):
        return [(now - 3600 + i * 60, 70 + 20 * (i / 60) ** 3 + math.sin(i)) for i in range(61)]

    ctx = RenderContext(hostname="bench", timezone="Europe/Berlin", history=history, charts=args.mode)
    started = time.perf_counter()
    size = len(render_alert(events, ctx).as_bytes())
    first = time.perf_counter() - started
    after_first = rss_mib()
    times, cpu = [], []
    for _ in range(args.runs):
        started, used = time.perf_counter(), cpu_seconds()
        render_alert(events, ctx).as_bytes()
        times.append(time.perf_counter() - started)
        cpu.append(cpu_seconds() - used)
    print(f"mode {args.mode}, {args.alerts} alert(s) per mail, mail {size / 1024:.0f} KiB")
    print(
        f"RSS: bare interpreter {bare:.1f} MiB, agent imports + renderer {idle:.1f} MiB, "
        f"after the first mail {after_first:.1f} MiB (+{after_first - idle:.1f}), after {args.runs} more {rss_mib():.1f} MiB"
    )
    print(
        f"time per mail: first {first * 1000:.0f} ms, median of {args.runs} {statistics.median(times) * 1000:.0f} ms, "
        f"max {max(times) * 1000:.0f} ms; CPU (with the chart process) median {statistics.median(cpu) * 1000:.0f} ms"
    )
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
