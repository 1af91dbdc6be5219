"""Per-node work: FLOPs, bytes moved, operator class, and the analytic latency of a node on a device.

FLOP convention (shared with ``splitpipe profile``'s micro-benchmarks): one FLOP per multiply
and per add, so a convolution is 2*N*Cout*Hout*Wout*(Cin/groups)*kh*kw, a matmul 2*M*N*K, an
elementwise op one per output element (several for exp, divisions, statistics), a pooling op
one per output element and kernel tap.

Elementwise ops are timed differently from how their FLOPs are counted: runtimes vectorise them
and they are mostly memory-bound, so with ONNX Runtime on x86 a Sigmoid costs 1.4 Adds, not the
four its FLOPs say (measured: bench/elementwise.py). The rate the profile measures for the
class comes from Adds, and each op's time is its output elements times its measured cost in
Adds (``_ELEMENTWISE_ADDS``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from splitpipe.devices.profile import DeviceProfile
from splitpipe.partition.graph import Graph

# Ops that only relabel memory: no arithmetic, and ONNX Runtime usually does not copy.
_VIEWS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Size", "Constant", "Dropout"}
_POOLS = {"MaxPool", "AveragePool", "LpPool"}
_GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
_REDUCE = {
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceSum",
    "ReduceProd",
    "ReduceL2",
    "ReduceL1",
    "ReduceLogSumExp",
}
# FLOPs per output element of ops costing several (exp, divisions, statistics).
_HEAVY_ELEMENTWISE = {
    "Softmax": 5,
    "LogSoftmax": 5,
    "LayerNormalization": 8,
    "BatchNormalization": 4,
    "InstanceNormalization": 8,
    "GroupNormalization": 8,
    "Erf": 4,
    "Gelu": 8,
    "Sigmoid": 4,
    "HardSigmoid": 3,
    "HardSwish": 4,
    "Tanh": 4,
    "Exp": 4,
    "Log": 4,
    "Sqrt": 2,
    "Pow": 4,
}

# What one output element of an op costs in Adds (two inputs, one output) with ONNX Runtime 1.31
# on an x86 CPU (AVX-512), one thread: per op the median over 1x256x56x56, 1x64x28x28 and
# 1x960x7x7, then the median of five runs of bench/elementwise.py, rounded. Ops not listed cost
# one Add. The normalisations and softmaxes grow with the length of the normalised axis (1.4 to
# 8 Adds for a Softmax over 56 to 960 values); these figures are for the shapes of CNNs.
_ELEMENTWISE_ADDS = {
    "Relu": 0.8,
    "BatchNormalization": 0.8,
    "Exp": 0.8,
    "Clip": 0.8,
    "Sqrt": 1.0,
    "HardSigmoid": 1.1,
    "Tanh": 1.3,
    "Sigmoid": 1.4,
    "InstanceNormalization": 1.4,
    "GroupNormalization": 1.4,
    "HardSwish": 1.7,
    "Erf": 2.0,
    "Gelu": 2.4,
    "Softmax": 4.0,
    "LogSoftmax": 5.0,
    "LayerNormalization": 5.3,
    "Log": 5.7,
    "Pow": 19.5,
}


@dataclass(frozen=True)
class NodeCost:
    flops: int
    bytes: int
    op_class: str
    #: bytes of the weights (initializers) the node reads, part of ``bytes``
    weight_bytes: int = 0
    #: the FLOPs the device's measured rate is applied to, where they differ from ``flops``
    #: (elementwise ops: output elements x the op's cost in Adds)
    timed_flops: int | None = None


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape) if shape else 1


def node_cost(graph: Graph, k: int) -> NodeCost:
    node = graph.node(k)
    op = node.op_type
    ins = [graph.info(t) for t in node.input if t and t in graph._info]
    outs = [graph.info(t) for t in node.output if t and t in graph._info]
    out_elems = sum(_numel(o.shape) for o in outs)
    moved = sum(i.nbytes for i in ins) + sum(o.nbytes for o in outs)
    weights = sum(graph.info(t).nbytes for t in node.input if t in graph.initializers)
    attrs = {a.name: a for a in node.attribute}

    if op in ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv") and len(ins) >= 2:
        weight = ins[1] if op != "QLinearConv" else ins[3]
        group = attrs["group"].i if "group" in attrs else 1
        if op == "ConvTranspose":
            flops = 2 * _numel(ins[0].shape) * weight.shape[1] * _numel(weight.shape[2:])
        else:
            flops = 2 * out_elems * _numel(weight.shape[1:])
        return NodeCost(flops, moved, "dwconv" if group > 1 else "conv", weights)
    if op in ("MatMul", "MatMulInteger", "Gemm", "QLinearMatMul") and len(ins) >= 2:
        a = ins[0].shape
        k_dim = (a[0] if attrs.get("transA") and attrs["transA"].i else a[-1]) if a else 1
        return NodeCost(2 * out_elems * k_dim, moved, "matmul", weights)
    if op == "Einsum" and ins:
        # upper bound without parsing the equation: every output element reads a full input row
        flops = 2 * out_elems * max(i.shape[-1] if i.shape else 1 for i in ins)
        return NodeCost(flops, moved, "matmul", weights)
    if op in _POOLS:
        kernel = _numel(tuple(attrs["kernel_shape"].ints)) if "kernel_shape" in attrs else 1
        return NodeCost(out_elems * kernel, moved, "pool")
    if op in _GLOBAL_POOLS or op in _REDUCE:
        return NodeCost(_numel(ins[0].shape) if ins else out_elems, moved, "pool")
    if op in _VIEWS:
        return NodeCost(0, 0, "elementwise")
    flops = out_elems * _HEAVY_ELEMENTWISE.get(op, 1)
    timed = round(out_elems * _ELEMENTWISE_ADDS.get(op, 1.0))
    return NodeCost(flops, moved, "elementwise", weights, timed)


def node_ms(
    cost: NodeCost, profile: DeviceProfile, precision: str = "fp32", stream_weights: bool = True
) -> float:
    """Time of one node on ``profile``, plus a fixed per-node overhead.

    With throughput measured on the device for the node's operator class and size, that rate,
    plus (``stream_weights``) the node's weights read once from memory at the profile's copy
    bandwidth. The micro-benchmarks run one op again and again, so its weights stay in cache and
    its rate contains no weight traffic; inside a real model, whose weights are many times the
    cache, each weight byte comes from DRAM once per inference. A DRAM roofline on the
    activations is not added: they mostly move through the caches between adjacent ops, and the
    measured rates already contain that. Without measured rates, a roofline from public peak
    figures: the slower of compute and memory traffic (weights included), each at the profile's
    achievable fraction.
    """
    overhead_s = profile.node_overhead_us * 1e-6
    work = cost.flops if cost.timed_flops is None else cost.timed_flops
    rate = profile.achieved_gflops(cost.op_class, work)
    if rate:
        weights_s = cost.weight_bytes / (profile.mem_bandwidth_gbs * 1e9) if stream_weights else 0.0
        return (work / (rate * 1e9) + weights_s + overhead_s) * 1e3
    peak = profile.peak_gflops.get(precision, profile.peak_gflops["fp32"])
    compute_s = cost.flops / (peak * profile.compute_efficiency * 1e9)
    memory_s = cost.bytes / (profile.mem_bandwidth_gbs * 1e9 * profile.memory_efficiency)
    return (max(compute_s, memory_s) + overhead_s) * 1e3


def nodes_ms(graph: Graph, mask: int, profile: DeviceProfile, stream_weights: bool = True) -> float:
    """The nodes in ``mask``: the sum of their ``node_ms``. Activations that runtimes fuse into
    the preceding convolution are counted too; see docs/devices.md for why."""
    return sum(
        node_ms(node_cost(graph, k), profile, stream_weights=stream_weights) for k in graph.members(mask)
    )


def boundary_ms(graph: Graph, mask: int, profile: DeviceProfile) -> float:
    """What running the nodes in ``mask`` as their own graph (a head, a tail) costs at its ends:
    every tensor it reads from outside, at the rate of the class of its most expensive consumer
    inside (one reorder serves them all), and every tensor it hands out, at the rate of its
    producer's class (``DeviceProfile.boundary_us_per_mb``; 0 where the profile has none)."""
    rates = profile.boundary_us_per_mb
    if not rates:
        return 0.0
    default = rates.get("elementwise", 0.0)

    def rate(k: int) -> float:
        return rates.get(node_cost(graph, k).op_class, default)

    outputs = set(graph.outputs)
    us = 0.0
    read: set[str] = set()
    for k in graph.members(mask):
        for name in graph.node_inputs[graph.nodes[k]]:
            p = graph.producer.get(name)
            if name in read or name in graph.constants or (p is not None and mask >> p & 1):
                continue
            read.add(name)
            consumers = graph.members(graph.consumers[name] & mask)
            us += graph.info(name).nbytes / 1e6 * max(rate(c) for c in consumers)
        for name in graph.node(k).output:
            if name and (graph.consumers.get(name, 0) & ~mask or name in outputs):
                us += graph.info(name).nbytes / 1e6 * rate(k)
    return us * 1e-3


