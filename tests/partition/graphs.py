"""Hand-built ONNX graphs with known cuts, for cut discovery tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from splitpipe.partition.graph import Graph
from splitpipe.partition.load import normalize


def build(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, list[int]],
    outputs: list[str],
    inits: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    produced = {o for n in nodes for o in n.output}
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [
            helper.make_tensor_value_info(
                n, TensorProto.FLOAT, [1, 12 if n == "y" and "c" in produced else 4]
            )
            for n in outputs
        ],
        initializer=[numpy_helper.from_array(v, k) for k, v in (inits or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model)
    return normalize(model, {n: tuple(s) for n, s in inputs.items()})


def graph_of(model: onnx.ModelProto, tmp: Path) -> Graph:
    path = tmp / "model.onnx"
    onnx.save_model(model, str(path))
    return Graph(onnx.load(str(path)), path)


def chain() -> onnx.ModelProto:
    """x -> Relu a -> Sigmoid b -> Tanh y"""
    return build(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Sigmoid", ["a"], ["b"]),
            helper.make_node("Tanh", ["b"], ["y"]),
        ],
        {"x": [1, 4]},
        ["y"],
    )


def residual() -> onnx.ModelProto:
    """x -> Relu a; a -> Sigmoid b -> Tanh c; Add(a, c) d -> Relu y. Only a and d (and y's producer input) cut alone."""
    return build(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Sigmoid", ["a"], ["b"]),
            helper.make_node("Tanh", ["b"], ["c"]),
            helper.make_node("Add", ["a", "c"], ["d"]),
            helper.make_node("Relu", ["d"], ["y"]),
        ],
        {"x": [1, 4]},
        ["y"],
    )


def branches() -> onnx.ModelProto:
    """Three parallel branches concatenated, with a constant subgraph feeding one of them."""
    w = np.full((1, 4), 2.0, np.float32)
    return build(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Mul", ["w", "w"], ["w2"]),  # constant: never crosses a cut
            helper.make_node("Mul", ["a", "w2"], ["b1"]),
            helper.make_node("Sigmoid", ["a"], ["b2"]),
            helper.make_node("Tanh", ["a"], ["b3"]),
            helper.make_node("Concat", ["b1", "b2", "b3"], ["c"], axis=1),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        {"x": [1, 4]},
        ["y"],
        {"w": w},
    )


def two_outputs() -> onnx.ModelProto:
    """x -> Relu a; a -> Sigmoid y1 (output); y1 -> Tanh y2 (output): y1 crosses as an output."""
    return build(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Sigmoid", ["a"], ["y1"]),
            helper.make_node("Tanh", ["y1"], ["y2"]),
        ],
        {"x": [1, 4]},
        ["y1", "y2"],
    )


def late_input() -> onnx.ModelProto:
    """Two inputs; the second is used only at the end, so it crosses every cut."""
    return build(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Sigmoid", ["a"], ["b"]),
            helper.make_node("Add", ["b", "z"], ["y"]),
        ],
        {"x": [1, 4], "z": [1, 4]},
        ["y"],
    )


def dead_branch() -> onnx.ModelProto:
    """A node whose result reaches no output is dropped, and cannot make a cut look wider."""
    return build(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Exp", ["a"], ["unused"]),
            helper.make_node("Sigmoid", ["a"], ["y"]),
        ],
        {"x": [1, 4]},
        ["y"],
    )
