"""What an alert mail's charts cost, per way of drawing them: CPU per chart, time per mail, RSS.

    python bench/render_mail.py [--runs 20] [--alerts 1]            # every option, side by side
    python bench/render_mail.py OPTION [--runs 20] [--alerts 1]     # one option, in detail

Options: what ``[mail].charts`` offers, and matplotlib (the drawer the charts had before,
``pip install -e '.[bench]'``) drawing the same 1280x480 chart, as the peer measured in the same run:

    in-process       Pillow in the agent's process (the default)
    subprocess       Pillow in a short-lived child per mail
    off              no charts
    mpl-in-process   matplotlib in the agent's process
    mpl-subprocess   matplotlib in a short-lived child per mail (the earlier default)
    mpl-worker       matplotlib in one long-lived child that draws every mail's charts

Each option runs in its own process (RSS only grows). CPU counts the chart processes too;
"chart process RSS" is the peak of the child or the worker. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

OPTIONS = ("in-process", "subprocess", "off", "mpl-in-process", "mpl-subprocess", "mpl-worker")
PEER = "mpl-subprocess"


def rss_mib() -> float:
    """Resident set size of this process, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_seconds() -> float:
    """CPU time of this process and its finished children: steadier than wall time on a shared machine."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def matplotlib_png(spec) -> bytes:
    """The chart as matplotlib drew it before, at 1280x480 (200 dpi), on the same axes as Pillow's."""
    import datetime as dt
    import zoneinfo

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter
    from PIL import Image

    from alertmail.render.chart import time_range, value_range
    from alertmail.render.plot import compact

    zone = zoneinfo.ZoneInfo(spec.timezone)
    start, end = time_range(spec)
    points = sorted((t, v) for t, v in spec.points if start <= t <= end and math.isfinite(v))

    def when(t: float) -> float:
        return mdates.date2num(dt.datetime.fromtimestamp(t, dt.UTC))

    fig = Figure(figsize=(6.4, 2.4), dpi=200)
    ax = fig.add_subplot()
    ax.set_xlim(when(start), when(end + (end - start) * 0.01))
    if spec.shade_from is not None and min(spec.shade_to or end, end) > max(spec.shade_from, start):
        ax.axvspan(when(max(spec.shade_from, start)), when(min(spec.shade_to or end, end)), color="#f5b7b1", alpha=0.55, lw=0)
    xs, ys = [when(t) for t, _ in points], [v for _, v in points]
    ax.fill_between(xs, ys, min([*ys, 0.0]), color="#dbe7f3", linewidth=0)
    ax.plot(xs, ys, color="#1f4e79", linewidth=1.6)
    ax.plot(xs[-1:], ys[-1:], "o", color="#1f4e79", markersize=4)
    if spec.threshold is not None:
        ax.axhline(spec.threshold, color="#c0392b", linestyle="--", linewidth=1.2, label=f"threshold {compact(spec.threshold)}")
    if spec.clear is not None:
        ax.axhline(spec.clear, color="#1e8449", linestyle=":", linewidth=1.4, label=f"clear {compact(spec.clear)}")
    ax.set_ylim(*value_range(spec, start, end))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(tz=zone))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=zone))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: compact(v)))
    ax.set_xlabel(f"time ({dt.datetime.fromtimestamp(end, zone):%Z})", fontsize=8, color="#555555")
    ax.set_ylabel(spec.unit, fontsize=8, color="#555555")
    ax.set_title(spec.title, fontsize=9, loc="left", color="#222222")
    ax.tick_params(labelsize=8, colors="#555555")
    ax.grid(True, color="#e5e5e5", linewidth=0.6)
    ax.legend(fontsize=7, loc="upper left", frameon=False, ncol=3)
    fig.subplots_adjust(left=0.085, right=0.985, top=0.89, bottom=0.19)
    drawn = io.BytesIO()
    fig.savefig(drawn, format="png", dpi=200, metadata={"Software": None})
    out = io.BytesIO()
    image = Image.open(io.BytesIO(drawn.getvalue())).convert("RGB")
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(out, format="PNG", optimize=True)
    return out.getvalue()


def draw_requests(lines) -> None:
    """A matplotlib chart process: each line a JSON list of chart specs, answered by a line of base64 PNGs."""
    from alertmail.render.chart import ChartSpec

    for line in lines:
        specs = [ChartSpec.from_json(raw) for raw in json.loads(line)]
        print(json.dumps([base64.b64encode(matplotlib_png(s)).decode() for s in specs]), flush=True)


class Worker:
    """One long-lived matplotlib chart process, started with the first mail."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None

    def render_pngs(self, specs, **_options) -> list[bytes | None]:
        if self.process is None:
            self.process = subprocess.Popen(
                [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps([asdict(s) for s in specs]) + "\n")
        self.process.stdin.flush()
        return [base64.b64decode(p) for p in json.loads(self.process.stdout.readline())]

    def cpu_and_rss(self) -> tuple[float, float]:
        if self.process is None:
            return 0.0, 0.0
        import psutil

        p = psutil.Process(self.process.pid)
        times = p.cpu_times()
        return times.user + times.system, p.memory_info().rss / 2**20


def mpl_subprocess(specs, **_options) -> list[bytes | None]:
    """Today's protocol, one child per mail, drawing with matplotlib."""
    request = json.dumps([asdict(s) for s in specs]) + "\n"
    done = subprocess.run([sys.executable, __file__, "--draw"], input=request, capture_output=True, text=True, check=True)
    return [base64.b64decode(p) for p in json.loads(done.stdout)]


