"""Quantization arithmetic shared by every path, plus the slow references.

Definitions (docs/codecs.md):

- affine (``int8``, ``uint4``, ``uint2``, per tensor or ``/ch``): the range [lo, hi] is widened to
  contain 0, ``scale = (hi - lo) / qmax``, ``zero_point = round(clip(-lo / scale, 0, qmax))``,
  codes in ``0..qmax`` (255, 15, 3). This is ONNX DynamicQuantizeLinear's rule, computed in
  float32 the way ONNX Runtime does: 0 stays exact, so ReLU zeros survive and compress well.
- symmetric (``int8/sym``): ``scale = max(-lo, hi) / 127``, zero point 0, int8 codes.
- ``q = clip(round_half_even(x / scale) + zero_point, qmin, qmax)``, float32 arithmetic (ONNX
  QuantizeLinear); ``x' = (q - zero_point) * scale``.
- A zero range gives scale 1; a scale below the smallest normal float32 is raised to it; the
  range is clipped to +-2**126 so that every code decodes to a finite float32.
- NaN anywhere in the input is refused (CodecError): no code can represent it. +-inf is
  saturated: the range is taken over the finite values and inf maps to the end codes.

The fast paths, in order of preference: the compiled kernels of ``splitpipe.kernels._cquant``
(built at install when a C compiler is there; int8/uint4/uint2 per tensor and per channel, bit
packing, fp16), then tiny ONNX Runtime graphs (splitpipe.kernels._ort), then the references. ``*_ref`` functions are the
obvious numpy/Python versions the tests compare both fast paths with. Setting the environment
variable ``SPLITPIPE_NO_CKERNELS=1`` before import turns the compiled kernels off.
"""

from __future__ import annotations

import math
import os
import struct
from types import ModuleType
from typing import Any

import numpy as np

from splitpipe.errors import CodecError
from splitpipe.kernels import _ort
from splitpipe.kernels._spec import CodecSpec


def _compiled() -> tuple[ModuleType | None, str | None]:
    """(the compiled kernels, None), or (None, why not)."""
    if os.environ.get("SPLITPIPE_NO_CKERNELS", "") not in ("", "0"):
        return None, "turned off by SPLITPIPE_NO_CKERNELS"
    try:
        from splitpipe.kernels import _cquant  # type: ignore[attr-defined]
    except ImportError as exc:  # not built (no compiler at install): ONNX Runtime kernels instead
        return None, f"not built ({exc}); reinstall with a C compiler"
    return _cquant, None


#: the compiled kernels, or None (then ``C_MISSING`` says why); tests set it to None to exercise
#: the ONNX Runtime path
C, C_MISSING = _compiled()

_TINY = float(np.finfo(np.float32).tiny)
_RANGE_LIMIT = 2.0**126


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


_umin, _umax = np.minimum.reduce, np.maximum.reduce


def range_scalar(x: np.ndarray) -> tuple[float, float]:
    """(lo, hi) of a whole float32 tensor over its finite values; CodecError on NaN.

    The per-tensor hot path: two numpy reductions (each about twice memory-copy speed; they
    propagate NaN, which is how NaN is detected) and Python floats for the rest."""
    if x.size == 0:
        return 0.0, 0.0
    lo, hi = float(_umin(x, axis=None)), float(_umax(x, axis=None))
    if lo != lo or hi != hi:
        raise _nan_error()
    if math.isinf(lo) or math.isinf(hi):
        finite = x[np.isfinite(x)]
        return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    return lo, hi


def value_range(x: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) as float32 arrays, per tensor (shape ()) or per channel along ``axis``
    (shape (C,)), over finite values; CodecError on NaN. Empty tensors or channels give 0."""
    if axis is None:
        lo_f, hi_f = range_scalar(x)
        return np.array(lo_f, np.float32), np.array(hi_f, np.float32)
    x3 = as_channels(x, axis)
    c = x3.shape[1]
    if x3.size == 0:
        return np.zeros(c, np.float32), np.zeros(c, np.float32)
    flat = x3[0] if x3.shape[0] == 1 else x3.transpose(1, 0, 2).reshape(c, -1)
    lo, hi = _umin(flat, axis=1), _umax(flat, axis=1)
    nan = np.isnan(lo) | np.isnan(hi)
    if nan.any():
        raise _nan_error(f" (channel {int(np.flatnonzero(nan)[0])})")
    bad = np.isinf(lo) | np.isinf(hi)
    if bad.any():
        for ch in np.flatnonzero(bad):
            finite = flat[ch][np.isfinite(flat[ch])]
            lo[ch], hi[ch] = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    return lo.astype(np.float32), hi.astype(np.float32)


def value_range_ref(x: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Plain Python over the elements of each channel."""

    def one(values: list[float]) -> tuple[float, float]:
        if any(math.isnan(v) for v in values):
            raise _nan_error()
        finite = [v for v in values if math.isfinite(v)]
        return (min(finite), max(finite)) if finite else (0.0, 0.0)

    if axis is None:
        lo, hi = one([float(v) for v in x.reshape(-1)])
        return np.array(lo, np.float32), np.array(hi, np.float32)
    x3 = as_channels(x, axis)
    pairs = [one([float(v) for v in x3[:, ch, :].reshape(-1)]) for ch in range(x3.shape[1])]
    return np.array([p[0] for p in pairs], np.float32), np.array([p[1] for p in pairs], np.float32)


