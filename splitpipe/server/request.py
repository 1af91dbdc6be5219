"""From a ModelInferRequest to checked tensors, and from tail outputs to a ModelInferResponse.

:func:`prepare` runs on the event loop and looks only at the request's small fields and the
payload lengths: names, datatypes, shapes, byte counts and codec meta are checked before any
memory is allocated for a tensor. :meth:`Prepared.decode` runs later, in the tail's thread, and
turns each payload into an array (``np.frombuffer`` on the received bytes for plain tensors,
the codec's decoder for compressed ones).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union, cast

import grpc
import numpy as np

from splitpipe.errors import CodecError
from splitpipe.proto.inference import grpc_service_pb2 as pb
from splitpipe.proto.params import parameters_dict
from splitpipe.server.datatypes import CONTENTS_FIELD, numpy_dtype
from splitpipe.server.models import MODEL_VERSION, TailModel

#: response parameters the server sets (integers; durations in microseconds)
STAGE_PARAMS = ("queue_us", "decode_us", "tail_us", "batch_size", "total_us")

# Parameters of Triton's shared-memory extension, which this server does not offer.
_SHM_PARAMS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


#: a received byte string: bytes, or a memoryview into the received message
Buffer = Union[bytes, memoryview]  # noqa: UP007 (a runtime alias on Python 3.10)


class InferError(Exception):
    """A request the server refuses: a gRPC status code and a one-line message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> InferError:
    return InferError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _shape_text(shape: Any) -> str:
    return "[" + ",".join("-1" if d is None else str(d) for d in shape) + "]"


@dataclass(slots=True)
class _Input:
    """One checked input: where its bytes are and what they must decode to."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    payload: Buffer | None  # raw_input_contents entry (plain tensor or codec payload)
    meta: Any = None  # CodecMeta when the payload is compressed
    contents: Any = None  # typed InferTensorContents field when no raw contents were sent


@dataclass(slots=True)
class Prepared:
    """A request that passed every check that needs no decoding."""

    model: TailModel
    request_id: str
    inputs: list[_Input]
    outputs: list[int]
    rows: int
    key: tuple[tuple[int, ...], ...]  # non-batch dims of every input: requests batch if equal
    arrived: float  # perf_counter when the handler got the request
    enqueued: float = 0.0
    decode_us: int = 0
    arrays: list[np.ndarray] = field(default_factory=list)

    def decode(self, max_bytes: int) -> None:
        """Fill :attr:`arrays`; raises InferError when a payload does not match its meta."""
        start = time.perf_counter()
        self.arrays = [_decode_one(self.model, i, item, max_bytes) for i, item in enumerate(self.inputs)]
        self.decode_us = int((time.perf_counter() - start) * 1e6)


def _decode_one(model: TailModel, index: int, item: _Input, max_bytes: int) -> np.ndarray:
    name = model.inputs[index].name
    if item.meta is None:
        if item.payload is not None:
            return np.frombuffer(item.payload, dtype=item.dtype).reshape(item.shape)
        try:
            return np.asarray(item.contents, dtype=item.dtype).reshape(item.shape)
        except (OverflowError, ValueError) as exc:
            raise invalid(f"input {name!r}: contents do not fit {item.dtype}: {exc}") from None
    from splitpipe.kernels import decode

    assert item.payload is not None
    try:
        array = decode(item.payload, item.meta, max_bytes=max_bytes)
    except CodecError as exc:
        raise invalid(f"input {name!r}: payload does not decode as {item.meta.codec}: {exc}") from None
    if array.dtype != item.dtype or tuple(array.shape) != item.shape:
        # The codec's own checks should make this unreachable; never feed the tail a surprise.
        raise invalid(
            f"input {name!r}: payload decodes to {array.dtype}{_shape_text(array.shape)}, "
            f"declared {item.dtype}{_shape_text(item.shape)}"
        )
    return array


def _codec_meta(name: str, params: Any) -> Any:
    """CodecMeta from an input's parameters, or None when no ``codec*`` key is present."""
    plain = parameters_dict(params)
    shm = [k for k in _SHM_PARAMS if k in plain]
    if shm:
        raise invalid(f"input {name!r}: shared memory ({shm[0]}) is not supported; send raw_input_contents")
    if not any(key.startswith("codec") for key in plain):
        return None
    try:
        from splitpipe.kernels import CodecMeta
    except ImportError as exc:  # the codecs are an optional part of the server extra
        raise InferError(
            grpc.StatusCode.UNIMPLEMENTED, f"input {name!r}: this server cannot decode codecs ({exc})"
        ) from None
    try:
        return CodecMeta.from_params(plain)
    except CodecError as exc:
        raise invalid(f"input {name!r}: bad codec parameters: {exc}") from None


