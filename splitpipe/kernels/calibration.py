"""Static scales: a calibration pass over sample tensors, stored in the export manifest.

With a :class:`Calibration`, a codec skips the per-tensor range pass and uses the same scales for
every frame (what a QuantizeLinear folded into an exported graph does); values outside the
calibrated range saturate to the end codes. The range rule is min/max over all samples, per
tensor or per channel, then the same scale rule as dynamic scales (splitpipe.kernels.quant).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitpipe.errors import SplitpipeError
from splitpipe.kernels import quant
from splitpipe.kernels._spec import parse_name

CALIBRATION_VERSION = 1


@dataclass(frozen=True)
class Calibration:
    """Scales and zero points for one quantizing codec (``codec`` has no lossless stage)."""

    codec: str
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None
    min: tuple[float, ...] = ()
    max: tuple[float, ...] = ()
    samples: int = 0
    method: str = "minmax"
    version: int = CALIBRATION_VERSION

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @functools.cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        spec = parse_name(self.codec)
        scale = np.array(self.scale, np.float32)
        zp = np.array(self.zero_point, np.int8 if spec.symmetric else np.uint8)
        if self.axis is None:
            scale, zp = scale.reshape(()), zp.reshape(())
        return scale, zp

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale float32, zero_point in the code type): shape () per tensor, (C,) per channel."""
        return self._arrays

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "codec": self.codec,
            "method": self.method,
            "samples": self.samples,
            "axis": self.axis,
            "scale": list(self.scale),
            "zero_point": list(self.zero_point),
            "min": list(self.min),
            "max": list(self.max),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibration:
        """Validate and load; SplitpipeError names the bad field."""

        def bad(why: str) -> SplitpipeError:
            return SplitpipeError(f"invalid codec calibration: {why}")

        if not isinstance(data, Mapping):
            raise bad(f"expected an object, got {type(data).__name__}")
        if data.get("version") != CALIBRATION_VERSION:
            raise bad(f"version {data.get('version')!r} is not supported (reads {CALIBRATION_VERSION})")
        try:
            spec = parse_name(str(data.get("codec")))
        except SplitpipeError as exc:
            raise bad(str(exc)) from None
        if not spec.quantized or spec.entropy:
            raise bad(f"codec {spec.name} is not a quantizer name such as int8/ch")
        axis = data.get("axis")
        if (axis is not None) != spec.per_channel or (
            axis is not None and (type(axis) is not int or axis < 0)
        ):
            raise bad(f"axis {axis!r} does not fit codec {spec.name}")
        scale, zp = data.get("scale"), data.get("zero_point")
        if not isinstance(scale, list) or not isinstance(zp, list) or len(scale) != len(zp):
            raise bad("scale and zero_point must be lists of equal length")
        if not spec.per_channel and len(scale) != 1:
            raise bad(f"a per-tensor calibration has one scale, got {len(scale)}")
        qmin, qmax = spec.qrange
        for s in scale:
            if type(s) not in (int, float) or not (math.isfinite(s) and s > 0):
                raise bad(f"scale {s!r} is not a finite positive number")
        for z in zp:
            if type(z) is not int or not qmin <= z <= qmax or (spec.symmetric and z != 0):
                raise bad(f"zero point {z!r} out of range for {spec.name}")
        lo, hi = data.get("min", []), data.get("max", [])
        if not isinstance(lo, list) or not isinstance(hi, list):
            raise bad("min and max must be lists")
        samples = data.get("samples", 0)
        return cls(
            codec=spec.name,
            scale=tuple(float(np.float32(s)) for s in scale),
            zero_point=tuple(zp),
            axis=axis,
            min=tuple(float(v) for v in lo),
            max=tuple(float(v) for v in hi),
            samples=samples if type(samples) is int else 0,
            method=str(data.get("method", "minmax")),
        )


def calibrate(name: str, samples: Sequence[np.ndarray], *, axis: int = 1) -> Calibration:
    """Static scales for codec ``name`` (its lossless stage, if any, is ignored) from the
    min/max of the sample tensors; per channel along ``axis`` for /ch codecs."""
    spec = parse_name(name)
    if not spec.quantized:
        raise SplitpipeError(
            f"codec {spec.name} has no scales to calibrate; calibrate int8, uint4, uint2 or jpeg codecs"
        )
    if not samples:
        raise SplitpipeError("calibration needs at least one sample tensor")
    lo_all: np.ndarray | None = None
    hi_all: np.ndarray | None = None
    channel_axis: int | None = None
    for i, sample in enumerate(samples):
        x = np.asarray(sample)
        if x.dtype.kind != "f":
            raise SplitpipeError(f"calibration sample {i} has dtype {x.dtype}, expected floating point")
        x32 = x.astype(np.float32, copy=False)
        if spec.per_channel:
            a = axis if axis >= 0 else x32.ndim + axis
            if not 0 <= a < x32.ndim:
                raise SplitpipeError(f"calibration sample {i} has rank {x32.ndim}, no channel axis {axis}")
            if channel_axis is not None and a != channel_axis:
                raise SplitpipeError("calibration samples differ in rank")
            channel_axis = a
        lo, hi = quant.value_range(x32, channel_axis)
        if lo_all is not None and lo.shape != lo_all.shape:
            raise SplitpipeError(
                f"calibration sample {i} has {lo.size} channels, the first had {lo_all.size}"
            )
        lo_all = lo if lo_all is None else np.minimum(lo_all, lo)
        hi_all = hi if hi_all is None else np.maximum(hi_all, hi)
    assert lo_all is not None and hi_all is not None
    scale, zp = quant.params_from_range(lo_all, hi_all, spec)
    return Calibration(
        codec=spec.quant_name,
        scale=tuple(float(s) for s in scale.reshape(-1)),
        zero_point=tuple(int(z) for z in zp.reshape(-1)),
        axis=channel_axis,
        min=tuple(float(v) for v in lo_all.reshape(-1)),
        max=tuple(float(v) for v in hi_all.reshape(-1)),
        samples=len(samples),
    )