def check_no_nan(x: np.ndarray) -> None:
    """Static scales skip the range pass, but NaN must still be refused."""
    if x.size and math.isnan(float(_umax(x, axis=None))):
        raise _nan_error()


# ---- scales --------------------------------------------------------------------------------

_F32 = np.float32
_LIMIT32, _TINY32, _ONE32, _ZERO32 = _F32(_RANGE_LIMIT), _F32(_TINY), _F32(1.0), _F32(0.0)


_F32_STRUCT = struct.Struct("<f")


def _f32(value: float) -> float:
    """Round a Python float to float32. One IEEE operation on float32 operands done in float64
    and rounded once gives the float32 result exactly (53 >= 2 * 24 + 2 bits), so this is
    float32 arithmetic without numpy's per-scalar overhead."""
    return float(_F32_STRUCT.unpack(_F32_STRUCT.pack(value))[0])


def params_scalar(lo: float, hi: float, spec: CodecSpec) -> tuple[float, int]:
    """Per-tensor (scale, zero_point) from a float32 range, in float32 arithmetic like ONNX
    Runtime's DynamicQuantizeLinear, plus the guards in the module docstring.
    :func:`params_from_range` is the same rule on arrays; a test checks they agree."""
    qmin, qmax = spec.qrange
    # widen to contain 0; clip to +-2**126 so every code, zero-point rounding included, decodes
    # to a finite float32 (values beyond saturate)
    lo32 = max(min(lo, 0.0), -_RANGE_LIMIT)
    hi32 = min(max(hi, 0.0), _RANGE_LIMIT)
    if spec.symmetric:
        amax = max(hi32, -lo32)
        scale = _f32(amax / qmax) if amax > 0 else 1.0
    else:
        scale = _f32(_f32(hi32 - lo32) / (qmax - qmin)) if hi32 != lo32 else 1.0
    scale = max(scale, _TINY)
    if spec.symmetric:
        return scale, 0
    initial = _f32(qmin - _f32(lo32 / scale))
    # round() on a float is round-half-to-even, like np.rint and ONNX Runtime's RoundHalfToEven
    return scale, round(min(max(initial, float(qmin)), float(qmax)))


def params_from_range(lo: np.ndarray, hi: np.ndarray, spec: CodecSpec) -> tuple[np.ndarray, np.ndarray]:
    """(scale float32, zero_point in the stored code type) of the same shape as lo/hi."""
    qmin, qmax = spec.qrange
    lo32 = np.clip(np.asarray(lo, np.float32), -_LIMIT32, _ZERO32)
    hi32 = np.clip(np.asarray(hi, np.float32), _ZERO32, _LIMIT32)
    if spec.symmetric:
        amax = np.maximum(hi32, -lo32)
        scale = np.where(amax > 0, amax / _F32(qmax), _ONE32)
    else:
        scale = np.where(hi32 != lo32, (hi32 - lo32) / _F32(qmax - qmin), _ONE32)
    scale = np.maximum(scale, _TINY32).astype(np.float32)
    if spec.symmetric:
        zp = np.zeros(scale.shape, np.int8)
    else:
        initial = (_F32(qmin) - lo32 / scale).astype(np.float32)
        zp = np.rint(np.clip(initial, _F32(qmin), _F32(qmax))).astype(np.uint8)
    # 0-d results of numpy ufuncs are scalars; ONNX Runtime wants arrays
    return np.asarray(scale), np.asarray(zp)


def quantize_dynamic(x: np.ndarray, spec: CodecSpec) -> tuple[bytes, float, int] | None:
    """Per-tensor range, scale rule and codes in one compiled call: (codes, scale, zero_point),
    the codes one byte each (int8 two's complement for /sym). None when the compiled kernels are
    absent or x holds NaN or inf (the caller then takes the numpy path, which handles those).
    x is C-contiguous float32 and not empty."""
    if C is None:
        return None
    qmin, qmax = spec.qrange
    got: tuple[bytes, float, int] | None = C.quantize_dynamic(x, qmin, qmax, spec.symmetric)
    return got


