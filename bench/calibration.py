"""How well a measured device profile predicts real models: the planner's analytic mode held
against ONNX Runtime on the same machine.

    .venv/bin/python bench/calibration.py [--models resnet50,mobilenet_v3_large,...] [--quick]

1. Profile this machine with the micro-benchmarks (``splitpipe profile``; full mode unless
   ``--quick``): per-operator-class throughput at a few sizes, and nothing about the models below.
2. For each model, predict the whole model and every segment between consecutive cuts with the
   planner's analytic model from that profile (``--profile analytic``), and measure the same
   whole model and segments with ONNX Runtime (one thread), twice:
   - *chain*: what the planner's measured mode does: each round runs the whole model, then every
     segment once on the previous one's outputs (median of 7 rounds). A segment then starts with
     cold caches: the whole model and the other segments ran in between.
   - *warm*: each segment again and again on its recorded inputs (median of 15 runs after 3),
     the steady state that the micro-benchmarks measure and the profile describes.
3. Report |predicted - measured| / measured: per model the whole-model error and the median
   segment error, and over all segments of all models the median and p90.
   Target (issue 6): median within 15 %.

Also reports how far the uncalibrated profile (public-style peak x efficiency, no measurement)
is off on the same segments. Writes bench/results/calibration-<time>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = "resnet50,mobilenet_v3_large,efficientnet_b0,googlenet,densenet121,resnet18"
#: the errors collected: per segment against the chain timings (calibrated; without the
#: weight-streaming term of flops.node_ms; without the boundary term flops.boundary_ms; with
#: elementwise ops timed by their FLOPs instead of their measured cost in Adds, "by_flops"; the
#: uncalibrated profile), per segment against the warm timings (calibrated; without the
#: boundary term), and per head (with and without the weight-streaming term)
KINDS = (
    "segment",
    "no_weight_stream",
    "no_boundary",
    "by_flops",
    "uncalibrated",
    "warm",
    "warm_no_boundary",
    "warm_by_flops",
    "head",
    "head_no_weight_stream",
    "head_by_flops",
)
WARM_RUNS, WARM_WARMUP = 15, 3


def _warm_segment_ms(graph: Any, ends: list[int], threads: int) -> list[float]:
    """Each segment timed alone, again and again on its inputs from one run of the chain."""
    from splitpipe.devices.runtimes.ort import OrtRunner
    from splitpipe.partition.graph import random_feed
    from splitpipe.partition.profile import MeasureOptions, _time_runner
    from splitpipe.partition.split import save_beside, segment_model

    opts = MeasureOptions(threads=threads, warmup=WARM_WARMUP, repeats=WARM_RUNS)
    values = dict(random_feed(graph.info(t) for t in graph.inputs))
    out_ms, prev = [], 0
    for i, end in enumerate(ends):
        model, reads, _ = segment_model(graph, prev, end)
        path = save_beside(model, graph, f"warm_segment_{i}.onnx")
        try:
            with OrtRunner(path, threads=threads) as runner:
                ms, outs = _time_runner(runner, {t: values[t] for t in reads}, opts)
        finally:
            path.unlink(missing_ok=True)
        values.update(outs)
        out_ms.append(ms)
        prev = end
    return out_ms


def _by_flops_ms(graph: Any, mask: int, profile: Any) -> float:
    """``nodes_ms`` with every elementwise op timed by its FLOPs (``flops._HEAVY_ELEMENTWISE``)
    instead of its measured cost in Adds, as the model was before."""
    from unittest import mock

    from splitpipe.partition import flops

    with mock.patch.dict(flops._ELEMENTWISE_ADDS, flops._HEAVY_ELEMENTWISE, clear=True):
        return flops.nodes_ms(graph, mask, profile)


def _err(pred: float, meas: float) -> float:
    return abs(pred - meas) / meas


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=MODELS)
    ap.add_argument(
        "--quick", action="store_true", help="quick micro-benchmark profile instead of the full one"
    )
    args = ap.parse_args()

    from splitpipe.devices.microbench import profile_this_machine
    from splitpipe.partition.cuts import is_chain
    from splitpipe.partition.flops import boundary_ms, nodes_ms
    from splitpipe.partition.plan import PlanRequest, analyse
    from splitpipe.partition.profile import MeasureOptions, measure

    load_before = os.getloadavg()
    t = time.perf_counter()
    profile = profile_this_machine(quick=args.quick, threads=1)
    profile_s = time.perf_counter() - t
    # the same machine described only by peak-style figures, as an uncalibrated profile would
    uncalibrated = dataclasses.replace(profile, measured_gflops={}, measured_points={})
    print(f"profiled this machine in {profile_s:.1f} s ({'quick' if args.quick else 'full'})")

    rows: list[dict[str, Any]] = []
    errors: dict[str, list[float]] = {k: [] for k in KINDS}
    run = profile.run_overhead_us * 1e-3
    for name in args.models.split(","):
        a = analyse(PlanRequest(model=f"torchvision:{name.strip()}"))
        cuts = [c for c, ok in zip(a.cuts, is_chain(a.cuts), strict=True) if ok]
        timings = measure(a.graph, cuts, MeasureOptions(threads=1, warmup=2, repeats=7))
        seg_ms = timings.details["segment_ms"]
        ends = [*(c.head for c in cuts), a.graph.full]
        warm_ms = _warm_segment_ms(a.graph, ends, threads=1)
        mine: dict[str, list[float]] = {k: [] for k in KINDS}
        prev, predicted = 0, []
        for i, (end, meas, warm) in enumerate(zip(ends, seg_ms, warm_ms, strict=True)):
            mask = end & ~prev
            prev = end
            nodes = nodes_ms(a.graph, mask, profile)
            edges = boundary_ms(a.graph, mask, profile)
            pred = nodes + edges + run
            predicted.append(pred)
            mine["segment"].append(_err(pred, meas))
            mine["no_boundary"].append(_err(nodes + run, meas))
            by_flops = _by_flops_ms(a.graph, mask, profile) + edges + run
            mine["by_flops"].append(_err(by_flops, meas))
            mine["warm_by_flops"].append(_err(by_flops, warm))
            mine["warm"].append(_err(pred, warm))
            mine["warm_no_boundary"].append(_err(nodes + run, warm))
            bare = nodes_ms(a.graph, mask, profile, stream_weights=False)
            mine["no_weight_stream"].append(_err(bare + edges + run, meas))
            mine["uncalibrated"].append(_err(nodes_ms(a.graph, mask, uncalibrated) + run, meas))
            if i < len(cuts):  # a head runs as one graph: its nodes and its edges as a whole
                head_edges = boundary_ms(a.graph, end, profile) + run
                head_ms = timings.head_ms[cuts[i].id]
                mine["head"].append(_err(nodes_ms(a.graph, end, profile) + head_edges, head_ms))
                head_bare = nodes_ms(a.graph, end, profile, stream_weights=False)
                mine["head_no_weight_stream"].append(_err(head_bare + head_edges, head_ms))
                mine["head_by_flops"].append(_err(_by_flops_ms(a.graph, end, profile) + head_edges, head_ms))
        full_edges = boundary_ms(a.graph, a.graph.full, profile)
        whole_pred = nodes_ms(a.graph, a.graph.full, profile) + full_edges + run
        whole_bare = nodes_ms(a.graph, a.graph.full, profile, stream_weights=False) + full_edges + run
        row = {
            "model": name,
            "segments": len(seg_ms),
            # per segment, in order: measured in the chain, measured warm, predicted
            "segment_ms": {"chain": seg_ms, "warm": warm_ms, "predicted": predicted},
            "whole_measured_ms": timings.full_ms,
            "whole_predicted_ms": whole_pred,
            "whole_error": _err(whole_pred, timings.full_ms),
            "whole_predicted_no_weight_stream_ms": whole_bare,
            "whole_error_no_weight_stream": _err(whole_bare, timings.full_ms),
            "whole_error_by_flops": _err(
                _by_flops_ms(a.graph, a.graph.full, profile) + full_edges + run, timings.full_ms
            ),
            **{f"{k}_error_median": statistics.median(v) for k, v in mine.items()},
        }
        rows.append(row)
        for k, v in mine.items():
            errors[k] += v
        print(
            f"{name:20s} whole {timings.full_ms:7.1f} ms measured, {whole_pred:7.1f} predicted "
            f"({row['whole_error']:.0%}; without weight streaming {row['whole_error_no_weight_stream']:.0%}, "
            f"elementwise by FLOPs {row['whole_error_by_flops']:.0%}); "
            f"{len(seg_ms)} segments: median error {row['segment_error_median']:.0%} chain, "
            f"{row['warm_error_median']:.0%} warm (without boundary term {row['no_boundary_error_median']:.0%} / "
            f"{row['warm_no_boundary_error_median']:.0%}; elementwise by FLOPs {row['by_flops_error_median']:.0%}; "
            f"without weight streaming "
            f"{row['no_weight_stream_error_median']:.0%}; uncalibrated {row['uncalibrated_error_median']:.0%}); "
            f"heads: median {row['head_error_median']:.0%} (without {row['head_no_weight_stream_error_median']:.0%})"
        )

    def pct(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]

    summary: dict[str, Any] = {"segments": len(errors["segment"])}
    for k, v in errors.items():
        summary[f"{k}_error_median"] = statistics.median(v)
        summary[f"{k}_error_p90"] = pct(v, 90)
    summary["whole_error_median"] = statistics.median(r["whole_error"] for r in rows)
    summary["whole_error_by_flops_median"] = statistics.median(r["whole_error_by_flops"] for r in rows)
    summary["whole_error_no_weight_stream_median"] = statistics.median(
        r["whole_error_no_weight_stream"] for r in rows
    )
    print(
        f"\nall {summary['segments']} segments, against chain timings: median error "
        f"{summary['segment_error_median']:.0%}, p90 {summary['segment_error_p90']:.0%} "
        f"(without the boundary term {summary['no_boundary_error_median']:.0%}); against warm timings: "
        f"median {summary['warm_error_median']:.0%}, p90 {summary['warm_error_p90']:.0%} "
        f"(without the boundary term {summary['warm_no_boundary_error_median']:.0%}, elementwise by FLOPs "
        f"{summary['warm_by_flops_error_median']:.0%}, p90 {summary['warm_by_flops_error_p90']:.0%}); "
        f"(elementwise by FLOPs {summary['by_flops_error_median']:.0%}, "
        f"p90 {summary['by_flops_error_p90']:.0%}; without weight streaming "
        f"{summary['no_weight_stream_error_median']:.0%}, p90 {summary['no_weight_stream_error_p90']:.0%}); "
        f"uncalibrated (peak x efficiency): median {summary['uncalibrated_error_median']:.0%}; "
        f"heads: median {summary['head_error_median']:.0%}, p90 {summary['head_error_p90']:.0%} "
        f"(without weight streaming {summary['head_no_weight_stream_error_median']:.0%}, "
        f"p90 {summary['head_no_weight_stream_error_p90']:.0%}; elementwise by FLOPs "
        f"{summary['head_by_flops_error_median']:.0%}, p90 {summary['head_by_flops_error_p90']:.0%}); "
        f"whole models: median {summary['whole_error_median']:.0%} "
        f"(without weight streaming {summary['whole_error_no_weight_stream_median']:.0%}, elementwise by "
        f"FLOPs {summary['whole_error_by_flops_median']:.0%})"
    )
    out = {
        "profile_s": profile_s,
        "quick": args.quick,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "models": rows,
        "summary": summary,
    }
    folder = ROOT / "bench" / "results"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"calibration-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"load average before {load_before}, after {out['load_after']}; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
