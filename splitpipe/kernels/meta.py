"""CodecMeta: what travels beside a payload so that it can be decoded, and its wire forms.

Two wire forms share one validator:

- :meth:`CodecMeta.to_params` gives a flat ``{str: str | int | float | bool}`` map for KServe v2
  ``InferParameter`` maps (keys prefixed ``codec``); per-channel arrays travel as base64 of
  little-endian float32 (scales) and of the stored code type (zero points) in one string each.
- :meth:`CodecMeta.to_json` gives a dict for manifests, with the same content.

Everything read back is validated (types, ranges, array lengths against the shape) and raises
:class:`~splitpipe.errors.CodecError` naming the field; nothing is evaluated or unpickled.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from splitpipe.errors import CodecError, SplitpipeError
from splitpipe.kernels._spec import CodecSpec, parse_name

#: version of the meta layout; a decoder refuses versions it does not know
META_VERSION = 1

#: the original dtypes a payload may declare
RAW_DTYPES = (
    "bool",
    "int8",
    "uint8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float16",
    "float32",
    "float64",
)
FLOAT_DTYPES = ("float16", "float32", "float64")

MAX_RANK = 32
#: libjpeg's largest image side
JPEG_MAX_SIDE = 65500
_F32_MAX = float(np.finfo(np.float32).max)

ParamValue = str | int | float | bool

_ITEMSIZE = {name: np.dtype(name).itemsize for name in RAW_DTYPES}

# wire keys (to_params) and their json names (to_json)
_KEYS = {
    "codec": "codec",
    "codec_version": "version",
    "codec_dtype": "dtype",
    "codec_shape": "shape",
    "codec_scale": "scale",
    "codec_zero_point": "zero_point",
    "codec_axis": "axis",
    "codec_scales": "scales",
    "codec_zero_points": "zero_points",
}


@dataclass(frozen=True)
class CodecMeta:
    """Self-describing meta of one encoded tensor.

    ``scale``/``zero_point`` are set for per-tensor quantizing codecs; ``axis``, ``scales``
    (little-endian float32 bytes) and ``zero_points`` (one stored code per channel: uint8 for
    affine codecs, int8 for symmetric ones) for per-channel ones. Use :meth:`scale_array` and
    :meth:`zero_point_array` to read either form as numpy arrays.
    """

    codec: str
    dtype: str
    shape: tuple[int, ...]
    scale: float | None = None
    zero_point: int | None = None
    axis: int | None = None
    scales: bytes | None = None
    zero_points: bytes | None = None
    version: int = META_VERSION
    # set by validate() once this meta has passed it (not part of the meta's value or wire forms):
    # a meta read from the wire is validated when parsed, and decode() need not do it again
    _checked: CodecSpec | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def _make(
        cls,
        codec: str,
        dtype: str,
        shape: tuple[int, ...],
        scale: float | None = None,
        zero_point: int | None = None,
        axis: int | None = None,
        scales: bytes | None = None,
        zero_points: bytes | None = None,
    ) -> CodecMeta:
        """``CodecMeta(codec, dtype, shape, ...)`` without the dataclass __init__'s setattr per
        field (a quarter of an encode of a small tensor); a test checks the two are equal."""
        meta = object.__new__(cls)
        d = meta.__dict__
        d["codec"], d["dtype"], d["shape"] = codec, dtype, shape
        d["scale"], d["zero_point"], d["axis"] = scale, zero_point, axis
        d["scales"], d["zero_points"] = scales, zero_points
        d["version"], d["_checked"] = META_VERSION, None
        return meta

    @property
    def spec(self) -> CodecSpec:
        return parse_name(self.codec)

    @functools.cached_property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded array."""
        itemsize = _ITEMSIZE.get(self.dtype) or np.dtype(self.dtype).itemsize
        return self.size * itemsize

    def scale_array(self) -> np.ndarray:
        """Scales as float32: shape () per tensor, (C,) per channel."""
        if self.scales is not None:
            return np.frombuffer(self.scales, dtype="<f4").astype(np.float32)
        if self.scale is None:
            raise CodecError(f"codec {self.codec} has no scale")
        return np.array(self.scale, dtype=np.float32)

    def zero_point_array(self) -> np.ndarray:
        """Zero points in the stored code type (uint8, or int8 for /sym)."""
        code = np.int8 if self.spec.symmetric else np.uint8
        if self.zero_points is not None:
            return np.frombuffer(self.zero_points, dtype=code).copy()
        if self.zero_point is None:
            raise CodecError(f"codec {self.codec} has no zero point")
        return np.array(self.zero_point, dtype=code)

    # ---- wire forms -------------------------------------------------------------------

    def to_params(self) -> dict[str, ParamValue]:
        out: dict[str, ParamValue] = {
            "codec": self.codec,
            "codec_version": self.version,
            "codec_dtype": self.dtype,
            "codec_shape": ",".join(str(d) for d in self.shape),
        }
        if self.scale is not None:
            out["codec_scale"] = float(self.scale)
        if self.zero_point is not None:
            out["codec_zero_point"] = int(self.zero_point)
        if self.axis is not None:
            out["codec_axis"] = int(self.axis)
        if self.scales is not None:
            out["codec_scales"] = base64.b64encode(self.scales).decode("ascii")
        if self.zero_points is not None:
            out["codec_zero_points"] = base64.b64encode(self.zero_points).decode("ascii")
        return out

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> CodecMeta:
        """Build and validate meta from a parameter map; keys not starting with ``codec`` are
        ignored (the map may carry other parameters), unknown ``codec*`` keys are refused."""
        if not isinstance(params, Mapping):
            raise CodecError(f"codec parameters must be a mapping, got {type(params).__name__}")
        fields: dict[str, Any] = {}
        for key, value in params.items():
            if not isinstance(key, str) or not key.startswith("codec"):
                continue
            if key not in _KEYS:
                raise CodecError(f"unknown codec parameter {key!r}; known: {', '.join(_KEYS)}")
            fields[_KEYS[key]] = value
        return _build(fields, wire="param")

    def to_json(self) -> dict[str, Any]:
        params = self.to_params()
        out: dict[str, Any] = {_KEYS[k]: v for k, v in params.items()}
        out["shape"] = list(self.shape)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CodecMeta:
        if not isinstance(data, Mapping):
            raise CodecError(f"codec meta must be a JSON object, got {type(data).__name__}")
        known = set(_KEYS.values())
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise CodecError(f"unknown codec meta field(s) {unknown}; known: {', '.join(sorted(known))}")
        return _build(dict(data), wire="json")