def quantize_dynamic_ch(x: np.ndarray, spec: CodecSpec, axis: int) -> tuple[bytes, bytes, bytes] | None:
    """:func:`quantize_dynamic` per channel along ``axis``: (codes, scales as little-endian
    float32 bytes, zero points as bytes), or None as there."""
    if C is None:
        return None
    qmin, qmax = spec.qrange
    got: tuple[bytes, bytes, bytes] | None = C.quantize_dynamic_ch(
        x, _dims(x.shape, axis), qmin, qmax, spec.symmetric
    )
    return got


def _dims(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    """(outer, C, inner) of a C-contiguous tensor viewed with its channel axis in the middle."""
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :])


# ---- elementwise ---------------------------------------------------------------------------


def quantize(
    x: np.ndarray, scale: np.ndarray, zp: np.ndarray, spec: CodecSpec, axis: int | None
) -> np.ndarray:
    """Codes (uint8, or int8 for /sym) of the same shape as x; x is float32, finite or +-inf."""
    if C is not None and x.size:
        q = np.empty(x.shape, np.int8 if spec.symmetric else np.uint8)
        qmin, qmax = spec.qrange
        if axis is None:
            ok = C.quantize(x, q, float(scale), int(zp), qmin, qmax)
        else:
            s32, z8 = scale.astype("<f4").tobytes(), zp.tobytes()
            ok = C.quantize_ch(x, q, _dims(x.shape, axis), s32, z8, qmin, qmax, spec.symmetric)
        if not ok:
            raise _nan_error()
        return q
    xin = as_channels(x, axis) if axis is not None else x
    try:
        q = _ort.quantize(xin, scale, zp)
    except _ort.FastPathUnavailable:
        return quantize_ref(x, scale, zp, spec, axis)
    if spec.bits < 8:
        # two roundings (zero point and value) can land one above qmax; saturation is at 255
        np.minimum(q, np.uint8(spec.qrange[1]), out=q)
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


def dequantize_compiled(
    codes: Any, shape: tuple[int, ...], scale: float, zp: int, signed: bool
) -> np.ndarray:
    """Per-tensor dequantize with the compiled kernels (``C`` must be set): ``codes`` is any
    buffer of one byte per element (the payload itself: no array is made of it)."""
    assert C is not None
    out = np.empty(shape, np.float32)
    C.dequantize(codes, out, scale, zp, signed)
    return out


def dequantize_compiled_ch(
    codes: Any, shape: tuple[int, ...], scales: bytes, zero_points: bytes, axis: int, signed: bool
) -> np.ndarray:
    """The same per channel, with scales and zero points as the meta carries them."""
    assert C is not None
    out = np.empty(shape, np.float32)
    C.dequantize_ch(codes, out, _dims(shape, axis), scales, zero_points, signed)
    return out


def dequantize(q: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int | None) -> np.ndarray:
    """The ONNX Runtime path (the decoder calls :func:`dequantize_compiled` when it can)."""
    qin = as_channels(q, axis) if axis is not None else q
    try:
        return _ort.dequantize(qin, scale, zp).reshape(q.shape)
    except _ort.FastPathUnavailable:
        return dequantize_ref(q, scale, zp, axis)


def dequantize_ref(q: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int | None) -> np.ndarray:
    if axis is not None:
        bshape = [1] * q.ndim
        bshape[axis] = -1
        scale, zp = scale.reshape(bshape), zp.reshape(bshape)
    diff = q.astype(np.int32) - zp.astype(np.int32)
    out: np.ndarray = diff.astype(np.float32) * scale.astype(np.float32)
    return out


def to_fp16(x: np.ndarray) -> np.ndarray:
    if C is not None and C.HAS_F16:
        h = np.empty(x.shape, np.float16)
        C.to_f16(x, h)
        return h
    try:
        return _ort.to_fp16(x)
    except _ort.FastPathUnavailable:
        return to_fp16_ref(x)


def to_fp16_ref(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return x.astype(np.float16)


def from_fp16(h: np.ndarray) -> np.ndarray:
    if C is not None and C.HAS_F16:
        x = np.empty(h.shape, np.float32)
        C.from_f16(h, x)
        return x
    try:
        return _ort.from_fp16(h)
    except _ort.FastPathUnavailable:
        return from_fp16_ref(h)


def from_fp16_ref(h: np.ndarray) -> np.ndarray:
    return h.astype(np.float32)
