"""Fold a symmetric int8 codec into exported graphs: QuantizeLinear at the end of the head,
DequantizeLinear at the start of the tail.

:func:`qdq_params` turns a static int8/sym (or int8/sym/ch) calibration into the three things
those nodes need; :func:`verify_qdq` builds a Q and a DQ graph with ``onnx.helper``, runs them in
ONNX Runtime, and compares them with the kernel codec byte for byte. Runtimes that only read
standard ONNX (TensorRT, a stock Triton server) then carry the same compression: the int8
tensor the head emits is exactly the payload ``get_codec("int8/sym", calibration=cal)`` makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from splitpipe.errors import SplitpipeError
from splitpipe.kernels._spec import parse_name
from splitpipe.kernels.calibration import Calibration
from splitpipe.kernels.codec import Impl, get_codec

#: opset of the Q/DQ nodes: 13 has per-axis scales and is read by TensorRT 8+ and ORT 1.7+
QDQ_OPSET = 13


@dataclass(frozen=True)
class QdqParams:
    """Inputs and attribute of QuantizeLinear / DequantizeLinear for a symmetric int8 codec."""

    scale: np.ndarray  # float32, shape () per tensor or (C,) per channel
    zero_point: np.ndarray  # int8 zeros of the same shape (int8 output, symmetric)
    axis: int | None  # the nodes' ``axis`` attribute for per-channel scales, else None


def qdq_params(calibration: Calibration) -> QdqParams:
    """QuantizeLinear/DequantizeLinear parameters for a static int8/sym or int8/sym/ch calibration."""
    spec = parse_name(calibration.codec)
    if spec.base != "int8" or not spec.symmetric:
        raise SplitpipeError(
            f"only symmetric int8 folds into QuantizeLinear/DequantizeLinear (zero point 0, what "
            f"TensorRT needs); calibrate int8/sym or int8/sym/ch, not {calibration.codec}"
        )
    scale, zp = calibration.arrays()
    return QdqParams(scale.copy(), np.zeros(zp.shape, np.int8), calibration.axis)


def qdq_models(params: QdqParams) -> tuple[bytes, bytes]:
    """Serialized stand-alone models: x(float32) -> QuantizeLinear -> q(int8), and
    q(int8) -> DequantizeLinear -> y(float32). Needs the ``onnx`` package (the planner's extra)."""
    from onnx import TensorProto, helper, numpy_helper

    attrs: dict[str, Any] = {} if params.axis is None else {"axis": params.axis}
    inits = [
        numpy_helper.from_array(params.scale.astype(np.float32), "scale"),
        numpy_helper.from_array(params.zero_point.astype(np.int8), "zero_point"),
    ]

    def model(op: str, src: tuple[str, int], dst: tuple[str, int]) -> bytes:
        node = helper.make_node(op, [src[0], "scale", "zero_point"], [dst[0]], **attrs)
        graph = helper.make_graph(
            [node],
            op,
            [helper.make_tensor_value_info(src[0], src[1], None)],
            [helper.make_tensor_value_info(dst[0], dst[1], None)],
            initializer=inits,
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", QDQ_OPSET)])
        m.ir_version = 7
        return bytes(m.SerializeToString())

    q = model("QuantizeLinear", ("x", TensorProto.FLOAT), ("q", TensorProto.INT8))
    dq = model("DequantizeLinear", ("q", TensorProto.INT8), ("y", TensorProto.FLOAT))
    return q, dq


@dataclass(frozen=True)
class QdqCheck:
    """How the folded Q/DQ graphs agree with the kernel codec on one input."""

    equal: bool  # int8 bytes and dequantized floats both identical
    mismatched_codes: int
    total: int
    max_dequant_diff: float

    def raise_for_mismatch(self) -> None:
        if not self.equal:
            raise SplitpipeError(
                f"folded QuantizeLinear/DequantizeLinear disagree with the int8 codec: "
                f"{self.mismatched_codes} of {self.total} codes differ, "
                f"dequantized values by up to {self.max_dequant_diff:g}"
            )


def verify_qdq(calibration: Calibration, sample: np.ndarray, *, impl: Impl = "fast") -> QdqCheck:
    """Run ONNX Runtime's QuantizeLinear/DequantizeLinear with :func:`qdq_params` on ``sample``
    and compare with the kernel codec (``impl="reference"``: the numpy reference)."""
    import onnxruntime as ort

    params = qdq_params(calibration)
    q_model, dq_model = qdq_models(params)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    x = np.ascontiguousarray(sample, dtype=np.float32)
    q_sess = ort.InferenceSession(q_model, opts, providers=["CPUExecutionProvider"])
    dq_sess = ort.InferenceSession(dq_model, opts, providers=["CPUExecutionProvider"])
    q_ort = q_sess.run(None, {"x": x})[0]
    y_ort = dq_sess.run(None, {"q": q_ort})[0]

    codec = get_codec(calibration.codec, calibration=calibration, impl=impl)
    payload, meta = codec.encode(x)
    q_kernel = np.frombuffer(payload, np.int8).reshape(x.shape)
    y_kernel = codec.decode(payload, meta, max_bytes=max(x.nbytes, 1))
    mismatched = int(np.count_nonzero(q_ort != q_kernel))
    diff = float(np.max(np.abs(y_ort - y_kernel))) if x.size else 0.0
    equal = q_ort.tobytes() == payload and np.array_equal(y_ort, y_kernel)
    return QdqCheck(equal, mismatched, int(x.size), diff)