# ---- validation ------------------------------------------------------------------------


def _int(fields: Mapping[str, Any], key: str) -> int:
    value = fields[key]
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise CodecError(f"codec meta {key} must be an integer, got {value!r}")
    return int(value)


def _float(fields: Mapping[str, Any], key: str) -> float:
    value = fields[key]
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise CodecError(f"codec meta {key} must be a number, got {value!r}")
    return float(value)


def _b64(fields: Mapping[str, Any], key: str, nbytes: int) -> bytes:
    value = fields[key]
    if not isinstance(value, str):
        raise CodecError(f"codec meta {key} must be a base64 string, got {type(value).__name__}")
    if len(value) > 4 * (nbytes // 3 + 1):
        raise CodecError(f"codec meta {key} is {len(value)} characters, expected {nbytes} bytes")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise CodecError(f"codec meta {key} is not valid base64: {exc}") from None
    if len(raw) != nbytes:
        raise CodecError(f"codec meta {key} holds {len(raw)} bytes, expected {nbytes}")
    return raw


def _shape(value: Any, wire: str) -> tuple[int, ...]:
    if wire == "param":
        if not isinstance(value, str):
            raise CodecError(f"codec meta shape must be a string like '1,256,56,56', got {value!r}")
        text = value.strip()
        parts = text.split(",") if text else []
        if len(parts) > MAX_RANK:
            raise CodecError(f"codec meta shape has {len(parts)} dimensions, at most {MAX_RANK}")
        # ASCII digits only: str.isdigit() also takes '²' (which int() refuses) and other scripts' digits
        if not all(p.strip().isascii() and p.strip().isdigit() and len(p.strip()) <= 15 for p in parts):
            raise CodecError(f"codec meta shape {value!r} must be comma-separated non-negative integers")
        return tuple(int(p) for p in parts)
    if not isinstance(value, list | tuple):
        raise CodecError(f"codec meta shape must be a list of integers, got {value!r}")
    if len(value) > MAX_RANK:
        raise CodecError(f"codec meta shape has {len(value)} dimensions, at most {MAX_RANK}")
    dims = []
    for d in value:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0 or d >= 10**15:
            raise CodecError(f"codec meta shape {value!r} must hold non-negative integers")
        dims.append(int(d))
    return tuple(dims)


def _build(fields: dict[str, Any], wire: str) -> CodecMeta:
    """Wire values -> typed fields (types checked here), then :func:`validate`."""
    for key in ("codec", "version", "dtype", "shape"):
        if key not in fields:
            raise CodecError(f"codec meta lacks {key!r}")
    version = _int(fields, "version")
    if version != META_VERSION:
        raise CodecError(
            f"codec meta version {version} is not supported (this splitpipe reads {META_VERSION})"
        )
    name = fields["codec"]
    try:
        spec = parse_name(name)
    except SplitpipeError as exc:
        raise CodecError(str(exc)) from None
    dtype = fields["dtype"]
    if not isinstance(dtype, str):
        raise CodecError(f"codec meta dtype must be a string, got {dtype!r}")
    shape = _shape(fields["shape"], wire)
    if spec.image:  # before the per-channel arrays, whose expected length depends on the shape
        check_image_shape(spec.name, shape)
    kw: dict[str, Any] = {}
    if fields.get("scale") is not None:
        kw["scale"] = _float(fields, "scale")
    if fields.get("zero_point") is not None:
        kw["zero_point"] = _int(fields, "zero_point")
    if fields.get("axis") is not None:
        axis = kw["axis"] = _int(fields, "axis")
        if not 0 <= axis < len(shape):
            raise CodecError(f"codec meta axis {axis} out of range for a shape of rank {len(shape)}")
        if spec.image and axis != 1:
            raise CodecError(f"codec meta axis of {spec.name} must be 1 (the C of NCHW), got {axis}")
        channels = shape[axis]
        for key, width in (("scales", 4), ("zero_points", 1)):
            if fields.get(key) is not None:
                kw[key] = _b64(fields, key, width * channels)
    else:
        for key in ("scales", "zero_points"):
            if fields.get(key) is not None:
                kw[key] = b""  # reported by validate: not allowed without an axis
    meta = CodecMeta(codec=spec.name, dtype=dtype, shape=shape, version=version, **kw)
    validate(meta)
    return meta


# which of (scale, zero_point, axis, scales, zero_points) a codec carries, by (quantized, per channel)
_NEED = {
    (False, False): (False,) * 5,
    (True, False): (True, True, False, False, False),
    (True, True): (False, False, True, True, True),
}


def _f32_round(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def check_image_shape(codec: str, shape: tuple[int, ...]) -> None:
    """Image codecs (jpeg) take NCHW with C = 1 (grey) or 3 (RGB) and sides libjpeg can store."""
    if len(shape) != 4 or shape[1] not in (1, 3):
        raise CodecError(
            f"codec {codec} takes NCHW image tensors with 1 or 3 channels, got shape {list(shape)}"
        )
    h, w = shape[2], shape[3]
    if not (0 < h <= JPEG_MAX_SIDE and 0 < w <= JPEG_MAX_SIDE):
        raise CodecError(
            f"codec {codec} takes images 1..{JPEG_MAX_SIDE} pixels high and wide, got {h}x{w} (shape {list(shape)})"
        )


def validate(meta: CodecMeta) -> CodecSpec:
    """Check a CodecMeta however it was made (the decoder calls this on every payload): known
    codec and version, dtype, shape, and the scale fields its codec needs, in range. A meta is
    immutable, so one that has passed is remembered as such."""
    spec = meta._checked
    if spec is None:
        spec = _validate(meta)
        object.__setattr__(meta, "_checked", spec)
    return spec


def _validate(meta: CodecMeta) -> CodecSpec:
    if meta.version != META_VERSION:
        raise CodecError(
            f"codec meta version {meta.version!r} is not supported (this splitpipe reads {META_VERSION})"
        )
    try:
        spec = parse_name(meta.codec)
    except SplitpipeError as exc:
        raise CodecError(str(exc)) from None
    allowed = FLOAT_DTYPES if spec.base != "raw" else RAW_DTYPES
    if meta.dtype not in allowed:
        raise CodecError(
            f"codec meta dtype {meta.dtype!r} is not valid for {spec.name}; accepted: {', '.join(allowed)}"
        )
    shape = meta.shape
    if (
        not isinstance(shape, tuple)
        or len(shape) > MAX_RANK
        or not all(type(d) is int and 0 <= d < 10**15 for d in shape)
    ):
        raise CodecError(f"codec meta shape {shape!r} must be at most {MAX_RANK} non-negative integers")
    if spec.image:
        check_image_shape(spec.name, shape)

    have = (meta.scale, meta.zero_point, meta.axis, meta.scales, meta.zero_points)
    need = _NEED[(spec.quantized, spec.per_channel)]
    if tuple(v is not None for v in have) != need:
        names = ("scale", "zero_point", "axis", "scales", "zero_points")
        present = {k for k, v in zip(names, have, strict=True) if v is not None}
        wanted = {k for k, n in zip(names, need, strict=True) if n}
        missing, extra = sorted(wanted - present), sorted(present - wanted)
        parts = ([f"lacks {missing}"] if missing else []) + ([f"must not carry {extra}"] if extra else [])
        raise CodecError(f"codec meta for {spec.name} {' and '.join(parts)}")
    if not spec.quantized:
        return spec
    lo, hi = spec.qrange
    if not spec.per_channel:
        scale, zp = meta.scale, meta.zero_point
        if type(scale) is not float or not (math.isfinite(scale) and 0 < scale <= _F32_MAX):
            raise CodecError(f"codec meta scale must be a finite positive float32, got {scale!r}")
        if _f32_round(scale) != scale:
            raise CodecError(f"codec meta scale {scale!r} is not a float32 value")
        if type(zp) is not int or not lo <= zp <= hi or (spec.symmetric and zp != 0):
            want = "0" if spec.symmetric else f"{lo}..{hi}"
            raise CodecError(f"codec meta zero_point {zp!r} out of range for {spec.name} (expected {want})")
        return spec
    axis = meta.axis
    if type(axis) is not int or not 0 <= axis < len(shape):
        raise CodecError(f"codec meta axis {axis!r} out of range for a shape of rank {len(shape)}")
    if spec.image and axis != 1:
        raise CodecError(f"codec meta axis of {spec.name} must be 1 (the C of NCHW), got {axis}")
    channels = shape[axis]
    if not isinstance(meta.scales, bytes) or len(meta.scales) != 4 * channels:
        raise CodecError(f"codec meta scales must be {channels} float32 values ({4 * channels} bytes)")
    if not isinstance(meta.zero_points, bytes) or len(meta.zero_points) != channels:
        raise CodecError(f"codec meta zero_points must be {channels} bytes")
    scales = np.frombuffer(meta.scales, dtype="<f4")
    if not (np.isfinite(scales).all() and (scales > 0).all()):
        raise CodecError("codec meta scales must all be finite and positive")
    z = np.frombuffer(meta.zero_points, dtype=np.int8 if spec.symmetric else np.uint8)
    if spec.symmetric and z.any():
        raise CodecError(f"codec meta zero_points must all be 0 for {spec.name}")
    if not spec.symmetric and (z > hi).any():
        raise CodecError(f"codec meta zero_points must lie in {lo}..{hi} for {spec.name}")
    return spec