def measure(option: str, runs: int, alerts: int) -> dict:
    """The figures of one option, in this process."""
    bare = rss_mib()
    # What the idle agent already holds; the renderer is imported by the notifier.
    import apscheduler.schedulers.asyncio  # noqa: F401
    import pluggy  # noqa: F401
    import psutil  # noqa: F401

    from alertmail.render import chart
    from alertmail.render.mail import render_alert
    from alertmail.render.view import RenderContext
    from alertmail.rules.model import AlertEvent, Rule

    worker = Worker()
    charts = {"off": "off", "subprocess": "subprocess"}.get(option, "in-process")
    if option == "mpl-in-process":
        chart.render_png = matplotlib_png  # type: ignore[assignment]
    elif option == "mpl-subprocess":
        chart.render_pngs = mpl_subprocess  # type: ignore[assignment]
    elif option == "mpl-worker":
        chart.render_pngs = worker.render_pngs  # type: ignore[assignment]

    idle = rss_mib()
    now = time.time()
    rule = Rule(name="disk-root-full", metric="disk.used_percent", above=90, clear=85, severity="critical")
    events = [
        AlertEvent("firing", rule, (("mount", f"/srv/{n}"),), 93.4, 90, ">", "critical", now - 720, now, f"i{n}")
        for n in range(alerts)
    ]

    def history(metric, labels):  # an hour at a 5 s interval: the most the agent keeps (720 points)
        return [(now - 3600 + i * 5, 70 + 20 * (i / 720) ** 3 + math.sin(i / 10)) for i in range(721)]

    ctx = RenderContext(hostname="bench", timezone="Europe/Berlin", history=history, charts=charts)
    started = time.perf_counter()
    size = len(render_alert(events, ctx).as_bytes())
    first = time.perf_counter() - started
    after_first = rss_mib()
    times, cpu = [], []
    for _ in range(runs):
        started, used, (worker_used, _) = time.perf_counter(), cpu_seconds(), worker.cpu_and_rss()
        render_alert(events, ctx).as_bytes()
        times.append(time.perf_counter() - started)
        cpu.append(cpu_seconds() - used + worker.cpu_and_rss()[0] - worker_used)
    helper = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, worker.cpu_and_rss()[1])
    return {
        "option": option,
        "alerts": alerts,
        "runs": runs,
        "mail_kib": size / 1024,
        "rss_bare": bare,
        "rss_idle": idle,
        "rss_after_first": after_first,
        "rss_after_all": rss_mib(),
        "helper_rss": helper,
        "first_ms": first * 1000,
        "wall_ms": statistics.median(times) * 1000,
        "wall_max_ms": max(times) * 1000,
        "cpu_ms_per_chart": statistics.median(cpu) * 1000 / alerts,
    }


def have_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("option", nargs="?", choices=OPTIONS, help="measure only this one, in detail")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--alerts", type=int, default=1, help="events per mail (one chart each, up to 10)")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--draw", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.draw or args.serve:
        draw_requests(sys.stdin)
        return
    if args.option:
        if args.option.startswith("mpl-") and not have_matplotlib():
            sys.exit(f"{args.option}: matplotlib is not installed (pip install -e '.[bench]')")
        figures = measure(args.option, args.runs, args.alerts)
        if args.json:
            print(json.dumps(figures))
            return
        f = figures
        print(f"option {args.option}, {args.alerts} alert(s) per mail, mail {f['mail_kib']:.0f} KiB")
        print(
            f"RSS: bare interpreter {f['rss_bare']:.1f} MiB, agent imports + renderer {f['rss_idle']:.1f} MiB, "
            f"after the first mail {f['rss_after_first']:.1f} MiB (+{f['rss_after_first'] - f['rss_idle']:.1f}), "
            f"after {args.runs} more {f['rss_after_all']:.1f} MiB; chart process peak {f['helper_rss']:.1f} MiB"
        )
        print(
            f"time per mail: first {f['first_ms']:.0f} ms, median of {args.runs} {f['wall_ms']:.0f} ms, "
            f"max {f['wall_max_ms']:.0f} ms; CPU per chart (chart processes included) median {f['cpu_ms_per_chart']:.1f} ms"
        )
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        return

    rows = []
    for option in OPTIONS:
        if option.startswith("mpl-") and not have_matplotlib():
            print(f"{option}: skipped, matplotlib is not installed (pip install -e '.[bench]')")
            continue
        command = [sys.executable, __file__, option, "--runs", str(args.runs), "--alerts", str(args.alerts), "--json"]
        done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)
        rows.append(json.loads(done.stdout))
    peer = next((r for r in rows if r["option"] == PEER), None)
    print(f"{args.alerts} chart(s) per mail, median of {args.runs} mails after the first; each option in its own process")
    print(
        f"{'option':<16}{'CPU/chart':>11}{'vs ' + PEER:>19}{'mail':>9}{'first':>9}"
        f"{'agent RSS +':>13}{'chart proc':>12}{'PNG mail':>10}"
    )
    for r in rows:
        ratio = f"{r['cpu_ms_per_chart'] / peer['cpu_ms_per_chart']:.3f}x" if peer and peer["cpu_ms_per_chart"] else "-"
        print(
            f"{r['option']:<16}{r['cpu_ms_per_chart']:>8.1f} ms{ratio:>19}{r['wall_ms']:>6.0f} ms{r['first_ms']:>6.0f} ms"
            f"{r['rss_after_all'] - r['rss_idle']:>9.1f} MiB{r['helper_rss']:>8.1f} MiB{r['mail_kib']:>6.0f} KiB"
        )
    print(
        f"agent RSS before the first mail {statistics.median(r['rss_idle'] for r in rows):.1f} MiB; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
