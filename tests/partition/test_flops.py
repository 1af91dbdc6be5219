"""The analytic cost model's terms on hand-built graphs with known sizes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from splitpipe.devices.profile import load_profile
from splitpipe.partition.flops import boundary_ms, node_cost, node_ms
from splitpipe.partition.load import normalize
from tests.partition.graphs import graph_of

RATES = {"conv": 20.0, "elementwise": 2.0}
SHAPE = [1, 8, 16, 16]


def _conv_relu_sigmoid(tmp: Path):  # type: ignore[no-untyped-def]
    """x (1,8,16,16) -> Conv c -> Relu r -> Sigmoid y, all (1,8,16,16)."""
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Sigmoid", ["r"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)],
        initializer=[numpy_helper.from_array(np.ones((8, 8, 3, 3), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    return graph_of(normalize(model, {"x": tuple(SHAPE)}), tmp)


def test_boundary_charges_tensors_entering_and_leaving_at_their_nodes_rates(tmp_path: Path) -> None:
    graph = _conv_relu_sigmoid(tmp_path)
    mb = 8 * 16 * 16 * 4 / 1e6  # every activation here
    profile = dataclasses.replace(load_profile("rpi4"), boundary_us_per_mb=RATES)
    conv, relu, sig = (1 << k for k in range(3))
    # the conv alone: x in at the conv's rate, c out at the conv's rate; the weight is no edge
    assert boundary_ms(graph, conv, profile) == pytest.approx(2 * mb * 20.0e-3)
    # conv + relu (a head): x in (conv), r out (relu: elementwise)
    assert boundary_ms(graph, conv | relu, profile) == pytest.approx(mb * 20.0e-3 + mb * 2.0e-3)
    # the sigmoid alone (a tail): r in, y out, both elementwise
    assert boundary_ms(graph, sig, profile) == pytest.approx(2 * mb * 2.0e-3)
    # the whole model pays for its input and output only
    assert boundary_ms(graph, graph.full, profile) == pytest.approx(mb * 20.0e-3 + mb * 2.0e-3)
    # a class without a rate falls back to elementwise's; no rates at all: no term
    pool_only = dataclasses.replace(profile, boundary_us_per_mb={"elementwise": 2.0})
    assert boundary_ms(graph, conv, pool_only) == pytest.approx(2 * mb * 2.0e-3)
    assert boundary_ms(graph, conv, load_profile("rpi4")) == 0.0


def test_elementwise_ops_are_timed_by_their_cost_in_adds_not_their_flops(tmp_path: Path) -> None:
    graph = _conv_relu_sigmoid(tmp_path)
    elems = int(np.prod(SHAPE))
    sigmoid = node_cost(graph, 2)
    assert sigmoid.flops == 4 * elems  # what it computes
    assert sigmoid.timed_flops == round(1.4 * elems)  # what it costs, in Adds (one per element)
    profile = dataclasses.replace(
        load_profile("rpi4"), measured_gflops={"elementwise": 1.0}, node_overhead_us=0.0
    )
    assert node_ms(sigmoid, profile) == pytest.approx(1.4 * elems / 1e9 * 1e3, rel=1e-3)
    # other classes are timed by their FLOPs
    assert node_cost(graph, 0).timed_flops is None
