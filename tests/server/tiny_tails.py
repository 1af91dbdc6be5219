"""Tiny export directories for server tests: real ONNX tails built with onnx.helper, a head,
and a manifest in the format of docs/export.md (sha256 computed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17


def _tensor_json(name: str, dtype: str, shape: list[int | None]) -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": shape}


def _value_info(name: str, dtype: str, shape: list[int | None]) -> Any:
    from onnx import helper

    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    dims = ["N" if d is None else d for d in shape]
    return helper.make_tensor_value_info(name, elem, dims)


def _save(graph: Any, path: Path) -> None:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_export(
    directory: Path,
    name: str,
    tail_nodes: list[Any],
    cut: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    initializers: list[Any] = (),  # type: ignore[assignment]
    codec: str = "raw",
) -> Path:
    """Write tail.onnx (cut -> outputs), head.onnx (an identity from ``input_i`` to each cut
    tensor) and manifest.json into ``directory``."""
    from onnx import helper

    directory.mkdir(parents=True, exist_ok=True)
    tail = helper.make_graph(
        tail_nodes,
        f"{name}-tail",
        [_value_info(t["name"], t["dtype"], t["shape"]) for t in cut],
        [_value_info(t["name"], t["dtype"], t["shape"]) for t in outputs],
        initializer=list(initializers),
    )
    _save(tail, directory / "tail.onnx")
    inputs = [_tensor_json(f"input_{i}", t["dtype"], t["shape"]) for i, t in enumerate(cut)]
    head = helper.make_graph(
        [helper.make_node("Identity", [i["name"]], [t["name"]]) for i, t in zip(inputs, cut, strict=True)],
        f"{name}-head",
        [_value_info(t["name"], t["dtype"], t["shape"]) for t in inputs],
        [_value_info(t["name"], t["dtype"], t["shape"]) for t in cut],
    )
    _save(head, directory / "head.onnx")
    files = {
        part: {
            "path": f"{part}.onnx",
            "sha256": _sha256(directory / f"{part}.onnx"),
            "bytes": (directory / f"{part}.onnx").stat().st_size,
        }
        for part in ("head", "tail")
    }
    manifest = {
        "format": "splitpipe-export",
        "version": 1,
        "name": name,
        "model": "tests:tiny",
        "split": {"id": 1, "label": "tiny"},
        "inputs": inputs,
        "cut": cut,
        "outputs": outputs,
        "files": files,
        "onnx": {"opset": OPSET, "ir_version": 8},
        "codec": {"name": codec, "calibration": None},
        "preprocess": None,
        "predictions": {},
        "verification": {"samples": 0, "max_abs": 0.0, "max_rel": 0.0},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return directory


def relu_mean(directory: Path, name: str = "relu-mean", batch: int | None = None) -> Path:
    """x float32 [N,4,3,3] -> mean = ReduceMean(Relu(x)) over H, W [N,4]; peak = ReduceMax(x) [N,4].
    ``batch=None`` makes the first dimension free (batchable)."""
    from onnx import helper

    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("ReduceMean", ["r"], ["mean"], axes=[2, 3], keepdims=0),
        helper.make_node("ReduceMax", ["x"], ["peak"], axes=[2, 3], keepdims=0),
    ]
    return write_export(
        directory,
        name,
        nodes,
        cut=[_tensor_json("x", "float32", [batch, 4, 3, 3])],
        outputs=[_tensor_json("mean", "float32", [batch, 4]), _tensor_json("peak", "float32", [batch, 4])],
    )


def fixed_gemm(directory: Path, name: str = "gemm", features: int = 16) -> Path:
    """x float32 [1,features] -> y = x W + b [1,8], with a fixed batch of 1."""
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((features, 8)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "B")
    from onnx import helper

    return write_export(
        directory,
        name,
        [helper.make_node("Gemm", ["x", "W", "B"], ["y"])],
        cut=[_tensor_json("x", "float32", [1, features])],
        outputs=[_tensor_json("y", "float32", [1, 8])],
        initializers=[weight, bias],
    )


def two_inputs(directory: Path, name: str = "two-inputs") -> Path:
    """a float32 [N,4], b float16 [N,2] -> y = a * 2 - concat(b, b) as float32 [N,4]."""
    from onnx import helper, numpy_helper

    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    nodes = [
        helper.make_node("Cast", ["b"], ["b32"], to=1),
        helper.make_node("Concat", ["b32", "b32"], ["bb"], axis=1),
        helper.make_node("Mul", ["a", "two"], ["a2"]),
        helper.make_node("Sub", ["a2", "bb"], ["y"]),
    ]
    return write_export(
        directory,
        name,
        nodes,
        cut=[_tensor_json("a", "float32", [None, 4]), _tensor_json("b", "float16", [None, 2])],
        outputs=[_tensor_json("y", "float32", [None, 4])],
        initializers=[two],
    )


def run_tail(directory: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference: the tail run directly with ONNX Runtime."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(directory / "tail.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def free_length(directory: Path, name: str = "free-length") -> Path:
    """x float32 [N,L] (both free) -> y = ReduceSum(x, axis 1) [N]: requests batch only with
    requests of the same length."""
    from onnx import helper, numpy_helper

    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    return write_export(
        directory,
        name,
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
        cut=[_tensor_json("x", "float32", [None, None])],
        outputs=[_tensor_json("y", "float32", [None])],
        initializers=[axes],
    )


def slow_chain(directory: Path, name: str = "slow-chain", layers: int = 64, width: int = 1024) -> Path:
    """x float32 [N,width] -> y = ReduceSum of ``layers`` chained MatMuls [N]: a tail that takes
    milliseconds per run, unlike the others here, which take microseconds."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    initializers = [
        numpy_helper.from_array(weight, "W"),
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
    ]
    nodes, last = [], "x"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [last, "W"], [f"h{i}"]))
        last = f"h{i}"
    nodes.append(helper.make_node("ReduceSum", [last, "axes"], ["y"], keepdims=0))
    return write_export(
        directory,
        name,
        nodes,
        cut=[_tensor_json("x", "float32", [None, width])],
        outputs=[_tensor_json("y", "float32", [None])],
        initializers=initializers,
    )
