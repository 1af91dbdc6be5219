"""Device profiling: how long it takes, how repeatable it is, and how far uncalibrated figures are off.

    .venv/bin/python bench/devices.py [--threads 1] [--quick-runs 3]

1. Wall time of ``profile_this_machine`` in quick mode (several runs) and full mode (one run).
2. Repeatability: per operator class, the spread of measured GFLOP/s over the quick runs.
3. Prediction error per micro-benchmark point (every size, full mode is the truth), for three
   ways of predicting one op's time with the planner's roofline (max(compute, memory) + node
   overhead):
   - analytic: peak fp32 (instruction set x clock x threads) x the default compute efficiency
     (0.3), memory bandwidth x the default memory efficiency (0.6), as an uncalibrated profile;
   - quick-calibrated: the per-class GFLOP/s of a quick profile (one size per class), i.e. the
     sizes it did not measure are out of sample;
   - the same, the measured rate alone without the roofline's memory term;
   - leave-one-out size curve: the class's full-mode points other than this one, interpolated
     in log(FLOPs) (``DeviceProfile.achieved_gflops``), rate alone.
4. Meter overhead: CPU time the sampling thread costs, per second of metering.
Writes JSON to bench/results/devices-*.json. Numbers are noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from splitpipe.devices.meters import EstimatedMeter, Ina3221Meter
from splitpipe.devices.microbench import POINTS, _class_figures, profile_this_machine
from splitpipe.devices.profile import OP_CLASSES, DeviceProfile

ROOT = Path(__file__).resolve().parents[1]


def predicted_ms(profile: DeviceProfile, point: Any, rate: float | None, roofline: bool = True) -> float:
    """The planner's roofline for one op of ``point`` (fp32 bytes of activations and weights);
    without ``roofline``, the measured rate alone (it already includes memory effects)."""
    if rate is None:
        rate = profile.peak_gflops["fp32"] * profile.compute_efficiency
    a, b = point.dims
    weights = 0
    if point.kind == "conv":
        weights = a * (a // point.groups) * point.kernel**2 + a
    elif point.kind == "matmul":
        weights = b * b
    moved = point.bytes_moved + 4 * weights
    compute = point.flops / (rate * 1e9)
    memory = moved / (profile.mem_bandwidth_gbs * 1e9 * profile.memory_efficiency) if roofline else 0.0
    return (max(compute, memory) + profile.node_overhead_us * 1e-6) * 1e3


def loo_rate(full: DeviceProfile, point: Any) -> float:
    """The class's size curve built without ``point``, read at ``point``'s FLOPs (out of sample)."""
    others = [
        p for p in full.measurement["points"] if p["op_class"] == point.op_class and p["name"] != point.name
    ]
    _rates, curves = _class_figures(others)
    rate = dataclasses.replace(full, measured_points=curves).achieved_gflops(point.op_class, point.flops)
    assert rate is not None
    return rate


def meter_cpu(meter: Any, seconds: float) -> float:
    """CPU milliseconds this process spends per second while ``meter`` samples and nothing else runs."""
    proc = psutil.Process()
    before = sum(proc.cpu_times()[:2])
    meter.start()
    time.sleep(seconds)
    meter.stop()
    return (sum(proc.cpu_times()[:2]) - before) * 1e3 / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick-runs", type=int, default=3)
    args = parser.parse_args(argv)
    out: dict[str, Any] = {
        "threads": args.threads,
        "cpu_count": psutil.cpu_count(),
        "load_avg": list(psutil.getloadavg()),
    }

    quick_runs, quick_s = [], []
    for _ in range(args.quick_runs):
        t0 = time.perf_counter()
        quick_runs.append(profile_this_machine(quick=True, threads=args.threads))
        quick_s.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    full = profile_this_machine(quick=False, threads=args.threads)
    full_s = time.perf_counter() - t0
    out["wall_s"] = {"quick": quick_s, "full": full_s}
    print(f"quick profile: {', '.join(f'{s:.2f}' for s in quick_s)} s; full profile: {full_s:.2f} s")

    spread = {}
    print(f"\n{'class':<12} {'quick runs GFLOP/s':<32} {'max/min':>7} {'full':>8}")
    for cls in OP_CLASSES:
        rates = [q.measured_gflops[cls] for q in quick_runs]
        spread[cls] = {
            "quick": rates,
            "full": full.measured_gflops[cls],
            "max_over_min": max(rates) / min(rates),
        }
        shown = ", ".join(f"{r:.2f}" for r in rates)
        print(f"{cls:<12} {shown:<32} {max(rates) / min(rates):7.2f} {full.measured_gflops[cls]:8.2f}")
    out["repeatability"] = spread

    quick = quick_runs[-1]
    analytic = DeviceProfile(
        **{
            **{k: getattr(full, k) for k in DeviceProfile.__dataclass_fields__},
            "compute_efficiency": 0.3,
            "memory_efficiency": 0.6,
            "measured_gflops": {},
            "measured_points": {},
        }
    )
    truth = {p["name"]: p["op_ms"] for p in full.measurement["points"]}
    rows = []
    print(
        f"\n{'point':<22} {'measured ms':>11} {'analytic':>9} {'quick':>7} {'q rate':>7} {'loo':>6}  (prediction / measured)"
    )
    for point in POINTS:
        measured = truth[point.name]
        ratios = {
            "analytic": predicted_ms(analytic, point, None) / measured,
            "quick": predicted_ms(quick, point, quick.measured_gflops[point.op_class]) / measured,
            "quick_rate_only": predicted_ms(
                quick, point, quick.measured_gflops[point.op_class], roofline=False
            )
            / measured,
            "loo_curve": predicted_ms(full, point, loo_rate(full, point), roofline=False) / measured,
        }
        rows.append({"point": point.name, "op_class": point.op_class, "measured_ms": measured, **ratios})
        print(
            f"{point.name:<22} {measured:11.3f} {ratios['analytic']:9.2f} {ratios['quick']:7.2f} "
            f"{ratios['quick_rate_only']:7.2f} {ratios['loo_curve']:6.2f}"
        )
    out["prediction"] = rows
    summary = {}
    for key in ("analytic", "quick", "quick_rate_only", "loo_curve"):
        errors = [abs(r[key] - 1) for r in rows]
        summary[key] = {
            "median_abs_error": statistics.median(errors),
            "max_abs_error": max(errors),
            "min_ratio": min(r[key] for r in rows),
            "max_ratio": max(r[key] for r in rows),
        }
        print(
            f"{key:<12} median |error| {summary[key]['median_abs_error']:.0%}, worst {summary[key]['max_abs_error']:.0%}, "
            f"ratio range {summary[key]['min_ratio']:.2f}-{summary[key]['max_ratio']:.2f}"
        )
    out["prediction_summary"] = summary

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "orin"
        shutil.copytree(ROOT / "tests/fixtures/devices/sysfs/jetson-orin-nano", root)
        idle = meter_cpu(type("Idle", (), {"start": lambda s: None, "stop": lambda s: None})(), 2.0)
        ina = meter_cpu(Ina3221Meter(root=root, rate_hz=20), 2.0)
        est = meter_cpu(EstimatedMeter(rate_hz=10), 2.0)
    out["meter_cpu_ms_per_s"] = {"baseline": idle, "ina3221@20Hz(fake sysfs)": ina, "estimated@10Hz": est}
    print(
        f"\nmeter CPU per second: baseline {idle:.2f} ms, INA3221 at 20 Hz {ina:.2f} ms, estimated at 10 Hz {est:.2f} ms"
    )

    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"devices-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
