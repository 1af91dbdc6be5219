"""Measure codecs on sample tensors and pick one for an error budget.

Error is the **relative L2 error** ``||x - x'||_2 / ||x||_2`` (float64), the planner's
``--max-error``; cosine similarity is reported beside it. Elements that are non-finite in the
input count as exact when the decoded value is the same non-finite value (raw and fp16 carry
NaN and inf), and as infinite error otherwise. Timings are wall-clock on this machine (one
thread for the kernels), so they are labelled measured, for this machine only.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from splitpipe.errors import SplitpipeError
from splitpipe.kernels.calibration import calibrate
from splitpipe.kernels.codec import Codec, decode, get_codec

#: pick_codec's default candidates, roughly from smallest to largest payload
DEFAULT_CANDIDATES: tuple[str, ...] = (
    "uint2+zstd",
    "uint2/ch+zstd",
    "uint4+zstd",
    "uint4/ch+zstd",
    "int8+zstd",
    "int8/ch+zstd",
    "fp16+zstd",
    "raw+zstd",
    "raw",
)


def _split(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """float64 views of the finite part, and whether the non-finite part decoded exactly."""
    x64, y64 = np.asarray(x, np.float64).reshape(-1), np.asarray(y, np.float64).reshape(-1)
    finite = np.isfinite(x64)
    if finite.all():
        return x64, y64, True
    same = (x64[~finite] == y64[~finite]) | (np.isnan(x64[~finite]) & np.isnan(y64[~finite]))
    return x64[finite], y64[finite], bool(same.all())


def relative_l2(x: np.ndarray, y: np.ndarray) -> float:
    """||x - y|| / ||x|| over finite elements of x (0 when both are all zero)."""
    xf, yf, exact = _split(x, y)
    if not exact:
        return float("inf")
    diff = float(np.linalg.norm(xf - yf))
    norm = float(np.linalg.norm(xf))
    if norm == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / norm


def cosine_similarity(x: np.ndarray, y: np.ndarray) -> float:
    """x.y / (|x| |y|) over finite elements of x; 1 when both are all zero, 0 when one is."""
    xf, yf, exact = _split(x, y)
    if not exact or not np.isfinite(yf).all():
        return float("nan")
    nx, ny = float(np.linalg.norm(xf)), float(np.linalg.norm(yf))
    if nx == 0.0 or ny == 0.0:
        return 1.0 if nx == ny else 0.0
    return float(np.dot(xf, yf) / (nx * ny))


@dataclass(frozen=True)
class CodecMeasurement:
    """A codec measured on one or more sample tensors."""

    codec: str
    samples: int
    raw_bytes: int  # mean bytes of the input tensors
    bytes: int  # mean payload bytes
    bytes_max: int
    ratio: float  # raw_bytes / bytes
    encode_ms: float  # median over samples x repeats
    decode_ms: float
    rel_l2: float  # worst sample
    cosine: float  # worst sample
    static_scales: bool = False
    source: str = "measured"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _one(codec: Codec, x: np.ndarray, repeats: int) -> tuple[int, list[float], list[float], float, float]:
    enc_ms, dec_ms = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        payload, meta = codec.encode(x)
        t1 = time.perf_counter()
        y = decode(payload, meta, max_bytes=max(x.nbytes, 1))
        t2 = time.perf_counter()
        enc_ms.append((t1 - t0) * 1e3)
        dec_ms.append((t2 - t1) * 1e3)
    return len(payload), enc_ms, dec_ms, relative_l2(x, y), cosine_similarity(x, y)


def measure_codec(
    codec: str | Codec, samples: np.ndarray | Sequence[np.ndarray], *, repeats: int = 3
) -> CodecMeasurement:
    """Encode and decode each sample ``repeats`` times; bytes, times, error.

    Raises CodecError if the codec cannot encode a sample (NaN into an integer codec)."""
    c = get_codec(codec) if isinstance(codec, str) else codec
    arrays = [samples] if isinstance(samples, np.ndarray) else list(samples)
    if not arrays:
        raise SplitpipeError("measure_codec needs at least one sample tensor")
    sizes, enc_ms, dec_ms, errs, coss, raw = [], [], [], [], [], []
    for sample in arrays:
        x = np.asarray(sample)
        size, t_enc, t_dec, err, cos = _one(c, x, max(1, repeats))
        sizes.append(size)
        raw.append(x.nbytes)
        enc_ms += t_enc
        dec_ms += t_dec
        errs.append(err)
        coss.append(cos)
    mean_bytes = round(statistics.fmean(sizes))
    mean_raw = round(statistics.fmean(raw))
    return CodecMeasurement(
        codec=c.name,
        samples=len(arrays),
        raw_bytes=mean_raw,
        bytes=mean_bytes,
        bytes_max=max(sizes),
        ratio=mean_raw / mean_bytes if mean_bytes else float("inf"),
        encode_ms=statistics.median(enc_ms),
        decode_ms=statistics.median(dec_ms),
        rel_l2=max(errs),
        cosine=min(coss) if not any(np.isnan(coss)) else float("nan"),
        static_scales=c.calibration is not None,
    )


@dataclass(frozen=True)
class CodecPick:
    """pick_codec's answer: the chosen codec, and everything it considered."""

    codec: str
    measurement: CodecMeasurement
    max_error: float
    candidates: tuple[CodecMeasurement, ...] = ()
    skipped: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "codec": self.codec,
            "max_error": self.max_error,
            "error_metric": "relative_l2",
            "measurement": self.measurement.to_json(),
            "candidates": [m.to_json() for m in self.candidates],
            "skipped": dict(self.skipped),
        }


def pick_codec(
    samples: Sequence[np.ndarray],
    max_error: float,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    *,
    static: bool = False,
    repeats: int = 1,
) -> CodecPick:
    """The codec with the smallest mean payload whose worst relative L2 error over the
    calibration ``samples`` is at most ``max_error`` (ties: lower error, then faster encode).

    ``static=True`` calibrates each quantizing candidate on the samples and measures it with
    those static scales (what an exported graph with folded QuantizeLinear does). Candidates
    that cannot run here (+zstd without zstandard) or cannot encode the samples (NaN into an
    integer codec) are skipped with the reason. SplitpipeError if none qualifies.
    """
    if not (max_error >= 0):
        raise SplitpipeError(f"max_error must be a non-negative number, got {max_error!r}")
    if not samples:
        raise SplitpipeError("pick_codec needs at least one calibration sample")
    measured: list[CodecMeasurement] = []
    skipped: dict[str, str] = {}
    for name in candidates:
        try:
            codec = get_codec(name)
            if static and codec.spec.quantized:
                codec = get_codec(name, calibration=calibrate(name, samples))
            measured.append(measure_codec(codec, samples, repeats=repeats))
        except SplitpipeError as exc:
            skipped[name] = str(exc)
    fitting = [m for m in measured if m.rel_l2 <= max_error]
    if not fitting:
        best = min(measured, key=lambda m: m.rel_l2, default=None)
        hint = f"; the most accurate candidate, {best.codec}, reaches {best.rel_l2:.3g}" if best else ""
        raise SplitpipeError(
            f"no codec among {', '.join(candidates)} keeps the relative L2 error within {max_error:g}{hint}"
        )
    chosen = min(fitting, key=lambda m: (m.bytes, m.rel_l2, m.encode_ms))
    return CodecPick(chosen.codec, chosen, max_error, tuple(measured), skipped)
