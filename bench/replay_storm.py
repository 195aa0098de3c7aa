"""What a replay and a storm cost: replay speed on a recorded day, and a burst through the storm cap.

    python bench/replay_storm.py [--series 5] [--hours 24] [--burst 200]

1. A day of 10-second samples for N series (each fires for an hour every four) replayed
   with the agent's 1-second tick and group_wait 30s: wall time, samples per second.
2. A burst of B alerts, one every 3 s, through the default cap (10 mails per hour, a
   digest every 15 min): mails sent, the most in any hour, events listed, wall time.
3. What importing the silence, storm and heartbeat modules adds to a process's RSS.

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import time


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=5)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args()

    import alertmail.config.load
    import alertmail.render.mail
    import alertmail.rules.engine

    before = rss_mb()
    import alertmail.notify.heartbeat
    import alertmail.notify.runtime_silences
    import alertmail.notify.silences
    import alertmail.notify.storm  # noqa: F401

    after = rss_mb()

    from alertmail.model import Sample
    from alertmail.notify.notifier import NotifySettings
    from alertmail.replay import replay
    from alertmail.rules.model import Rule

    t0 = 1795698000.0
    rules = [Rule(name=f"r{i}", metric=f"m{i}", above=90, to=("ops@example.test",)) for i in range(args.series)]
    steps = int(args.hours * 360)
    samples = [
        Sample(f"m{i}", 95.0 if (k // 360) % 4 == 0 else 50.0, {"i": str(i)}, t0 + 10 * k)
        for k in range(steps)
        for i in range(args.series)
    ]
    start = time.perf_counter()
    day = asyncio.run(replay(samples, rules, notify=NotifySettings(group_wait=30.0, max_mails_per_hour=0)))
    took = time.perf_counter() - start
    print(
        f"replay: {len(samples)} samples over {args.hours:g} h (tick 1s, group_wait 30s): {took:.2f} s, "
        f"{len(samples) / took:,.0f} samples/s; {len(day.events)} events, {len(day.mails)} mails"
    )

    disk = Rule(name="disk-full", metric="disk.used_percent", above=90, to=("ops@example.test",))
    burst = [Sample("disk.used_percent", 95.0, {"mount": f"/srv/vol{i:04d}"}, t0 + 3 * i) for i in range(args.burst)]
    start = time.perf_counter()
    cap = NotifySettings(group_wait=0.0, max_mails_per_hour=10, digest_interval=900.0)
    storm = asyncio.run(replay(burst, [disk], notify=cap))
    took = time.perf_counter() - start
    times = sorted(m.at for m in storm.mails)
    most = max(sum(1 for u in times if t - 3600 < u <= t) for t in times)
    text = "\n".join(m.message.get_body(("plain",)).get_content() for m in storm.mails)
    listed = sum(1 for i in range(args.burst) if f"/srv/vol{i:04d}" in text)
    print(
        f"storm: {args.burst} alerts in {3 * args.burst / 60:g} min, cap 10/h, digest 15m: {len(storm.mails)} mails "
        f"(most in any hour {most}), {listed}/{args.burst} events listed, {took:.2f} s"
    )
    print(f"RSS: silences + storm + heartbeat modules add {after - before:.2f} MB ({before:.1f} -> {after:.1f} MB)")


if __name__ == "__main__":
    main()
