"""From cut tensors to a serialized ModelInferRequest, and from a stream response to outputs.

The request's small part (model name, input names, datatypes, shapes, codec parameters) is
built with protobuf once per shape and codec setting and kept; each frame appends its id
(field 3) and its payloads as ``raw_input_contents`` entries (field 7) by hand, so each payload
is copied exactly once, into the message. Protobuf readers accept fields in any order and the
server splits fields 3 and 7 off without copying (docs/server.md).
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
from splitpipe.proto import datatypes
from splitpipe.proto.inference import grpc_service_pb2 as pb
from splitpipe.proto.params import STAGE_PARAMS, set_parameters

_FIELDS = pb.ModelInferRequest.DESCRIPTOR.fields_by_name
_RAW_INPUT_TAG = bytes([(_FIELDS["raw_input_contents"].number << 3) | 2])
_ID_TAG = bytes([(_FIELDS["id"].number << 3) | 2])
# small parts kept per shape and codec setting; codecs with scales computed per frame make a
# new one for most frames, so only the latest few are kept
_MAX_HEADS = 16
# output checks passed (name, datatype, shape, bytes), kept so each is checked once
_MAX_CHECKED_OUTPUTS = 1024


def kserve_datatype(dtype: np.dtype[Any]) -> str:
    try:
        return datatypes.kserve_datatype(dtype)
    except KeyError:
        raise SplitpipeError(f"dtype {dtype} cannot travel in the Open Inference Protocol") from None


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@dataclass(slots=True)
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
        self._heads: dict[tuple[Any, ...], bytes] = {}

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
        payloads: list[Any] = []
        key: list[Any] = []  # what the small part depends on: shapes and codec parameters
        for spec in self.cut:
            array = outputs[spec.name]
            codec = self.codecs[spec.name]
            if codec is None:
                # plain: the tensor's own bytes, little-endian, viewed (not copied) until the join
                array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
                payloads.append(memoryview(array).cast("B") if array.size else b"")  # type: ignore[arg-type]
                key.append(array.shape)
                continue
            payload, meta = codec.encode(array)
            payloads.append(payload)
            key.append((array.shape, tuple(meta.to_params().items())))
        head = self._heads.get(tuple(key))
        if head is None:
            head = self._head(key)
        ident = frame_id.encode()
        parts: list[Any] = [head, _ID_TAG, _varint(len(ident)), ident]
        size = 0
        for payload in payloads:
            n = len(payload) if isinstance(payload, bytes) else payload.nbytes
            size += n
            parts += [_RAW_INPUT_TAG, _varint(n), payload]
        data = b"".join(parts)
        return Encoded(data, size, (time.perf_counter() - start) * 1e3)

    def _head(self, key: list[Any]) -> bytes:
        """The request without id and payloads, for one shape and codec setting."""
        request = pb.ModelInferRequest(model_name=self.model_name)
        for spec, datatype, entry in zip(self.cut, self.datatypes, key, strict=True):
            plain = self.codecs[spec.name] is None
            tensor = request.inputs.add(name=spec.name, datatype=datatype, shape=entry if plain else entry[0])
            if not plain:
                set_parameters(tensor.parameters, dict(entry[1]))
        head = request.SerializeToString()
        if len(self._heads) >= _MAX_HEADS:
            del self._heads[next(iter(self._heads))]
        self._heads[tuple(key)] = head
        return head


@dataclass(slots=True)
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
        self._checked: set[tuple[str, str, tuple[int, ...], int]] = set()

    def parse(self, message: pb.ModelStreamInferResponse) -> Reply:
        response = message.infer_response
        params = response.parameters
        # the server's stage durations, by name (cheaper than walking the map)
        server = {key: params[key].int64_param for key in STAGE_PARAMS if key in params}
        if message.error_message:
            code = params["error_code"].string_param if "error_code" in params else ""
            return Reply(
                response.id,
                server=server,
                error=f"{code}: {message.error_message}" if code else message.error_message,
            )
        reply = Reply(response.id, server=server)
        raws = response.raw_output_contents
        tensors = response.outputs
        if len(raws) != len(tensors):
            reply.error = f"the reply has {len(raws)} raw outputs for {len(tensors)} output tensors"
            return reply
        for tensor, raw in zip(tensors, raws, strict=True):
            name, datatype, shape = tensor.name, tensor.datatype, tuple(tensor.shape)
            signature = (name, datatype, shape, len(raw))
            if signature not in self._checked:
                problem = self._check(*signature)
                if problem:
                    reply.error = problem
                    return reply
                if len(self._checked) < _MAX_CHECKED_OUTPUTS:
                    self._checked.add(signature)
            reply.outputs[name] = np.frombuffer(raw, datatypes.numpy_dtype(datatype)).reshape(shape)
        if len(tensors) != len(self.specs) or len(reply.outputs) != len(tensors):
            # each output checked is one the manifest lists: this is a missing or repeated one
            missing = sorted(set(self.specs) - set(reply.outputs))
            reply.error = (
                f"the reply lacks output(s) {missing}" if missing else "the reply repeats an output"
            ) + f": {len(tensors)} output tensors, the manifest lists {sorted(self.specs)} once each"
        return reply

    def _check(self, name: str, datatype: str, shape: tuple[int, ...], nbytes: int) -> str | None:
        spec = self.specs.get(name)
        if spec is None:
            return f"the reply has an output {name!r} the manifest does not list ({sorted(self.specs)})"
        dtype = datatypes.numpy_dtype(datatype)
        if dtype != spec.dtype:
            return f"output {name!r} has datatype {datatype}, the manifest says {spec.dtype}"
        if len(shape) != len(spec.shape) or any(
            d < 0 or (w is not None and d != w) for d, w in zip(shape, spec.shape, strict=True)
        ):
            return f"output {name!r} has shape {list(shape)}, the manifest says {list(spec.shape)}"
        if nbytes != math.prod(shape) * dtype.itemsize:
            return f"output {name!r}: {nbytes} bytes for {datatype}{list(shape)}"
        return None