def total_flops(graph: Graph, mask: int) -> int:
    return sum(node_cost(graph, k).flops for k in graph.members(mask))


def weight_bytes(graph: Graph, mask: int) -> int:
    """Bytes of the weights (initializers) the nodes in ``mask`` and their constant helpers read."""
    node_ids = [graph.nodes[k] for k in graph.members(mask)]
    used = {n for i in [*node_ids, *graph.needed_constant_nodes(node_ids)] for n in graph.node_inputs[i]}
    return sum(graph.info(n).nbytes for n in used if n in graph.initializers)


def peak_activation_bytes(graph: Graph, mask: int) -> int:
    """Largest sum of live intermediate tensors while running the nodes in ``mask`` in order.

    A tensor is live from its production (or from the start, for inputs) to its last use in
    ``mask``; crossing tensors stay live to the end, since they are sent after the head ran.
    """
    members = list(graph.members(mask))
    position = {k: i for i, k in enumerate(members)}
    last_use: dict[str, int] = {}
    for k in members:
        for t in graph.node_inputs[graph.nodes[k]]:
            if t not in graph.constants:
                last_use[t] = position[k]
    end = len(members)
    for t in graph.crossing(mask):
        last_use[t] = end
    live = {t: graph.info(t).nbytes for t in graph.inputs if t in last_use}
    peak = sum(live.values())
    for i, k in enumerate(members):
        for t in graph.node(k).output:
            if t and t in graph._info:
                live[t] = graph.info(t).nbytes
        peak = max(peak, sum(live.values()))
        for t in [t for t in live if last_use.get(t, -1) <= i]:
            del live[t]
    return peak
