"""Bottleneck codecs: shrink the tensor at the split on the device, restore it on the server.

    from splitpipe.kernels import get_codec, decode, CodecMeta
    codec = get_codec("int8/ch+zstd")
    payload, meta = codec.encode(array)          # bytes, CodecMeta
    params = meta.to_params()                    # flat map for KServe v2 parameters
    array = decode(payload, CodecMeta.from_params(params), max_bytes=64 << 20)

Names, meta fields, safety limits and how to choose: docs/codecs.md. Every fast path (ONNX
Runtime kernels, vectorised numpy bit packing) has a slow reference beside it
(``get_codec(name, impl="reference")``) that the tests compare it with.
"""

from splitpipe.errors import CodecError
from splitpipe.kernels._spec import ACCEPTED_FORMS, CodecSpec, codec_names, parse_name
from splitpipe.kernels.calibration import Calibration, calibrate
from splitpipe.kernels.codec import CHANNEL_AXIS, DEFAULT_MAX_BYTES, Codec, decode, get_codec
from splitpipe.kernels.meta import META_VERSION, CodecMeta

__all__ = [
    "ACCEPTED_FORMS",
    "CHANNEL_AXIS",
    "DEFAULT_MAX_BYTES",
    "META_VERSION",
    "Calibration",
    "Codec",
    "CodecError",
    "CodecMeta",
    "CodecSpec",
    "calibrate",
    "codec_names",
    "decode",
    "get_codec",
    "parse_name",
]
