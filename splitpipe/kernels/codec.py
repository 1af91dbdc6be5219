"""Codecs: ``encode(array) -> (payload, meta)`` and ``decode(payload, meta) -> array``.

A codec is a quantizer or cast (raw, fp16, int8, int8/sym, uint4, uint2; /ch per channel) and an
optional lossless stage (+zstd, +lz4); or ``jpeg``, a per-channel uint8 quantizer whose codes are
JPEG-coded image by image (NCHW, 1 or 3 channels). ``decode`` dispatches on ``meta.codec`` alone,
so a server needs no configuration to read what an agent sends.

Decoding checks, before allocating anything: the meta (CodecMeta validates itself on the wire),
the decoded size against ``max_bytes``, and the payload length against what the meta implies
(for +zstd/+lz4: the frame's declared size, then a bounded decompression; for jpeg: the length
prefixes, then every stream's header against the meta's image size and mode).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from splitpipe.errors import CodecError, SplitpipeError
from splitpipe.kernels import entropy, jpeg, pack, quant
from splitpipe.kernels._spec import CodecSpec, parse_name
from splitpipe.kernels.calibration import Calibration
from splitpipe.kernels.meta import FLOAT_DTYPES, RAW_DTYPES, CodecMeta, check_image_shape, validate

#: default limit on the decoded size of one tensor
DEFAULT_MAX_BYTES = 64 << 20

#: a fast path (ONNX Runtime kernels) or the slow obvious reference (numpy / pure Python)
Impl = Literal["fast", "reference"]

#: default channel axis of /ch codecs: 1, the C of NCHW, NCL and NC tensors
CHANNEL_AXIS = 1


def _stream_bytes(spec: CodecSpec, meta: CodecMeta) -> int:
    """Length of the stream before the lossless stage, implied by the meta."""
    n = meta.size
    if spec.base == "raw":
        return n * np.dtype(meta.dtype).itemsize
    if spec.base == "fp16":
        return 2 * n
    return pack.packed_size(n, spec.bits)


@dataclass(frozen=True, eq=False)
class Codec:
    """One configured codec; make it with :func:`get_codec`. Thread safe."""

    spec: CodecSpec
    calibration: Calibration | None = None
    axis: int = CHANNEL_AXIS
    impl: Impl = "fast"
    # derived once in __post_init__, so that encode() does no per-call setup
    _allowed: dict[np.dtype[Any], str] = field(init=False, repr=False)
    _code: np.dtype[Any] = field(init=False, repr=False)
    _static: dict[str, object] | None = field(init=False, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    def __repr__(self) -> str:
        static = ", static scales" if self.calibration else ""
        return f"Codec({self.name!r}{static}, impl={self.impl})"

    def __post_init__(self) -> None:
        spec = self.spec
        allowed = RAW_DTYPES if spec.base == "raw" else FLOAT_DTYPES
        object.__setattr__(self, "_allowed", {np.dtype(n): n for n in allowed})
        object.__setattr__(self, "_code", np.dtype(np.int8 if spec.symmetric else np.uint8))
        static: dict[str, object] | None = None
        if self.calibration is not None:
            scale, zp = self.calibration.arrays()
            if spec.per_channel:
                static = {"scales": scale.astype("<f4").tobytes(), "zero_points": zp.tobytes()}
            else:
                static = {"scale": float(scale), "zero_point": int(zp)}
        object.__setattr__(self, "_static", static)

    # ---- encode ---------------------------------------------------------------------------

    def encode(self, array: np.ndarray) -> tuple[bytes, CodecMeta]:
        """Encode one tensor. Lossy codecs take float16/32/64; raw takes any numeric dtype;
        jpeg takes NCHW tensors with 1 or 3 channels."""
        x = np.asarray(array)
        spec = self.spec
        allowed = self._allowed
        dtype = allowed.get(x.dtype)
        if dtype is None:
            if x.dtype.name not in allowed.values():
                raise CodecError(
                    f"codec {spec.name} cannot encode dtype {x.dtype}; accepted: {', '.join(allowed.values())}"
                )
            dtype = x.dtype.name
            x = x.astype(dtype)  # other byte order: make it native first
        if x.ndim > 32:
            raise CodecError(f"codec {spec.name} takes at most 32 dimensions, got {x.ndim}")
        if spec.image:
            check_image_shape(spec.name, x.shape)
        kw: dict[str, object] = {}
        stream: np.ndarray | bytes
        if spec.base == "raw":
            stream = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<"))
        elif spec.base == "fp16":
            stream = self._fp16(x)
        else:
            stream, kw = self._quantize(x)
        if spec.image:
            assert spec.quality is not None and isinstance(stream, np.ndarray)
            payload = jpeg.encode(stream.transpose(0, 2, 3, 1), spec.quality)
        else:
            payload = self._compress(stream)
        meta = CodecMeta._make(spec.name, dtype, x.shape, **kw)  # type: ignore[arg-type]
        return payload, meta

    def _compress(self, stream: np.ndarray | bytes) -> bytes:
        spec = self.spec
        if isinstance(stream, bytes):
            return stream if spec.entropy is None else entropy.compress(stream, spec.entropy, spec.level)
        if spec.entropy is None:
            return stream.tobytes()
        return entropy.compress(stream.reshape(-1).view(np.uint8).data, spec.entropy, spec.level)

    def _fp16(self, x: np.ndarray) -> np.ndarray:
        if x.dtype == np.float16:
            return np.ascontiguousarray(x, dtype="<f2")
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        if self.impl == "reference" or x32.size == 0:
            return quant.to_fp16_ref(x32)
        return quant.to_fp16(x32)

    def _channel_axis(self, ndim: int) -> int:
        axis = self.axis if self.axis >= 0 else ndim + self.axis
        if not 0 <= axis < ndim:
            raise CodecError(
                f"codec {self.spec.name} quantizes per channel along axis {self.axis}, "
                f"but the tensor has rank {ndim}; use a per-tensor codec for it"
            )
        return axis

    def _quantize(self, x: np.ndarray) -> tuple[np.ndarray | bytes, dict[str, object]]:
        spec = self.spec
        ref = self.impl == "reference"
        code = self._code
        if x.dtype == np.float32:
            x32 = np.ascontiguousarray(x)
        else:
            with np.errstate(over="ignore"):  # float64 beyond float32: inf, then saturated
                x32 = np.ascontiguousarray(x, dtype=np.float32)
        axis = self._channel_axis(x32.ndim) if spec.per_channel else None
        static = self._static
        if static is None and not ref and x32.size:
            compiled = self._quantize_compiled(x32, axis)
            if compiled is not None:
                return compiled
        if static is not None:
            assert self.calibration is not None
            scale, zp = self.calibration.arrays()
            if axis is not None and scale.size != x32.shape[axis]:
                raise CodecError(
                    f"calibration has {scale.size} channels, the tensor has {x32.shape[axis]} along axis {axis}"
                )
            if ref:
                quant.value_range_ref(x32, None)  # only for its NaN check
            elif quant.C is None:  # the compiled quantize refuses NaN itself, in its one pass
                quant.check_no_nan(x32)
            kw = dict(static, axis=axis) if axis is not None else static
        elif axis is None and not ref:
            # per-tensor without the compiled kernels: Python floats, no 0-d numpy arithmetic
            s, z = quant.params_scalar(*quant.range_scalar(x32), spec)
            scale, zp = np.array(s, np.float32), np.array(z, code)
            kw = {"scale": s, "zero_point": z}
        else:
            lo, hi = (quant.value_range_ref if ref else quant.value_range)(x32, axis)
            scale, zp = quant.params_from_range(lo, hi, spec)
            if axis is None:
                kw = {"scale": float(scale), "zero_point": int(zp)}
            else:
                kw = {"axis": axis, "scales": scale.astype("<f4").tobytes(), "zero_points": zp.tobytes()}
        if x32.size == 0:
            codes = np.zeros(x32.shape, code)
        elif ref:
            codes = quant.quantize_ref(x32, scale, zp, spec, axis)
        else:
            codes = quant.quantize(x32, scale, zp, spec, axis)
        stream: np.ndarray | bytes
        if spec.bits == 8:
            stream = codes
        elif ref:
            stream = np.frombuffer(pack.pack_ref(codes.reshape(-1).tolist(), spec.bits), np.uint8)
        else:
            stream = pack.pack(codes, spec.bits)
        return stream, kw

    def _quantize_compiled(
        self, x32: np.ndarray, axis: int | None
    ) -> tuple[np.ndarray | bytes, dict[str, object]] | None:
        """Dynamic scales in one compiled call (range, scale rule, codes); None without the
        compiled kernels or when x holds NaN or inf (the numpy path handles those)."""
        spec = self.spec
        kw: dict[str, object]
        if axis is None:
            got = quant.quantize_dynamic(x32, spec)
            if got is None:
                return None
            codes, scale, zero_point = got
            kw = {"scale": scale, "zero_point": zero_point}
        else:
            got_ch = quant.quantize_dynamic_ch(x32, spec, axis)
            if got_ch is None:
                return None
            codes, scales, zero_points = got_ch
            kw = {"axis": axis, "scales": scales, "zero_points": zero_points}
        if spec.image:  # jpeg codes them image by image
            return np.frombuffer(codes, np.uint8).reshape(x32.shape), kw
        if spec.bits < 8:
            return pack.pack(np.frombuffer(codes, np.uint8), spec.bits), kw
        return codes, kw

    # ---- decode ---------------------------------------------------------------------------

    def decode(self, payload: bytes, meta: CodecMeta, *, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
        """Decode a payload; dispatches on ``meta.codec`` (see :func:`decode`)."""
        return decode(payload, meta, max_bytes=max_bytes, impl=self.impl)


def get_codec(
    name: str, *, calibration: Calibration | None = None, axis: int = CHANNEL_AXIS, impl: Impl = "fast"
) -> Codec:
    """A codec by name (see docs/codecs.md); SplitpipeError lists the accepted forms.

    ``calibration`` gives static scales (from :func:`calibrate`) instead of scales computed from
    each tensor; ``axis`` is the channel axis of /ch codecs (default 1, NCHW).
    """
    spec = parse_name(name)
    if spec.entropy:
        entropy.check_available(spec.entropy)
    if spec.image:
        jpeg.check_available()
    if impl not in ("fast", "reference"):
        raise SplitpipeError(f"unknown codec implementation {impl!r}; accepted: fast, reference")
    if calibration is not None:
        if not spec.quantized:
            raise SplitpipeError(
                f"codec {spec.name} has no scales; a calibration applies to int8, uint4, uint2, jpeg"
            )
        if calibration.codec != spec.quant_name:
            raise SplitpipeError(
                f"calibration is for {calibration.codec}, not for {spec.quant_name} (codec {spec.name})"
            )
        if calibration.axis is not None:
            axis = calibration.axis
    if spec.image and axis != CHANNEL_AXIS:
        raise SplitpipeError(f"codec {spec.name} takes NCHW tensors: its channel axis is 1, not {axis}")
    return Codec(spec, calibration, axis, impl)


def decode(
    payload: bytes | bytearray | memoryview,
    meta: CodecMeta,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    impl: Impl = "fast",
) -> np.ndarray:
    """Decode a payload with the codec its meta names. Raises CodecError on anything wrong:
    a meta that is not CodecMeta, a decoded size above ``max_bytes``, a payload whose length
    does not match the meta, a corrupted or truncated frame."""
    if not isinstance(meta, CodecMeta):
        raise CodecError(f"meta must be a CodecMeta (use CodecMeta.from_params), got {type(meta).__name__}")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise CodecError(f"payload must be bytes, got {type(payload).__name__}")
    spec = validate(meta)
    nbytes = meta.nbytes
    if nbytes > max_bytes:
        raise CodecError(
            f"decoded tensor {meta.dtype}{list(meta.shape)} would be {nbytes} bytes, above the limit of {max_bytes}"
        )
    ref = impl == "reference"
    if spec.image:
        codes = jpeg.decode(payload, meta.shape)
        return _restore(meta, np.ascontiguousarray(codes.transpose(0, 3, 1, 2)), ref)
    expected = _stream_bytes(spec, meta)
    if spec.entropy:
        stream: bytes | bytearray | memoryview = entropy.decompress(bytes(payload), spec.entropy, expected)
    else:
        if len(payload) != expected:
            raise CodecError(
                f"payload is {len(payload)} bytes, the meta of {spec.name} {list(meta.shape)} implies {expected}"
            )
        stream = payload
    shape = meta.shape
    if spec.base == "raw":
        if meta.dtype == "bool" and np.frombuffer(stream, np.uint8).max(initial=0) > 1:
            raise CodecError("payload of a bool tensor holds bytes other than 0 and 1")
        return (
            np.frombuffer(stream, dtype=np.dtype(meta.dtype).newbyteorder("<"))
            .astype(meta.dtype)
            .reshape(shape)
        )
    if spec.base == "fp16":
        h = np.frombuffer(stream, dtype="<f2").reshape(shape)
        if meta.dtype == "float16":
            return h.astype(np.float16)
        out = quant.from_fp16_ref(h) if ref or h.size == 0 else quant.from_fp16(h)
        return out if meta.dtype == "float32" else out.astype(meta.dtype)
    return _dequantize(spec, meta, stream, ref)


def _dequantize(
    spec: CodecSpec, meta: CodecMeta, stream: bytes | bytearray | memoryview, ref: bool
) -> np.ndarray:
    n, shape = meta.size, meta.shape
    if spec.bits == 8 and n and not ref and quant.C is not None:
        return _restore_compiled(meta, stream, spec.symmetric)  # the codes are the payload itself
    code = np.int8 if spec.symmetric else np.uint8
    raw = np.frombuffer(stream, dtype=np.uint8)
    if spec.bits < 8:
        if ref:
            codes = np.array(pack.unpack_ref(bytes(raw), spec.bits, n), np.uint8)
        else:
            codes = pack.unpack(raw, spec.bits, n)
    else:
        codes = raw.view(code)
    codes = codes.reshape(shape)
    if spec.bits < 8 and (codes > spec.qrange[1]).any():  # pragma: no cover - unpack masks
        raise CodecError("code out of range")
    return _restore(meta, codes, ref)


def _restore(meta: CodecMeta, codes: np.ndarray, ref: bool) -> np.ndarray:
    """Codes of the meta's shape -> floats of the meta's dtype."""
    n, shape = meta.size, meta.shape
    axis = meta.axis
    if n and not ref and quant.C is not None:
        return _restore_compiled(meta, codes, codes.dtype == np.int8)
    scale, zp = meta.scale_array(), meta.zero_point_array()
    if axis is not None and scale.size != shape[axis]:
        raise CodecError(f"meta has {scale.size} scales for {shape[axis]} channels")
    if n == 0:
        out = np.zeros(shape, np.float32)
    elif ref:
        out = quant.dequantize_ref(codes, scale, zp, axis)
    else:
        out = quant.dequantize(codes, scale, zp, axis)
    return out if meta.dtype == "float32" else out.astype(meta.dtype)


def _restore_compiled(meta: CodecMeta, codes: Any, signed: bool) -> np.ndarray:
    """:func:`_restore` with the compiled kernels, which read the (validated) meta's own fields
    and any buffer of one code byte per element."""
    if meta.axis is None:
        assert meta.scale is not None and meta.zero_point is not None
        out = quant.dequantize_compiled(codes, meta.shape, meta.scale, meta.zero_point, signed)
    else:
        assert meta.scales is not None and meta.zero_points is not None
        out = quant.dequantize_compiled_ch(
            codes, meta.shape, meta.scales, meta.zero_points, meta.axis, signed
        )
    return out if meta.dtype == "float32" else out.astype(meta.dtype)
