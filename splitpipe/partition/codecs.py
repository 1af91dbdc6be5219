"""The codec stage of a plan: real bytes and times from encoding each cut's real tensors.

Every cut's tensors are computed for a few calibration inputs (one ONNX Runtime run of the
whole model per input), then encoded and decoded with the requested codec: the bytes on the
wire are the payload sizes plus the codec's parameters as they are serialized in the request
(per-channel scales are not free), not a guess from the shape, and encode/decode times are
measured here. For a device or server that is not this machine, those times are scaled by the ratio of
memory bandwidths (codecs are memory-bound) and flagged estimated.

``auto`` picks, per cut, the codec with the fewest bytes whose worst relative L2 error over the
calibration inputs stays within ``max_error``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitpipe.errors import SplitpipeError

AUTO = "auto"
DEFAULT_MAX_ERROR = 0.01


@dataclass(frozen=True)
class CutCodec:
    """The codec chosen for one cut and what it measured on the cut's real tensors."""

    codec: str
    tx_bytes: int
    encode_ms: float
    decode_ms: float
    rel_l2: float


def meta_bytes(meta: Any) -> int:
    """Serialized size of a codec meta in an Open Inference Protocol input's parameter map."""
    from splitpipe.proto.inference import grpc_service_pb2 as pb

    tensor = pb.ModelInferRequest.InferInputTensor()
    for key, value in meta.to_params().items():
        param = tensor.parameters[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = str(value)
    return int(tensor.ByteSize())


def wire_bytes(codec: Any, x: np.ndarray) -> int:
    """Payload plus codec parameters for one tensor."""
    payload, meta = codec.encode(x)
    return len(payload) + meta_bytes(meta)


def _measure(name: str, per_sample: Sequence[Sequence[np.ndarray]], repeats: int) -> CutCodec:
    from splitpipe.kernels import get_codec, measure_codec

    tensors = list(zip(*per_sample, strict=True))  # per tensor, its value for each sample
    results = [measure_codec(name, list(values), repeats=repeats) for values in tensors]
    codec = get_codec(name)
    params = max(sum(meta_bytes(codec.encode(x)[1]) for x in sample) for sample in per_sample)
    return CutCodec(
        codec=results[0].codec,
        tx_bytes=sum(r.bytes_max for r in results) + params,
        encode_ms=sum(r.encode_ms for r in results),
        decode_ms=sum(r.decode_ms for r in results),
        rel_l2=max(r.rel_l2 for r in results),
    )


def codec_for_cut(
    codec: str,
    per_sample: Sequence[Sequence[np.ndarray]],
    *,
    max_error: float | None = None,
    repeats: int = 3,
) -> CutCodec:
    """Measure ``codec`` (or, for ``auto``, choose one) on a cut's tensors, given per calibration sample."""
    if codec != AUTO:
        return _measure(codec, per_sample, repeats)

    from splitpipe.kernels import DEFAULT_CANDIDATES, get_codec, parse_name

    budget = DEFAULT_MAX_ERROR if max_error is None else max_error
    # A lossless stage does not change the error: measure each quantizer once, then only the
    # payload size of its entropy-coded variants.
    base_error: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for name in DEFAULT_CANDIDATES:
        base = parse_name(name).quant_name
        try:
            if base not in base_error:
                base_error[base] = _measure(base, per_sample, repeats=1).rel_l2
            if base_error[base] > budget:
                continue
            variant = get_codec(name)
            sizes[name] = max(sum(wire_bytes(variant, x) for x in sample) for sample in per_sample)
        except SplitpipeError:
            continue  # e.g. NaN into an integer codec, or zstd not installed
    if not sizes:
        closest = min(base_error, key=base_error.__getitem__, default=None)
        hint = f"; the closest, {closest}, reaches {base_error[closest]:.3g}" if closest else ""
        raise SplitpipeError(f"no codec keeps the relative L2 error within --max-error {budget:g}{hint}")
    best = min(sizes, key=lambda n: (sizes[n], base_error[parse_name(n).quant_name]))
    return _measure(best, per_sample, repeats)


def check_max_error(codec: str, max_error: float | None) -> None:
    """``--max-error`` is a budget for ``--codec auto``; with a named codec it would be ignored."""
    if max_error is None:
        return
    if not max_error >= 0:
        raise SplitpipeError(f"--max-error must be a non-negative number, got {max_error}")
    if codec != AUTO:
        raise SplitpipeError(
            f"--max-error chooses a codec per split with --codec auto; with --codec {codec} each "
            "split's error is measured and reported instead (codec_error in the plan JSON)"
        )


def check_codec_name(codec: str) -> None:
    if codec == AUTO:
        return
    from splitpipe.kernels import get_codec

    get_codec(codec)  # raises SplitpipeError listing the accepted forms
