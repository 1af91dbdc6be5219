"""Head and tail latency of every cut: measured with ONNX Runtime on this machine, or analytic.

Measured mode times the model in *segments*: when the cuts' heads are nested (true for every
single-tensor cut and most others), the part between two consecutive cuts is built as its own
model and timed once, so a head costs the sum of its segments and the whole model is timed
about twice instead of once per cut. Cut into segments, a model runs slower than whole (ONNX
Runtime cannot fuse across a boundary, e.g. Conv+Add+Relu, and every segment materialises its
outputs): on resnet50 the segments add up to 15-35 % more than the whole. So the segment times
are scaled to sum to the whole model timed as one session, and the scale is reported. Cuts
whose head does not contain the previous one, and every cut in ``direct`` mode, are timed as
their own head and tail models (slower, no scaling).

Analytic mode sums per-node roofline times from a device profile (``flops.node_ms``), plus
what a head or tail pays at its ends (``flops.boundary_ms``), and is always flagged estimated.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from splitpipe.devices.profile import DeviceProfile
from splitpipe.devices.runtimes.ort import OrtRunner
from splitpipe.partition.cuts import Cut, is_chain
from splitpipe.partition.flops import boundary_ms, nodes_ms
from splitpipe.partition.graph import Graph, random_feed
from splitpipe.partition.split import head_model, save_beside, segment_model, tail_model, wire_name

_LOGGER = logging.getLogger(__name__)

#: progress callback: (what, done, total)
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class MeasureOptions:
    threads: int = 1
    warmup: int = 2
    repeats: int = 5
    #: "segments" (fast, default) or "direct" (every head and tail timed as its own model)
    mode: str = "segments"


@dataclass
class Timings:
    """Latency of each cut's head and tail and of the whole model, in milliseconds."""

    head_ms: dict[int, float]
    tail_ms: dict[int, float]
    full_ms: float
    estimated: bool
    method: str
    #: measured only: the whole model timed as one session, and the per-call overhead
    details: dict[str, Any] = field(default_factory=dict)


def _time_runner(
    runner: Any, feed: dict[str, np.ndarray], opts: MeasureOptions
) -> tuple[float, dict[str, np.ndarray]]:
    out: dict[str, np.ndarray] = {}
    for _ in range(opts.warmup):
        out = runner.infer(feed, check=False)
    times = []
    for _ in range(max(1, opts.repeats)):
        start = time.perf_counter()
        out = runner.infer(feed, check=False)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), out


def _time_model(
    path: Path, feed: dict[str, np.ndarray], opts: MeasureOptions
) -> tuple[float, dict[str, np.ndarray]]:
    with OrtRunner(path, threads=opts.threads) as runner:
        return _time_runner(runner, feed, opts)


def _time_once(runner: Any, feed: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
    start = time.perf_counter()
    out = runner.infer(feed, check=False)
    return (time.perf_counter() - start) * 1e3, out


def call_overhead_ms(opts: MeasureOptions) -> float:
    """Time of one ONNX Runtime call on a trivial model: what each extra session run adds."""
    import onnx

    g = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "overhead",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])],
    )
    model = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=8)
    with OrtRunner(model.SerializeToString(), threads=opts.threads) as runner:
        feed = {"x": np.zeros((1, 8), np.float32)}
        heavier = MeasureOptions(opts.threads, warmup=20, repeats=200)
        ms, _ = _time_runner(runner, feed, heavier)
    return ms


