"""From cut tensors to a serialized ModelInferRequest, and from a stream response to outputs.

The request's small part (model name, id, input names, datatypes, shapes, codec parameters) is
built with protobuf; the payloads are appended as ``raw_input_contents`` entries (field 7) by
hand, so each payload is copied exactly once, into the message. Protobuf readers accept fields
in any order and the server splits field 7 off without copying (docs/server.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from splitpipe.devices.runtimes import TensorSpec
from splitpipe.edge.manifest import EdgeExport
from splitpipe.errors import SplitpipeError
from splitpipe.proto.inference import grpc_service_pb2 as pb

# KServe v2 datatype <-> numpy dtype (the server's table, repeated so the device needs no server code)
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_KSERVE = {dtype: name for name, dtype in DATATYPES.items()}
_RAW_INPUT_TAG = bytes(
    [(pb.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number << 3) | 2]
)


def kserve_datatype(dtype: np.dtype[Any]) -> str:
    try:
        return _KSERVE[np.dtype(dtype)]
    except KeyError:
        raise SplitpipeError(f"dtype {dtype} cannot travel in the Open Inference Protocol") from None


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _set_param(param: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = str(value)


@dataclass(frozen=True)
class Encoded:
    """One frame ready to send."""

    data: bytes  # the serialized ModelInferRequest
    payload_bytes: int  # sum of the raw_input_contents entries
    encode_ms: float


class RequestBuilder:
    """Encodes the head's outputs with the export's codecs into ModelInferRequest bytes."""

    def __init__(self, export: EdgeExport) -> None:
        self.model_name = export.name
        self.cut = export.cut
        self.codecs = export.codecs()
        self.datatypes = [kserve_datatype(t.dtype) for t in export.cut]

    def check(self, outputs: Mapping[str, np.ndarray]) -> None:
        """The head's outputs must be the manifest's cut tensors (names, dtypes, fixed dims)."""
        for spec in self.cut:
            if spec.name not in outputs:
                raise SplitpipeError(f"the head has no output {spec.name!r}; it gives {sorted(outputs)}")
            problem = spec.accepts(outputs[spec.name])
            if problem:
                raise SplitpipeError(f"head output does not match the manifest's cut: {problem}")

    def build(self, frame_id: str, outputs: Mapping[str, np.ndarray]) -> Encoded:
        start = time.perf_counter()
        request = pb.ModelInferRequest(model_name=self.model_name, id=frame_id)
        payloads: list[Any] = []
        for spec, datatype in zip(self.cut, self.datatypes, strict=True):
            array = outputs[spec.name]
            tensor = request.inputs.add(name=spec.name, datatype=datatype, shape=array.shape)
            codec = self.codecs[spec.name]
            if codec is None:
                # plain: the tensor's own bytes, little-endian, viewed (not copied) until the join
                array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
                payloads.append(memoryview(array).cast("B") if array.size else b"")  # type: ignore[arg-type]
                continue
            payload, meta = codec.encode(array)
            params = tensor.parameters
            for key, value in meta.to_params().items():
                _set_param(params[key], value)
            payloads.append(payload)
        parts: list[Any] = [request.SerializeToString()]
        size = 0
        for payload in payloads:
            n = len(payload) if isinstance(payload, bytes) else payload.nbytes
            size += n
            parts += [_RAW_INPUT_TAG, _varint(n), payload]
        data = b"".join(parts)
        return Encoded(data, size, (time.perf_counter() - start) * 1e3)


@dataclass
class Reply:
    """One parsed stream response."""

    id: str
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    server: dict[str, int] = field(default_factory=dict)
    error: str | None = None


class ReplyReader:
    """Reads a ModelStreamInferResponse and checks its outputs against the manifest."""

    def __init__(self, outputs: tuple[TensorSpec, ...]) -> None:
        self.specs = {s.name: s for s in outputs}

    def parse(self, message: pb.ModelStreamInferResponse) -> Reply:
        response = message.infer_response
        server = {
            key: value.int64_param
            for key, value in response.parameters.items()
            if value.WhichOneof("parameter_choice") == "int64_param"
        }
        if message.error_message:
            code = (
                response.parameters["error_code"].string_param if "error_code" in response.parameters else ""
            )
            return Reply(
                response.id,
                server=server,
                error=f"{code}: {message.error_message}" if code else message.error_message,
            )
        reply = Reply(response.id, server=server)
        raws = response.raw_output_contents
        if len(raws) != len(response.outputs):
            reply.error = f"the reply has {len(raws)} raw outputs for {len(response.outputs)} output tensors"
            return reply
        for tensor, raw in zip(response.outputs, raws, strict=True):
            problem = self._check(tensor, len(raw))
            if problem:
                reply.error = problem
                return reply
            reply.outputs[tensor.name] = np.frombuffer(raw, DATATYPES[tensor.datatype]).reshape(
                tuple(tensor.shape)
            )
        return reply

    def _check(self, tensor: Any, nbytes: int) -> str | None:
        spec = self.specs.get(tensor.name)
        if spec is None:
            return (
                f"the reply has an output {tensor.name!r} the manifest does not list ({sorted(self.specs)})"
            )
        dtype = DATATYPES.get(tensor.datatype)
        if dtype != spec.dtype:
            return f"output {tensor.name!r} has datatype {tensor.datatype}, the manifest says {spec.dtype}"
        shape = tuple(tensor.shape)
        if len(shape) != len(spec.shape) or any(
            d < 0 or (w is not None and d != w) for d, w in zip(shape, spec.shape, strict=True)
        ):
            return f"output {tensor.name!r} has shape {list(shape)}, the manifest says {list(spec.shape)}"
        if nbytes != math.prod(shape) * dtype.itemsize:
            return f"output {tensor.name!r}: {nbytes} bytes for {tensor.datatype}{list(shape)}"
        return None
