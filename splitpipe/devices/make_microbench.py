"""Writes the micro-benchmark models of :mod:`splitpipe.devices.microbench` (needs ``onnx``).

Run ``python -m splitpipe.devices.make_microbench`` after changing ``microbench.POINTS``; a test
checks that the committed files are what this script writes. The files are a few hundred bytes
each: weights are ``ConstantOfShape`` nodes that ONNX Runtime folds into initializers when it
loads the model. Opset 13 and IR version 7 keep them loadable by the older ONNX Runtime builds
found on Jetson and Raspberry Pi images.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from splitpipe.devices.microbench import (
    LONG,
    OVERHEAD,
    OVERHEAD_LONG,
    OVERHEAD_SHORT,
    POINTS,
    SHORT,
    BenchPoint,
)

OPSET = 13
IR_VERSION = 7


def _constant(helper: Any, numpy_helper: Any, name: str, shape: list[int], value: float) -> tuple[Any, Any]:
    """A ``ConstantOfShape`` node making tensor ``name``, and the initializer holding its shape."""
    import numpy as np

    shape_init = numpy_helper.from_array(np.array(shape, dtype=np.int64), f"{name}_shape")
    node = helper.make_node(
        "ConstantOfShape",
        [f"{name}_shape"],
        [name],
        value=numpy_helper.from_array(np.array([value], np.float32)),
    )
    return node, shape_init


def build_model(point: BenchPoint, length: int) -> bytes:
    """A chain of ``length`` identical ops of ``point`` as serialized ONNX."""
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(point.input_shape))
    inputs = [x]
    nodes: list[Any] = []
    inits: list[Any] = []
    a, b = point.dims
    if point.kind == "conv":
        fan_in = (a // point.groups) * point.kernel * point.kernel
        for name, shape, value in (
            ("w", [a, a // point.groups, point.kernel, point.kernel], 1.0 / fan_in),
            ("bias", [a], 1e-3),
        ):
            node, init = _constant(helper, numpy_helper, name, shape, value)
            nodes.append(node)
            inits.append(init)
    elif point.kind == "matmul":
        node, init = _constant(helper, numpy_helper, "w", [b, b], 1.0 / b)
        nodes.append(node)
        inits.append(init)
    elif point.kind == "add":
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, list(point.input_shape)))
    prev = "x"
    for i in range(length):
        out = "y" if i == length - 1 else f"t{i}"
        if point.kind == "conv":
            pad = point.kernel // 2
            nodes.append(
                helper.make_node(
                    "Conv",
                    [prev, "w", "bias"],
                    [out],
                    kernel_shape=[point.kernel] * 2,
                    pads=[pad] * 4,
                    strides=[1, 1],
                    group=point.groups,
                )
            )
        elif point.kind == "matmul":
            nodes.append(helper.make_node("MatMul", [prev, "w"], [out]))
        elif point.kind == "add":
            nodes.append(helper.make_node("Add", [prev, "b"], [out]))
        elif point.kind == "maxpool":
            pad = point.kernel // 2
            nodes.append(
                helper.make_node(
                    "MaxPool", [prev], [out], kernel_shape=[point.kernel] * 2, pads=[pad] * 4, strides=[1, 1]
                )
            )
        else:
            raise ValueError(f"unknown benchmark kind {point.kind!r}")
        prev = out
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(point.input_shape))
    graph = helper.make_graph(nodes, f"{point.name}_x{length}", inputs, [y], initializer=inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="splitpipe",
    )
    return bytes(model.SerializeToString())


def build_models() -> dict[str, bytes]:
    """File name -> serialized model, for every file the micro-benchmarks need."""
    out = {p.file(n): build_model(p, n) for p in POINTS for n in (SHORT, LONG)}
    for n in (OVERHEAD_SHORT, OVERHEAD_LONG):
        out[OVERHEAD.file(n)] = build_model(OVERHEAD, n)
    return out


def main(argv: list[str] | None = None) -> int:
    folder = Path(__file__).with_name("microbench_models")
    folder.mkdir(exist_ok=True)
    models = build_models()
    for stale in folder.glob("*.onnx"):
        if stale.name not in models:
            stale.unlink()
    for name, data in models.items():
        (folder / name).write_bytes(data)
    sys.stdout.write(f"wrote {len(models)} models, {sum(map(len, models.values()))} bytes, to {folder}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
