"""Bottleneck codecs: shrink the tensor at the split on the device, restore it on the server.

    from splitpipe.kernels import get_codec, decode, CodecMeta
    codec = get_codec("int8/ch+zstd")
    payload, meta = codec.encode(array)          # bytes, CodecMeta
    params = meta.to_params()                    # flat map for KServe v2 parameters
    array = decode(payload, CodecMeta.from_params(params), max_bytes=64 << 20)

For the planner: ``measure_codec`` (bytes, encode/decode ms, relative L2 error, cosine),
``pick_codec(samples, max_error)`` (smallest codec within an error budget) and ``qdq_params`` /
``verify_qdq`` (fold int8/sym into QuantizeLinear/DequantizeLinear of exported graphs).

``jpeg`` / ``jpeg:QUALITY`` codes NCHW images (1 or 3 channels) as one JPEG per image, for
inputs that are camera images (the "offload as JPEG" baseline); it needs Pillow.

Names, meta fields, safety limits and how to choose: docs/codecs.md. Every fast path (ONNX
Runtime kernels, vectorised numpy bit packing) has a slow reference beside it
(``get_codec(name, impl="reference")``) that the tests compare it with.
"""

from splitpipe.errors import CodecError
from splitpipe.kernels._spec import ACCEPTED_FORMS, CodecSpec, codec_names, parse_name
from splitpipe.kernels.calibration import Calibration, calibrate
from splitpipe.kernels.codec import CHANNEL_AXIS, DEFAULT_MAX_BYTES, Codec, decode, get_codec
from splitpipe.kernels.measure import (
    DEFAULT_CANDIDATES,
    CodecMeasurement,
    CodecPick,
    cosine_similarity,
    measure_codec,
    pick_codec,
    relative_l2,
)
from splitpipe.kernels.meta import META_VERSION, CodecMeta
from splitpipe.kernels.qdq import QdqCheck, QdqParams, qdq_models, qdq_params, verify_qdq

__all__ = [
    "ACCEPTED_FORMS",
    "CHANNEL_AXIS",
    "DEFAULT_CANDIDATES",
    "DEFAULT_MAX_BYTES",
    "META_VERSION",
    "Calibration",
    "Codec",
    "CodecError",
    "CodecMeasurement",
    "CodecMeta",
    "CodecPick",
    "CodecSpec",
    "QdqCheck",
    "QdqParams",
    "calibrate",
    "codec_names",
    "cosine_similarity",
    "decode",
    "get_codec",
    "measure_codec",
    "parse_name",
    "pick_codec",
    "qdq_models",
    "qdq_params",
    "relative_l2",
    "verify_qdq",
]