def measure(
    graph: Graph,
    cuts: list[Cut],
    opts: MeasureOptions = MeasureOptions(),
    progress: Progress | None = None,
) -> Timings:
    """Time every cut's head and tail on this machine with ONNX Runtime."""
    if graph.model_path is None:
        raise RuntimeError("measuring needs a graph loaded from a model file")
    chain = is_chain(cuts) if opts.mode == "segments" else [False] * len(cuts)
    boundaries = [c for c, ok in zip(cuts, chain, strict=True) if ok]
    direct = [c for c, ok in zip(cuts, chain, strict=True) if not ok]
    rounds = opts.warmup + max(1, opts.repeats)
    total = rounds + 2 * len(direct)
    step = 0

    def tick(what: str) -> None:
        nonlocal step
        step += 1
        if progress:
            progress(what, step, total)

    overhead = call_overhead_ms(opts)
    inputs = random_feed(graph.info(t) for t in graph.inputs)
    head_ms: dict[int, float] = {}
    tail_ms: dict[int, float] = {}
    ends = [*(c.head for c in boundaries), graph.full] if boundaries else []
    with contextlib.ExitStack() as stack:
        whole = stack.enter_context(OrtRunner(graph.model_path, threads=opts.threads))
        segments = []
        prev = 0
        for i, end in enumerate(ends):
            model, reads, _outs = segment_model(graph, prev, end)
            path = save_beside(model, graph, f"segment_{i}.onnx")
            try:
                segments.append((stack.enter_context(OrtRunner(path, threads=opts.threads)), reads))
            finally:
                path.unlink(missing_ok=True)  # ONNX Runtime has read it, weights included
            prev = end
        # Round-robin: each round runs the whole model once and the segments once in a chain,
        # so that a burst of load elsewhere on the machine hits them alike.
        whole_times: list[float] = []
        seg_times: list[list[float]] = [[] for _ in segments]
        for r in range(rounds):
            ms, _ = _time_once(whole, inputs)
            values: dict[str, np.ndarray] = dict(inputs)
            per_segment = []
            for runner, reads in segments:
                seg, out = _time_once(runner, {t: values[t] for t in reads})
                values.update(out)
                per_segment.append(seg)
            if r >= opts.warmup:
                whole_times.append(ms)
                for i, seg in enumerate(per_segment):
                    seg_times[i].append(seg)
            tick(f"round {r + 1}/{rounds}" + (" (warm-up)" if r < opts.warmup else ""))
    full_ms = statistics.median(whole_times)
    seg_ms = [statistics.median(t) for t in seg_times]
    scale = 1.0
    seg_total = None
    if boundaries:
        # A head of i+1 segments runs as one session: one call overhead, not i+1.
        compute = [max(0.0, ms - overhead) for ms in seg_ms]
        seg_total = sum(compute) + overhead
        scale = max(full_ms - overhead, 1e-6) / max(sum(compute), 1e-6)
        for i, cut in enumerate(boundaries):
            head_ms[cut.id] = scale * sum(compute[: i + 1]) + overhead
            tail_ms[cut.id] = scale * sum(compute[i + 1 :]) + overhead

    for cut in direct:
        head_proto = head_model(graph, cut)
        head = save_beside(head_proto, graph, "head_probe.onnx")
        try:
            ms, out = _time_model(head, {i.name: inputs[i.name] for i in head_proto.graph.input}, opts)
        finally:
            head.unlink(missing_ok=True)
        head_ms[cut.id] = ms
        tick(f"head {cut.id}")
        tail = save_beside(tail_model(graph, cut), graph, "tail_probe.onnx")
        try:
            feed = {wire_name(graph, t): out[wire_name(graph, t)] for t in cut.tensors}
            tail_ms[cut.id], _ = _time_model(tail, feed, opts)
        finally:
            tail.unlink(missing_ok=True)
        tick(f"tail {cut.id}")
    return Timings(
        head_ms=head_ms,
        tail_ms=tail_ms,
        full_ms=full_ms,
        estimated=False,
        method=f"onnxruntime {opts.mode}, {opts.threads} thread(s), median of {opts.repeats} rounds after {opts.warmup} warm-up",
        details={
            "threads": opts.threads,
            "call_overhead_ms": overhead,
            "segments": len(seg_ms),
            "segment_ms": seg_ms,
            "segments_total_ms": seg_total,
            "segment_scale": scale,
            "direct_cuts": [c.id for c in direct],
        },
    )


def analytic(graph: Graph, cuts: list[Cut], profile: DeviceProfile) -> Timings:
    """Per-node roofline estimates from a device profile; flagged estimated."""
    call = profile.run_overhead_us * 1e-3  # one runtime call per head, tail or whole model

    def run_ms(mask: int) -> float:
        return nodes_ms(graph, mask, profile) + boundary_ms(graph, mask, profile) + call

    head = {c.id: run_ms(c.head) for c in cuts}
    tail = {c.id: run_ms(graph.full & ~c.head) for c in cuts}
    kind = "calibrated by measured operator throughput" if profile.measured else "from peak figures"
    return Timings(
        head_ms=head,
        tail_ms=tail,
        full_ms=run_ms(graph.full),
        estimated=True,
        method=f"analytic roofline on profile {profile.name} ({kind})",
    )


def probe(
    graph: Graph, tensors: list[str], feeds: list[dict[str, np.ndarray]]
) -> list[dict[str, np.ndarray]]:
    """The values of ``tensors`` for each input feed, from one ONNX Runtime session over the whole model."""
    import onnx

    inner = [t for t in dict.fromkeys(tensors) if t not in graph.inputs]
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    have = {o.name for o in model.graph.output}
    for t in inner:
        if t not in have:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    path = save_beside(model, graph, "probe.onnx")
    results = []
    try:
        with OrtRunner(path, threads=None) as runner:
            for feed in feeds:
                out = runner.infer({i.name: feed[i.name] for i in runner.inputs})
                values = {t: out[t] for t in inner}
                values.update({t: feed[t] for t in tensors if t in feed})
                results.append(values)
    finally:
        path.unlink(missing_ok=True)
    return results
