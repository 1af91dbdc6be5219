"""What elementwise ops cost, in Adds: the figures behind ``flops._ELEMENTWISE_ADDS``.

    .venv/bin/python bench/elementwise.py [--threads 1] [--runs 30]

Each op runs alone as a one-node model with ONNX Runtime on float32 tensors of three CNN sizes
(1x256x56x56, 1x64x28x28, 1x960x7x7), median of ``--runs`` calls after 5; its cost in Adds is its
time over the time of an Add (two inputs, one output) of the same size, timed in the same round.
Prints, per op, the three ratios, their median and the figure the planner uses; writes
bench/results/elementwise-*.json. Numbers are noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import _kernels_util as util  # noqa: E402

SIZES = ((256, 56), (64, 28), (960, 7))
#: op, inputs (the rest of an op's inputs are per-channel initializers of ones)
OPS: tuple[tuple[str, int], ...] = (
    ("Mul", 2),
    ("Relu", 1),
    ("Clip", 1),
    ("Exp", 1),
    ("Sqrt", 1),
    ("HardSigmoid", 1),
    ("Tanh", 1),
    ("Sigmoid", 1),
    ("HardSwish", 1),
    ("BatchNormalization", 1),
    ("Erf", 1),
    ("InstanceNormalization", 1),
    ("Gelu", 1),
    ("Softmax", 1),
    ("LogSoftmax", 1),
    ("Log", 1),
    ("LayerNormalization", 1),
    ("Pow", 2),
)


def _session(op: str, n_in: int, c: int, h: int, threads: int) -> tuple[Any, dict[str, np.ndarray]]:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    shape = [1, c, h, h]
    per = {"BatchNormalization": (c,) * 4, "InstanceNormalization": (c,) * 2, "LayerNormalization": (h,) * 2}
    inits = [np.ones(n, np.float32) for n in per.get(op, ())]
    ins = [f"x{i}" for i in range(n_in)]
    node = helper.make_node(op, ins + [f"w{i}" for i in range(len(inits))], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(i, TensorProto.FLOAT, shape) for i in ins],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        initializer=[numpy_helper.from_array(a, f"w{i}") for i, a in enumerate(inits)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    # Pow on positive bases: negative ones take a slower path and give NaNs
    feed = {i: np.abs(rng.standard_normal(shape, dtype=np.float32)) + 0.5 for i in ins}
    return session, feed


def _time_ms(op: str, n_in: int, c: int, h: int, threads: int, runs: int) -> float:
    session, feed = _session(op, n_in, c, h, threads)
    for _ in range(5):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()

    from splitpipe.partition.flops import _ELEMENTWISE_ADDS

    load_before = os.getloadavg()
    rows = []
    for op, n_in in OPS:
        ratios = []
        for c, h in SIZES:  # the Add of each size timed beside the op, in the same round
            add = _time_ms("Add", 2, c, h, args.threads, args.runs)
            ratios.append(_time_ms(op, n_in, c, h, args.threads, args.runs) / add)
        row = {
            "op": op,
            "adds": ratios,
            "median": statistics.median(ratios),
            "planner": _ELEMENTWISE_ADDS.get(op, 1.0),
        }
        rows.append(row)
        print(
            f"{op:22s} " + "  ".join(f"{r:5.2f}" for r in ratios) + f"   median {row['median']:5.2f}"
            f"   planner {row['planner']:5.2f}"
        )
    data = {
        "sizes": SIZES,
        "threads": args.threads,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    path = util.write_json("elementwise", {**data, "machine": util.machine(), "ops": rows})
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
