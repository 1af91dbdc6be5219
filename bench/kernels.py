"""Where the analytic latency model is off, kernel by kernel: each model's ONNX Runtime profile
against the planner's per-node predictions from a measured profile of this machine.

    .venv/bin/python bench/kernels.py [--models mobilenet_v3_large,efficientnet_b0,resnet18] [--quick]

1. Profile this machine with the micro-benchmarks (``splitpipe profile``, full unless ``--quick``).
2. Run each torchvision model (random weights, 1x3x224x224) in ONNX Runtime, one thread, with its
   profiler on (``--runs`` calls; the median of each kernel over the second half).
3. Attribute each kernel to the graph nodes it runs: a kernel named after a tensor (ONNX Runtime
   names fused kernels after their output, plus ``_nchwc`` in the NCHWc layout) covers the node
   that produces it and the elementwise nodes back to the nearest convolution, matmul, pooling,
   Add, Mul or Concat (the activations it fused). Kernels the runtime inserted (layout
   ReorderInput/ReorderOutput) and kernels under names of their own are grouped by op type, with
   the nodes of that op type no kernel covered.
4. Sum measured and predicted time per group: convolutions by class, kernel size and output size
   (1, <=7, <=14, <=28, >28), everything else by op type.

Prints a table per model (groups above 20 us) and writes bench/results/kernels-*.json. The
predictions are ``flops.node_ms`` (rate, weights streamed once, per-node overhead); the boundary
and per-call costs of a whole model are not in them, nor in the kernels.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = "mobilenet_v3_large,efficientnet_b0,resnet18,googlenet"
#: node types that start a fused kernel (elementwise ops after them are folded into it)
ANCHORS = {
    "Conv",
    "Gemm",
    "MatMul",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "ReduceMean",
    "Add",
    "Mul",
    "Concat",
}


def _group(graph: Any, k: int) -> str:
    from splitpipe.partition.flops import node_cost

    node = graph.node(k)
    if node.op_type != "Conv":
        return node.op_type
    side = graph.info(node.output[0]).shape[-1]
    weight = graph.info(node.input[1]).shape  # (Cout, Cin / groups, kh, kw)
    size = next((f"<={s}" for s in (7, 14, 28) if side <= s), ">28") if side > 1 else "1"
    op_class = node_cost(graph, k).op_class
    stem = " Cin<=4" if weight[1] <= 4 and op_class == "conv" else ""
    return f"{op_class} {weight[-1]}x{weight[-1]} @{size}{stem}"


def kernel_times(model_path: Path, feed: dict[str, np.ndarray], runs: int) -> dict[str, tuple[str, float]]:
    """kernel name -> (op name, median microseconds over the second half of ``runs`` calls)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="splitpipe-kernels-") as folder:
        opts.profile_file_prefix = os.path.join(folder, "ort")
        sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    durations: dict[str, list[float]] = collections.defaultdict(list)
    ops: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"].removesuffix("_kernel_time")
            durations[name].append(float(e["dur"]))
            ops[name] = e.get("args", {}).get("op_name", "?")
    return {n: (ops[n], float(np.median(d[len(d) // 2 :]))) for n, d in durations.items()}


def compare(name: str, profile: Any, runs: int) -> dict[str, Any]:
    from splitpipe.partition.flops import node_cost, node_ms
    from splitpipe.partition.graph import random_feed
    from splitpipe.partition.plan import PlanRequest, analyse

    a = analyse(PlanRequest(model=f"torchvision:{name}"))
    g = a.graph
    feed = dict(random_feed(g.info(t) for t in g.inputs))
    kernels = kernel_times(a.loaded.path, feed, runs)
    producer = {out: k for k in range(len(g.nodes)) for out in g.node(k).output}
    groups: dict[str, dict[str, float]] = collections.defaultdict(
        lambda: {"measured_us": 0.0, "predicted_us": 0.0, "kernels": 0}
    )
    covered: set[int] = set()
    for kname, (op, us) in kernels.items():
        k = producer.get(kname.removesuffix("_nchwc"))
        if k is None:  # inserted by the runtime, or named its own way: by op type
            row = groups[op]
            row["measured_us"] += us
            row["kernels"] += 1
            continue
        members = [k]
        while g.node(k).op_type not in ANCHORS and g.node(k).input and g.node(k).input[0] in producer:
            k = producer[g.node(k).input[0]]
            members.append(k)
        row = groups[_group(g, k if g.node(k).op_type in ANCHORS else members[0])]
        row["measured_us"] += us
        row["kernels"] += 1
        for j in members:
            covered.add(j)
            row["predicted_us"] += node_ms(node_cost(g, j), profile) * 1e3
    for k in range(len(g.nodes)):
        if k not in covered:  # fused away (activations), or run by a kernel named its own way
            groups[g.node(k).op_type]["predicted_us"] += node_ms(node_cost(g, k), profile) * 1e3
    return {
        "model": name,
        "measured_us": sum(r["measured_us"] for r in groups.values()),
        "predicted_us": sum(r["predicted_us"] for r in groups.values()),
        "groups": dict(
            sorted(groups.items(), key=lambda kv: -max(kv[1]["measured_us"], kv[1]["predicted_us"]))
        ),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--runs", type=int, default=40, help="calls per model (default 40)")
    ap.add_argument("--quick", action="store_true", help="quick micro-benchmark profile")
    args = ap.parse_args()

    from splitpipe.devices.microbench import profile_this_machine

    load_before = os.getloadavg()
    profile = profile_this_machine(quick=args.quick, threads=1)
    rows = []
    for name in args.models.split(","):
        row = compare(name.strip(), profile, args.runs)
        rows.append(row)
        print(
            f"\n{row['model']}: kernels {row['measured_us']:.0f} us measured, "
            f"nodes {row['predicted_us']:.0f} us predicted"
        )
        print(f"  {'group':28s} {'measured us':>12s} {'predicted us':>13s} {'ratio':>6s} {'kernels':>8s}")
        for group, r in row["groups"].items():
            m, p = r["measured_us"], r["predicted_us"]
            if max(m, p) < 20:
                continue
            ratio = f"{m / p:6.2f}" if p > 0 else "     -"
            print(f"  {group:28s} {m:12.0f} {p:13.0f} {ratio} {int(r['kernels']):8d}")
    out = {"load_before": load_before, "load_after": os.getloadavg(), "quick": args.quick, "models": rows}
    folder = ROOT / "bench" / "results"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"kernels-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"\nload average before {load_before}, after {out['load_after']}; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