def prepare(
    request: pb.ModelInferRequest,
    model: TailModel,
    max_tensor_bytes: int,
    arrived: float,
    payloads: Sequence[Buffer] | None = None,
) -> Prepared:
    """Check ``request`` against ``model``; raises InferError naming the first problem.

    ``payloads`` are the raw contents when they were split off the message without copying
    (see :mod:`splitpipe.server.zerocopy`); None reads ``request.raw_input_contents``.
    """
    version = request.model_version
    if version and version != MODEL_VERSION:
        raise InferError(
            grpc.StatusCode.NOT_FOUND,
            f"model {model.name!r} has no version {version!r}; versions: {MODEL_VERSION}",
        )
    tensors = request.inputs
    count = len(tensors)
    raw: Sequence[Buffer] = request.raw_input_contents if payloads is None else payloads
    if raw and len(raw) != count:
        raise invalid(f"{len(raw)} raw_input_contents for {count} inputs; send one per input, in input order")
    inputs: list[_Input | None] = [None] * len(model.inputs)
    for position, tensor in enumerate(tensors):
        index = model.input_index.get(tensor.name)
        if index is None or inputs[index] is not None or count != len(inputs):
            raise invalid(
                f"model {model.name!r} takes inputs {[s.name for s in model.inputs]}, "
                f"the request has {[t.name for t in tensors]}"
            )
        inputs[index] = _check_input(model, index, tensor, raw[position] if raw else None, max_tensor_bytes)
    checked = cast("list[_Input]", inputs)
    if not checked:
        raise invalid(
            f"model {model.name!r} takes inputs {[s.name for s in model.inputs]}, the request has none"
        )

    if model.batchable:
        rows = checked[0].shape[0]
        if any(i.shape[0] != rows for i in checked):
            sizes = sorted({i.shape[0] for i in checked})
            raise invalid(f"inputs disagree on the batch size (first dimension): {sizes}")
        key = tuple(i.shape[1:] for i in checked)
    else:
        rows = 1
        key = tuple(i.shape for i in checked)

    outputs = model.all_outputs
    if request.outputs:
        try:
            outputs = [model.output_index[o.name] for o in request.outputs]
        except KeyError as exc:
            raise invalid(
                f"model {model.name!r} has no output {exc.args[0]!r}; outputs: {[s.name for s in model.outputs]}"
            ) from None
    return Prepared(model, request.id, checked, outputs, rows, key, arrived)


def _check_input(
    model: TailModel, index: int, tensor: Any, payload: Buffer | None, max_tensor_bytes: int
) -> _Input:
    spec = model.inputs[index]
    name = spec.name
    want_type = model.input_datatypes[index]
    if tensor.datatype != want_type:
        known = "" if numpy_dtype(tensor.datatype) is not None else " (not a datatype this server knows)"
        raise invalid(f"input {name!r} has datatype {tensor.datatype!r}{known}, the model takes {want_type}")
    shape = tuple(tensor.shape)
    if len(shape) != len(spec.shape) or not all(
        d >= 1 and (want is None or d == want) for d, want in zip(shape, spec.shape, strict=True)
    ):
        raise invalid(
            f"input {name!r} has shape {_shape_text(shape)}, the model takes {_shape_text(spec.shape)}"
        )
    itemsize = spec.dtype.itemsize
    nbytes = math.prod(shape) * itemsize  # Python ints: no overflow for absurd claims
    if nbytes > max_tensor_bytes:
        raise invalid(
            f"input {name!r} of shape {_shape_text(shape)} would take {nbytes} bytes, "
            f"more than this server's limit of {max_tensor_bytes}"
        )
    params = tensor.parameters
    meta = _codec_meta(name, params) if params else None
    if meta is not None:
        if payload is None:
            raise invalid(f"input {name!r}: a compressed tensor must travel in raw_input_contents")
        if meta.dtype != spec.dtype.name or meta.shape != shape:
            raise invalid(
                f"input {name!r}: codec meta says {meta.dtype}{_shape_text(meta.shape)}, "
                f"the input declares {spec.dtype.name}{_shape_text(shape)}"
            )
        return _Input(spec.dtype, shape, payload, meta=meta)
    if payload is not None:
        if len(payload) != nbytes:
            raise invalid(
                f"input {name!r}: {len(payload)} bytes of raw contents, but {want_type}{_shape_text(shape)} "
                f"takes {nbytes} (no codec parameters, so the bytes must be the plain tensor)"
            )
        return _Input(spec.dtype, shape, payload)
    field_name = CONTENTS_FIELD.get(want_type)
    if field_name is None:
        raise invalid(f"input {name!r}: {want_type} tensors must travel in raw_input_contents")
    values = getattr(tensor.contents, field_name)
    if len(values) != nbytes // itemsize:
        raise invalid(
            f"input {name!r}: {len(values)} values in contents.{field_name}, "
            f"shape {_shape_text(shape)} takes {nbytes // itemsize}"
        )
    return _Input(spec.dtype, shape, None, contents=values)


def build_response(
    item: Prepared,
    outputs: list[np.ndarray],
    start: int,
    stop: int,
    *,
    queue_us: int,
    tail_us: int,
    batch_size: int,
) -> pb.ModelStreamInferResponse:
    """The response for rows ``start:stop`` of a batch's outputs, wrapped for a stream; a unary
    call returns its ``infer_response`` (built once, in place: wrapping later would copy the
    output bytes)."""
    model = item.model
    wrapper = pb.ModelStreamInferResponse()
    response = wrapper.infer_response
    response.model_name = model.name
    response.model_version = MODEL_VERSION
    response.id = item.request_id
    for index in item.outputs:
        array = outputs[index]
        if model.batchable:
            array = array[start:stop]
        tensor = response.outputs.add()
        tensor.name = model.outputs[index].name
        tensor.datatype = model.output_datatypes[index]
        tensor.shape.extend(array.shape)
        response.raw_output_contents.append(array.tobytes())
    params = response.parameters
    params["queue_us"].int64_param = queue_us
    params["decode_us"].int64_param = item.decode_us
    params["tail_us"].int64_param = tail_us
    params["batch_size"].int64_param = batch_size
    return wrapper


def set_total(response: pb.ModelInferResponse, arrived: float) -> None:
    response.parameters["total_us"].int64_param = int((time.perf_counter() - arrived) * 1e6)


def error_response(
    message: str, code: grpc.StatusCode, model_name: str, request_id: str
) -> pb.ModelStreamInferResponse:
    """A stream response for a failed request: error_message plus the id, so clients can match it."""
    response = pb.ModelStreamInferResponse(error_message=message)
    inner = response.infer_response
    inner.model_name = model_name
    inner.id = request_id
    inner.parameters["error_code"].string_param = code.name
    return response
