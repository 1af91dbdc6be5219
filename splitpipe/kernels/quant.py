"""Quantization arithmetic shared by every path, plus the slow references.

Definitions (docs/codecs.md):

- affine (``int8``, ``uint4``, ``uint2``, per tensor or ``/ch``): the range [lo, hi] is widened to
  contain 0, ``scale = (hi - lo) / qmax``, ``zero_point = round(-lo / scale)``, codes in
  ``0..qmax`` (255, 15, 3). This is ONNX DynamicQuantizeLinear's rule: 0 stays exact, so ReLU
  zeros survive and compress well.
- symmetric (``int8/sym``): ``scale = max(|lo|, |hi|) / 127``, zero point 0, int8 codes.
- ``q = clip(round_half_even(x / scale) + zero_point, qmin, qmax)``, float32 arithmetic (ONNX
  QuantizeLinear); ``x' = (q - zero_point) * scale``.
- A zero range gives scale 1; a scale below the smallest normal float32 is raised to it.
- NaN anywhere in the input is refused (CodecError): no code can represent it. +-inf is
  saturated: the range is taken over the finite values and inf maps to the end codes.

The fast elementwise work runs in ONNX Runtime (splitpipe.kernels._ort); ``*_ref`` functions are
the obvious numpy/Python versions the tests compare with.
"""

from __future__ import annotations

import math

import numpy as np

from splitpipe.errors import CodecError
from splitpipe.kernels import _ort
from splitpipe.kernels._spec import CodecSpec

_TINY = float(np.finfo(np.float32).tiny)


def as_channels(x: np.ndarray, axis: int) -> np.ndarray:
    """View x as (outer, C, inner) with the channel axis in the middle (no copy)."""
    c = x.shape[axis]
    outer = math.prod(x.shape[:axis])
    return x.reshape(outer, c, -1 if c and outer else math.prod(x.shape[axis + 1 :]))


# ---- ranges --------------------------------------------------------------------------------


def _nan_error(where: str = "") -> CodecError:
    return CodecError(
        f"input contains NaN{where}; quantizing codecs cannot represent it (use raw or fp16, or fix the model)"
    )


def value_range(x: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) as float64, per tensor (shape ()) or per channel (shape (C,)), over finite
    values; CodecError on NaN. Empty tensors or channels give (0, 0)."""
    if axis is None:
        if x.size == 0:
            return np.zeros(()), np.zeros(())
        lo, hi = np.min(x), np.max(x)  # numpy propagates NaN, which we rely on to detect it
        if np.isnan(lo) or np.isnan(hi):
            raise _nan_error()
        if np.isinf(lo) or np.isinf(hi):
            finite = x[np.isfinite(x)]
            lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        return np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    x3 = as_channels(x, axis)
    c = x3.shape[1]
    if x3.size == 0:
        return np.zeros(c), np.zeros(c)
    flat = x3[0] if x3.shape[0] == 1 else x3.transpose(1, 0, 2).reshape(c, -1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    if np.isnan(lo).any() or np.isnan(hi).any():
        raise _nan_error(f" (channel {int(np.flatnonzero(np.isnan(lo) | np.isnan(hi))[0])})")
    bad = np.isinf(lo) | np.isinf(hi)
    if bad.any():
        for ch in np.flatnonzero(bad):
            finite = flat[ch][np.isfinite(flat[ch])]
            lo[ch], hi[ch] = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    return lo.astype(np.float64), hi.astype(np.float64)


def value_range_ref(x: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Plain Python over the elements of each channel."""

    def one(values: list[float]) -> tuple[float, float]:
        if any(math.isnan(v) for v in values):
            raise _nan_error()
        finite = [v for v in values if math.isfinite(v)]
        return (min(finite), max(finite)) if finite else (0.0, 0.0)

    if axis is None:
        lo, hi = one([float(v) for v in x.reshape(-1)])
        return np.asarray(lo), np.asarray(hi)
    x3 = as_channels(x, axis)
    pairs = [one([float(v) for v in x3[:, ch, :].reshape(-1)]) for ch in range(x3.shape[1])]
    return np.array([p[0] for p in pairs], np.float64), np.array([p[1] for p in pairs], np.float64)


def check_no_nan(x: np.ndarray) -> None:
    """Static scales skip the range pass, but NaN must still be refused."""
    if x.size and np.isnan(np.max(x)):
        raise _nan_error()


# ---- scales --------------------------------------------------------------------------------


def params_from_range(lo: np.ndarray, hi: np.ndarray, spec: CodecSpec) -> tuple[np.ndarray, np.ndarray]:
    """(scale float32, zero_point in the stored code type) of the same shape as lo/hi."""
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    qmin, qmax = spec.qrange
    raw = np.maximum(-lo, hi) / qmax if spec.symmetric else (hi - lo) / (qmax - qmin)
    scale = raw.astype(np.float32)
    scale = np.where(scale == 0, np.float32(1.0), np.maximum(scale, np.float32(_TINY))).astype(np.float32)
    if spec.symmetric:
        zp = np.zeros(scale.shape, np.int8)
    else:
        zp = np.clip(np.rint(-lo / scale.astype(np.float64)), qmin, qmax).astype(np.uint8)
    # 0-d results of numpy ufuncs are scalars; ONNX Runtime wants arrays
    return np.asarray(scale), np.asarray(zp)


# ---- elementwise ---------------------------------------------------------------------------


def quantize(
    x: np.ndarray, scale: np.ndarray, zp: np.ndarray, spec: CodecSpec, axis: int | None
) -> np.ndarray:
    """Codes (uint8, or int8 for /sym) of the same shape as x; x is float32, finite or +-inf."""
    xin = as_channels(x, axis) if axis is not None else x
    q = _ort.quantize(xin, scale, zp)
    qmax = spec.qrange[1]
    if qmax < 255:
        # two roundings (zero point and value) can land one above qmax; saturation is at 255
        np.minimum(q, np.uint8(qmax), out=q)
    return q.reshape(x.shape)


def quantize_ref(
    x: np.ndarray, scale: np.ndarray, zp: np.ndarray, spec: CodecSpec, axis: int | None
) -> np.ndarray:
    qmin, qmax = spec.qrange
    if axis is not None:
        bshape = [1] * x.ndim
        bshape[axis] = -1
        scale, zp = scale.reshape(bshape), zp.reshape(bshape)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        v = np.rint(x.astype(np.float32) / scale.astype(np.float32)) + zp.astype(np.float32)
    return np.clip(v, qmin, qmax).astype(np.int8 if spec.symmetric else np.uint8)


def dequantize(q: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int | None) -> np.ndarray:
    qin = as_channels(q, axis) if axis is not None else q
    return _ort.dequantize(qin, scale, zp).reshape(q.shape)


def dequantize_ref(q: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int | None) -> np.ndarray:
    if axis is not None:
        bshape = [1] * q.ndim
        bshape[axis] = -1
        scale, zp = scale.reshape(bshape), zp.reshape(bshape)
    diff = q.astype(np.int32) - zp.astype(np.int32)
    out: np.ndarray = diff.astype(np.float32) * scale.astype(np.float32)
    return out


def to_fp16(x: np.ndarray) -> np.ndarray:
    return _ort.to_fp16(x)


def to_fp16_ref(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return x.astype(np.float16)


def from_fp16(h: np.ndarray) -> np.ndarray:
    return _ort.from_fp16(h)


def from_fp16_ref(h: np.ndarray) -> np.ndarray:
    return h.astype(np.float32)
