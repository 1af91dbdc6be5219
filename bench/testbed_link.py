"""The emulated testbed, set against measured: link rate, round-trip time, device CPU, transfers.

    sudo .venv/bin/python bench/testbed_link.py [--reps 3]

One testbed, changed in place with ``Testbed.set`` between settings (as the sweep does):

1. rate: 2, 10, 50 Mbit/s set (RTT 20 ms), TCP goodput measured both ways; the ceiling is
   1448/1514 = 0.956 of the set rate, since tbf counts whole Ethernet frames;
2. RTT: 10, 20, 40, 80 ms set (50 Mbit/s), median and minimum of 10 small round trips;
3. device CPU: 0.1, 0.25, 0.5, 1.0 of a core set, CPU share measured from the cgroup's counter
   and the slowdown of a fixed Python loop (wall time throttled / CPU time free);
4. transfers: a request of N bytes answered by 8 bytes, on a warm connection, against the
   model RTT + N x 1514/1448 x 8 / rate (what the planner's link model predicts);
5. how long ``up`` (with its measurement) and ``set_rate`` + measurement take.

Writes JSON to bench/results/testbed_link-*.json and prints a Markdown table. Every figure is
measured; the machine's load average is recorded, since other work on a shared machine moves
the CPU figures most.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from splitpipe.testbed import Testbed, TestbedOptions
from splitpipe.testbed.measure import measure_transfer

ROOT = Path(__file__).resolve().parents[1]
WIRE = 1514 / 1448  # bytes on the wire per payload byte at MSS 1448 (tbf counts frames)


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="measurements per setting")
    parser.add_argument(
        "--json", type=Path, help="output file (default bench/results/testbed_link-<time>.json)"
    )
    args = parser.parse_args()
    out: dict[str, Any] = {"load_before": os.getloadavg(), "reps": args.reps, "measured": True}

    tb = Testbed(
        TestbedOptions(name=f"bench{os.getpid() % 100_000}", rate_mbit=10, rtt_ms=20, device_cpu=1.0)
    )
    t0 = time.monotonic()
    first = tb.up()
    out["up_with_measurement_s"] = time.monotonic() - t0
    out["delay_method"] = tb.delay_method
    out["first_measurement"] = first.to_dict() if first else None
    try:
        rates = []
        for rate in (2.0, 10.0, 50.0):
            t0 = time.monotonic()
            tb.set(rate_mbit=rate, measure=False)
            ms = [tb.measure(rtt=False, cpu=False) for _ in range(args.reps)]
            took = (time.monotonic() - t0) / args.reps
            up = [m.uplink_mbit for m in ms if m.uplink_mbit is not None]
            down = [m.downlink_mbit for m in ms if m.downlink_mbit is not None]
            rates.append(
                {
                    "set_mbit": rate,
                    "uplink_mbit": _stats(up),
                    "downlink_mbit": _stats(down),
                    "set_and_measure_s": took,
                }
            )
        out["rate"] = rates

        rtts = []
        tb.set(rate_mbit=50, measure=False)
        for rtt in (10.0, 20.0, 40.0, 80.0):
            tb.set(rtt_ms=rtt, measure=False)
            ms = [tb.measure(rate=False, cpu=False) for _ in range(args.reps)]
            rtts.append(
                {
                    "set_ms": rtt,
                    "median_ms": _stats([m.rtt_ms for m in ms if m.rtt_ms is not None]),
                    "min_ms": min(m.rtt_min_ms for m in ms if m.rtt_min_ms is not None),
                    "max_ms": max(m.rtt_max_ms for m in ms if m.rtt_max_ms is not None),
                }
            )
        out["rtt"] = rtts

        cpus = []
        for share in (0.1, 0.25, 0.5, 1.0):
            tb.set(device_cpu=share, measure=False)
            ms = [tb.measure(rate=False, rtt=False) for _ in range(args.reps)]
            cpus.append(
                {
                    "set": share,
                    "share": _stats([m.device_cpu_share for m in ms if m.device_cpu_share is not None]),
                    "slowdown": _stats([m.device_slowdown for m in ms if m.device_slowdown is not None]),
                }
            )
        out["cpu"] = cpus

        transfers = []
        for rate, rtt, sizes in (
            (10.0, 40.0, [1_000, 10_000, 100_000, 1_000_000]),
            (2.0, 20.0, [1_000, 10_000, 100_000]),
        ):
            tb.set(rate_mbit=rate, rtt_ms=rtt, device_cpu=1.0, measure=False)
            for size, times in measure_transfer(tb, sizes, args.reps).items():
                model = rtt + size * WIRE * 8 / (rate * 1e6) * 1000
                transfers.append(
                    {
                        "rate_mbit": rate,
                        "rtt_ms": rtt,
                        "bytes": size,
                        "measured_ms": _stats(times),
                        "model_ms": model,
                        "ratio": statistics.median(times) / model,
                    }
                )
        out["transfer"] = transfers
    finally:
        tb.down()
    out["load_after"] = os.getloadavg()

    path = args.json or ROOT / "bench" / "results" / f"testbed_link-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")

    print(
        f"delay by {out['delay_method']}; load average {out['load_before'][0]:.1f} before, "
        f"{out['load_after'][0]:.1f} after; {args.reps} measurements per setting (median [min-max])\n"
    )
    print("| rate set | uplink measured | downlink measured | uplink / set | set + measure |")
    print("|---|---|---|---|---|")
    for r in rates:
        u, d = r["uplink_mbit"], r["downlink_mbit"]
        print(
            f"| {r['set_mbit']:g} Mbit/s | {u['median']:.2f} [{u['min']:.2f}-{u['max']:.2f}] | "
            f"{d['median']:.2f} [{d['min']:.2f}-{d['max']:.2f}] | {u['median'] / r['set_mbit']:.3f} | "
            f"{r['set_and_measure_s']:.1f} s |"
        )
    print("\n| RTT set | median measured | min | max |")
    print("|---|---|---|---|")
    for r in rtts:
        m = r["median_ms"]
        print(f"| {r['set_ms']:g} ms | {m['median']:.2f} ms | {r['min_ms']:.2f} | {r['max_ms']:.2f} |")
    print("\n| device CPU set | CPU share measured | slowdown of a Python loop |")
    print("|---|---|---|")
    for c in cpus:
        s, w = c["share"], c["slowdown"]
        print(
            f"| {c['set']:g} | {s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}] | "
            f"{w['median']:.2f}x [{w['min']:.2f}-{w['max']:.2f}] |"
        )
    print("\n| link | request | measured | model RTT + wire bytes / rate | measured / model |")
    print("|---|---|---|---|---|")
    for t in transfers:
        print(
            f"| {t['rate_mbit']:g} Mbit/s, {t['rtt_ms']:g} ms | {t['bytes']:,} B | "
            f"{t['measured_ms']['median']:.1f} ms | {t['model_ms']:.1f} ms | {t['ratio']:.3f} |"
        )
    print(f"\nup with measurement: {out['up_with_measurement_s']:.1f} s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
