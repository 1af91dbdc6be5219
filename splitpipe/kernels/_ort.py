"""Fast elementwise kernels run as tiny ONNX graphs in ONNX Runtime (one thread).

ONNX Runtime is a core dependency and its MLAS kernels convert float32 to float16 and quantize
at or above memory-copy speed, where numpy's ``astype(float16)`` and a multi-pass numpy quantize
reach only a few percent of it (see docs/BENCHMARKS.md, section Codecs). Sessions are created
once per process on first use and are safe to call from several threads. If a graph cannot be
loaded (no onnxruntime, or one too old for it), :class:`FastPathUnavailable` is raised once per
graph and remembered; splitpipe.kernels.quant then uses its numpy reference, which gives the
same bytes.
"""

from __future__ import annotations

import logging
import threading
from importlib import resources
from typing import Any

import numpy as np

_LOGGER = logging.getLogger(__name__)
_LOCK = threading.Lock()
_SESSIONS: dict[str, Any] = {}
_FAILED: dict[str, str] = {}
_OUTPUTS = ["y"]


class FastPathUnavailable(RuntimeError):
    """ONNX Runtime is missing or refused a graph."""


def _load(name: str) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise FastPathUnavailable(f"onnxruntime not importable: {exc}") from None
    data = resources.files("splitpipe.kernels").joinpath("graphs", f"{name}.onnx").read_bytes()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # one node per graph: nothing to optimise, and no fusion may change the arithmetic
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise FastPathUnavailable(f"onnxruntime cannot load kernel graph {name}: {exc}") from None


def _session(name: str) -> Any:
    sess = _SESSIONS.get(name)
    if sess is not None:
        return sess
    with _LOCK:
        if name in _FAILED:
            raise FastPathUnavailable(_FAILED[name])
        if name not in _SESSIONS:
            try:
                _SESSIONS[name] = _load(name)
            except FastPathUnavailable as exc:
                _FAILED[name] = str(exc)
                _LOGGER.warning("codec fast path %s unavailable, using numpy: %s", name, exc)
                raise
        return _SESSIONS[name]


def _run(name: str, feed: dict[str, np.ndarray]) -> np.ndarray:
    sess = _session(name)
    # The public run() re-validates feed names on every call (about 4 us of the 10-14 us a call
    # costs); our feeds are built here, so call the binding directly where it exists.
    inner = getattr(sess, "_sess", None)
    out: np.ndarray = (inner.run(_OUTPUTS, feed, None) if inner is not None else sess.run(_OUTPUTS, feed))[0]
    return out


def to_fp16(x: np.ndarray) -> np.ndarray:
    """float32 -> float16, IEEE round to nearest even (same bits as numpy's astype)."""
    return _run("cast_f32_f16", {"x": x})


def from_fp16(h: np.ndarray) -> np.ndarray:
    return _run("cast_f16_f32", {"x": h})


def quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """saturate(round_half_even(x / scale) + zero_point); per channel along axis 1 when
    ``scale`` is 1-D (the caller passes x viewed as (outer, C, inner))."""
    tag = "i8" if zero_point.dtype == np.int8 else "u8"
    return _run(f"quantize_{tag}", {"x": x, "scale": scale, "zero_point": zero_point})


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """(q - zero_point) * scale as float32; per channel along axis 1 when ``scale`` is 1-D."""
    tag = "i8" if q.dtype == np.int8 else "u8"
    return _run(f"dequantize_{tag}", {"q": q, "scale": scale, "zero_point": zero_point})
