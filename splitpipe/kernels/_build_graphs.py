"""Generate the tiny ONNX graphs behind the fast codec paths (splitpipe/kernels/graphs/*.onnx).

The on-device agent has ONNX Runtime but not the ``onnx`` package, so the graphs ship as package
data. Regenerate them after a change with::

    .venv/bin/python -m splitpipe.kernels._build_graphs

tests/kernels/test_graphs.py checks that the committed files equal what this script builds.
Opset 13 / IR 7 so that the older ONNX Runtime builds found on Jetson and Raspberry Pi load them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

GRAPH_DIR = Path(__file__).with_name("graphs")
OPSET = 13
IR_VERSION = 7


def build() -> dict[str, bytes]:
    """Serialized models by name; deterministic, so the files can be compared byte for byte."""
    from onnx import TensorProto, helper

    def vi(name: str, elem: int) -> Any:
        # no shape: one session serves every shape
        return helper.make_tensor_value_info(name, elem, None)

    def model(name: str, nodes: list[Any], inputs: list[Any], outputs: list[Any]) -> bytes:
        graph = helper.make_graph(nodes, name, inputs, outputs)
        m = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="splitpipe.kernels"
        )
        m.ir_version = IR_VERSION
        return bytes(m.SerializeToString(deterministic=True))

    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    out = {
        "cast_f32_f16": model(
            "cast_f32_f16", [helper.make_node("Cast", ["x"], ["y"], to=f16)], [vi("x", f32)], [vi("y", f16)]
        ),
        "cast_f16_f32": model(
            "cast_f16_f32", [helper.make_node("Cast", ["x"], ["y"], to=f32)], [vi("x", f16)], [vi("y", f32)]
        ),
    }
    for tag, code in (("u8", TensorProto.UINT8), ("i8", TensorProto.INT8)):
        # axis=1: per-channel callers view the tensor as (outer, C, inner); with a scalar
        # scale the axis is ignored and any shape works.
        out[f"quantize_{tag}"] = model(
            f"quantize_{tag}",
            [helper.make_node("QuantizeLinear", ["x", "scale", "zero_point"], ["y"], axis=1)],
            [vi("x", f32), vi("scale", f32), vi("zero_point", code)],
            [vi("y", code)],
        )
        out[f"dequantize_{tag}"] = model(
            f"dequantize_{tag}",
            [helper.make_node("DequantizeLinear", ["q", "scale", "zero_point"], ["y"], axis=1)],
            [vi("q", code), vi("scale", f32), vi("zero_point", code)],
            [vi("y", f32)],
        )
    return out


def main() -> None:
    GRAPH_DIR.mkdir(exist_ok=True)
    for name, data in build().items():
        (GRAPH_DIR / f"{name}.onnx").write_bytes(data)
        print(f"wrote {GRAPH_DIR / name}.onnx ({len(data)} bytes)")


if __name__ == "__main__":
    main()
