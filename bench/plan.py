"""Planning time, and how well the planner's latency predictions match measurement.

    .venv/bin/python bench/plan.py [--models resnet50,vit_b_16] [--threads 1] [--direct-cuts 6] [--cold]

Per model, in one run, on this machine with ONNX Runtime (one thread by default):

1. wall time of planning with measured profiling (``--profile segments``, the default) and in
   analytic mode (``--profile analytic``, this machine's quick micro-benchmark profile), both
   including model loading from the ONNX cache; with ``--cold`` the one-time torch -> ONNX
   export is timed too, in an empty cache;
2. the whole model timed as one session (median of 15) against
   - the sum of the segments before the plan scales them (what cutting costs ONNX Runtime),
   - the analytic prediction from the measured micro-benchmark profile,
   as predicted / measured (target: within 10 %);
3. for ``--direct-cuts`` evenly spaced cuts, head and tail timed directly as their own models
   against the figures the plan reports from segments (median and worst relative error).

Writes bench/results/plan-<time>.json. Timings on a shared machine are noisy: `uptime` is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rel(pred: float, meas: float) -> float:
    return abs(pred - meas) / meas if meas > 0 else float("inf")


def bench_model(name: str, threads: int, direct_cuts: int, cold: bool) -> dict[str, Any]:
    from splitpipe.devices.microbench import local_profile
    from splitpipe.partition.flops import nodes_ms
    from splitpipe.partition.graph import random_feed
    from splitpipe.partition.plan import PlanRequest, analyse, make_plan
    from splitpipe.partition.profile import MeasureOptions, _time_model, analytic
    from splitpipe.partition.split import head_model, save_beside, tail_model, wire_name

    spec = f"torchvision:{name}"
    out: dict[str, Any] = {"model": spec, "threads": threads}
    if cold:
        t = time.perf_counter()
        analyse(PlanRequest(model=spec))
        out["first_load_with_export_s"] = time.perf_counter() - t

    t = time.perf_counter()
    measured = make_plan(PlanRequest(model=spec, threads=threads))
    out["plan_measured_s"] = time.perf_counter() - t
    t = time.perf_counter()
    make_plan(PlanRequest(model=spec, threads=threads, profile_mode="analytic"))
    out["plan_analytic_s"] = time.perf_counter() - t
    out["cuts"] = len(measured.candidates)

    a = analyse(PlanRequest(model=spec))
    graph, cuts = a.graph, a.cuts
    opts = MeasureOptions(threads=threads, warmup=3, repeats=15)
    feed = random_feed(graph.info(t) for t in graph.inputs)
    whole_ms, _ = _time_model(graph.model_path, feed, opts)  # type: ignore[arg-type]
    details = measured.device["details"]
    profile = local_profile()
    predicted = analytic(graph, cuts, profile).full_ms
    out["whole_measured_ms"] = whole_ms
    out["whole_segments_unscaled_ms"] = details["segments_total_ms"]
    out["segments_over_whole"] = details["segments_total_ms"] / whole_ms
    out["segment_scale"] = details["segment_scale"]
    out["whole_analytic_ms"] = predicted
    out["analytic_over_measured"] = predicted / whole_ms
    # the same profile without the weight-streaming term (flops.node_ms), side by side
    bare = nodes_ms(graph, graph.full, profile, stream_weights=False) + profile.run_overhead_us * 1e-3
    out["analytic_no_weight_stream_over_measured"] = bare / whole_ms

    picks = cuts[:: max(1, len(cuts) // direct_cuts)][:direct_cuts]
    head_err, tail_err, rows = [], [], []
    for cut in picks:
        head = head_model(graph, cut)
        path = save_beside(head, graph, "bench_head.onnx")
        try:
            h_ms, mid = _time_model(path, {i.name: feed[i.name] for i in head.graph.input}, opts)
        finally:
            path.unlink(missing_ok=True)
        path = save_beside(tail_model(graph, cut), graph, "bench_tail.onnx")
        try:
            t_ms, _ = _time_model(
                path, {wire_name(graph, t): mid[wire_name(graph, t)] for t in cut.tensors}, opts
            )
        finally:
            path.unlink(missing_ok=True)
        c = measured.candidate(cut.id)
        head_err.append(_rel(c.head_ms, h_ms))
        tail_err.append(_rel(c.tail_ms, t_ms))
        rows.append(
            {
                "id": cut.id,
                "label": cut.label,
                "head_direct_ms": h_ms,
                "head_plan_ms": c.head_ms,
                "tail_direct_ms": t_ms,
                "tail_plan_ms": c.tail_ms,
            }
        )
    out["direct"] = rows
    out["head_error_median"] = statistics.median(head_err)
    out["head_error_max"] = max(head_err)
    out["tail_error_median"] = statistics.median(tail_err)
    out["tail_error_max"] = max(tail_err)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,vit_b_16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--direct-cuts", type=int, default=6)
    ap.add_argument("--cold", action="store_true", help="time the first export too, in an empty cache")
    args = ap.parse_args()
    if args.cold:
        os.environ["SPLITPIPE_CACHE_DIR"] = tempfile.mkdtemp(prefix="splitpipe-bench-")
    results = {"uptime_before": os.getloadavg(), "models": []}
    for name in args.models.split(","):
        r = bench_model(name.strip(), args.threads, args.direct_cuts, args.cold)
        results["models"].append(r)
        print(f"\n{r['model']} ({r['cuts']} cuts, {args.threads} thread(s))")
        if "first_load_with_export_s" in r:
            print(f"  first load incl. torch->ONNX export   {r['first_load_with_export_s']:7.1f} s")
        print(f"  plan, measured profiling              {r['plan_measured_s']:7.1f} s")
        print(f"  plan, analytic                        {r['plan_analytic_s']:7.1f} s")
        print(f"  whole model measured                  {r['whole_measured_ms']:7.1f} ms")
        print(f"  segments unscaled / whole             {r['segments_over_whole']:7.3f}")
        print(f"  analytic prediction / measured        {r['analytic_over_measured']:7.3f}")
        print(f"    without weight streaming            {r['analytic_no_weight_stream_over_measured']:7.3f}")
        print(
            f"  plan head vs direct: median {r['head_error_median']:.1%}, worst {r['head_error_max']:.1%}; "
            f"tail: median {r['tail_error_median']:.1%}, worst {r['tail_error_max']:.1%}"
        )
    results["uptime_after"] = os.getloadavg()
    folder = ROOT / "bench" / "results"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"plan-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nload average before {results['uptime_before']}, after {results['uptime_after']}; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
