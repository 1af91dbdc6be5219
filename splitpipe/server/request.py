"""From a ModelInferRequest to checked tensors, and from tail outputs to a ModelInferResponse.

:func:`check` looks only at the request's small fields (names, datatypes, shapes, claimed
sizes, codec meta, requested outputs) and gives a :class:`Checked`, which the server keeps for
the next requests with the same small fields; :meth:`Checked.bind` checks one request's payload
byte counts. All of that runs on the event loop before any memory is allocated for a tensor.
:meth:`Prepared.decode` runs later, with the tail, and turns each payload into an array
(``np.frombuffer`` on the received bytes for plain tensors, the codec's decoder for compressed
ones).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union, cast

import grpc
import numpy as np

from splitpipe.errors import CodecError
from splitpipe.proto.datatypes import CONTENTS_FIELD, numpy_dtype
from splitpipe.proto.inference import grpc_service_pb2 as pb
from splitpipe.proto.params import parameters_dict
from splitpipe.server.models import MODEL_VERSION, TailModel

# Parameters of Triton's shared-memory extension, which this server does not offer.
_SHM_PARAMS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


#: a received byte string: bytes, or a memoryview into the received message
Buffer = Union[bytes, memoryview]  # noqa: UP007 (a runtime alias on Python 3.10)


#: longest error message sent (its middle is cut): names quoted from a request may be of any
#: length, and gRPC clients drop a status whose message exceeds their metadata limit (16 KiB)
MAX_MESSAGE_CHARS = 1000
#: and its most bytes as gRPC sends a status message: each UTF-8 byte outside printable ASCII
#: (and '%') percent-encoded as 3, so 1000 emoji took 12 KB, above the 8 KiB from which clients
#: may refuse metadata (RESOURCE_EXHAUSTED instead of the status sent, about half the time)
MAX_MESSAGE_BYTES = 4000


def _wire_bytes(char: str) -> int:
    return 1 if " " <= char <= "~" and char != "%" else 3 * len(char.encode("utf-8", "surrogatepass"))


def _fit(text: str, chars: int, nbytes: int) -> str:
    """The longest prefix of ``text`` of at most ``chars`` characters and ``nbytes`` wire bytes."""
    total = 0
    for i, char in enumerate(text[:chars]):
        total += _wire_bytes(char)
        if total > nbytes:
            return text[:i]
    return text[:chars]


class InferError(Exception):
    """A request the server refuses: a gRPC status code and a one-line message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        if len(message) > MAX_MESSAGE_CHARS or (
            not message.isascii() and sum(map(_wire_bytes, message)) > MAX_MESSAGE_BYTES
        ):
            # leaves room for the marker
            half, half_bytes = MAX_MESSAGE_CHARS // 2 - 20, MAX_MESSAGE_BYTES // 2 - 50
            head = _fit(message, half, half_bytes)
            tail = _fit(message[-half:][::-1], half, half_bytes)[::-1]
            message = f"{head} [... {len(message) - len(head) - len(tail)} characters cut ...] {tail}"
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> InferError:
    return InferError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _shape_text(shape: Any) -> str:
    return "[" + ",".join("-1" if d is None else str(d) for d in shape) + "]"


@dataclass(frozen=True, slots=True)
class _Input:
    """One checked input: what its bytes must be and decode to."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    nbytes: int  # of the decoded tensor
    meta: Any = None  # CodecMeta when the payload is compressed
    contents: str | None = None  # the typed InferTensorContents field, when no raw contents are sent


@dataclass(frozen=True, slots=True)
class Checked:
    """A request's small fields checked against its model: everything but the id and the tensor
    bytes. Requests whose small fields are byte for byte the same (every frame of one stream of
    one shape and codec setting) share one, so the checks run once per such signature; only
    the byte counts of each request's payloads are checked again (:meth:`bind`)."""

    model: TailModel
    inputs: tuple[_Input, ...]  # in the model's input order
    positions: tuple[int, ...]  # where each input is in the request (payloads come in request order)
    outputs: tuple[int, ...]
    rows: int
    key: tuple[tuple[int, ...], ...]  # non-batch dims of every input: requests batch if equal

    def bind(self, request_id: str, payloads: Sequence[Any], arrived: float) -> Prepared:
        """One request: its payloads (raw contents, or typed contents' values) in request order."""
        count = len(self.inputs)
        if len(payloads) != count:
            raise invalid(
                f"{len(payloads)} raw_input_contents for {count} inputs; send one per input, in input order"
            )
        ordered = [payloads[p] for p in self.positions]
        for item, payload in zip(self.inputs, ordered, strict=True):
            if item.meta is None:  # a plain tensor: its bytes or values must fill the shape exactly
                size = len(payload) if item.contents is None else len(payload) * item.dtype.itemsize
                if size != item.nbytes:
                    raise invalid(_size_message(self.model, item, len(payload)))
        return Prepared(self, request_id, ordered, arrived)


def _size_message(model: TailModel, item: _Input, count: int) -> str:
    datatype = model.input_datatypes[model.input_index[item.name]]
    if item.contents is None:
        return (
            f"input {item.name!r}: {count} bytes of raw contents, but {datatype}{_shape_text(item.shape)} "
            f"takes {item.nbytes} (no codec parameters, so the bytes must be the plain tensor)"
        )
    return (
        f"input {item.name!r}: {count} values in contents.{item.contents}, "
        f"shape {_shape_text(item.shape)} takes {item.nbytes // item.dtype.itemsize}"
    )


@dataclass(slots=True)
class Prepared:
    """A request that passed every check that needs no decoding."""

    checked: Checked
    request_id: str
    payloads: list[Any]  # in the model's input order
    arrived: float  # perf_counter when the handler got the request
    enqueued: float = 0.0
    decode_us: int = 0
    arrays: list[np.ndarray] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.checked.rows

    @property
    def key(self) -> tuple[tuple[int, ...], ...]:
        return self.checked.key

    def decode(self, max_bytes: int) -> None:
        """Fill :attr:`arrays`; raises InferError when a payload does not match its meta."""
        start = time.perf_counter()
        self.arrays = [
            _decode_one(item, payload, max_bytes)
            for item, payload in zip(self.checked.inputs, self.payloads, strict=True)
        ]
        self.decode_us = int((time.perf_counter() - start) * 1e6)


def _decode_one(item: _Input, payload: Any, max_bytes: int) -> np.ndarray:
    if item.meta is None:
        if item.contents is None:
            return np.frombuffer(payload, dtype=item.dtype).reshape(item.shape)
        try:
            return np.asarray(payload, dtype=item.dtype).reshape(item.shape)
        except (OverflowError, ValueError) as exc:
            raise invalid(f"input {item.name!r}: contents do not fit {item.dtype}: {exc}") from None
    from splitpipe.kernels import decode

    try:
        array = decode(payload, item.meta, max_bytes=max_bytes)
    except CodecError as exc:
        raise invalid(f"input {item.name!r}: payload does not decode as {item.meta.codec}: {exc}") from None
    if array.dtype != item.dtype or tuple(array.shape) != item.shape:
        # The codec's own checks should make this unreachable; never feed the tail a surprise.
        raise invalid(
            f"input {item.name!r}: payload decodes to {array.dtype}{_shape_text(array.shape)}, "
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


def check(request: pb.ModelInferRequest, model: TailModel, max_tensor_bytes: int, raw: bool) -> Checked:
    """Check the small fields of ``request`` against ``model``; raises InferError naming the
    first problem. ``raw``: the tensors travel in raw contents (else in typed contents)."""
    version = request.model_version
    if version and version != MODEL_VERSION:
        raise InferError(
            grpc.StatusCode.NOT_FOUND,
            f"model {model.name!r} has no version {version!r}; versions: {MODEL_VERSION}",
        )
    tensors = request.inputs
    names = [s.name for s in model.inputs]
    if not tensors:
        raise invalid(f"the request has no inputs; model {model.name!r} takes inputs {names}")
    inputs: list[_Input | None] = [None] * len(names)
    positions = [0] * len(names)
    for position, tensor in enumerate(tensors):
        index = model.input_index.get(tensor.name)
        if index is None:
            raise invalid(
                f"model {model.name!r} takes inputs {names}, the request has {[t.name for t in tensors]}"
            )
        if inputs[index] is not None:
            raise invalid(
                f"input {tensor.name!r} appears twice in the request; model {model.name!r} takes inputs {names}"
            )
        inputs[index] = _check_input(model, index, tensor, raw, max_tensor_bytes)
        positions[index] = position
    missing = [name for name, item in zip(names, inputs, strict=True) if item is None]
    if missing:
        raise invalid(f"the request lacks input(s) {missing}; model {model.name!r} takes inputs {names}")
    checked = cast("list[_Input]", inputs)

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
        twice = [name for name, n in Counter(o.name for o in request.outputs).items() if n > 1]
        if twice:
            raise invalid(f"output {twice[0]!r} is requested twice; ask for each output once")
    return Checked(model, tuple(checked), tuple(positions), tuple(outputs), rows, key)


def typed_contents(request: pb.ModelInferRequest, checked: Checked) -> list[Any]:
    """The values of a request's typed contents, in request order (for :meth:`Checked.bind`)."""
    fields = [""] * len(checked.inputs)
    for item, position in zip(checked.inputs, checked.positions, strict=True):
        assert item.contents is not None, "checked for typed contents"
        fields[position] = item.contents
    return [getattr(t.contents, f) for t, f in zip(request.inputs, fields, strict=True)]


def _check_input(model: TailModel, index: int, tensor: Any, raw: bool, max_tensor_bytes: int) -> _Input:
    spec = model.inputs[index]
    name = spec.name
    want_type = model.input_datatypes[index]
    if tensor.datatype != want_type:
        known = "" if numpy_dtype(tensor.datatype) is not None else " (not a datatype this server knows)"
        raise invalid(f"input {name!r} has datatype {tensor.datatype!r}{known}, the model takes {want_type}")
    shape = tuple(tensor.shape)
    if any(d < 1 for d in shape):
        raise invalid(
            f"input {name!r} has shape {_shape_text(shape)}: every dimension must be at least 1 "
            f"(the model takes {_shape_text(spec.shape)}, -1 marking a dimension of any size)"
        )
    if len(shape) != len(spec.shape) or not all(
        want is None or d == want for d, want in zip(shape, spec.shape, strict=True)
    ):
        raise invalid(
            f"input {name!r} has shape {_shape_text(shape)}, the model takes {_shape_text(spec.shape)}"
        )
    nbytes = math.prod(shape) * spec.dtype.itemsize  # Python ints: no overflow for absurd claims
    if nbytes > max_tensor_bytes:
        raise invalid(
            f"input {name!r} of shape {_shape_text(shape)} would take {nbytes} bytes, "
            f"more than this server's limit of {max_tensor_bytes}"
        )
    params = tensor.parameters
    meta = _codec_meta(name, params) if params else None
    if meta is not None:
        if not raw:
            raise invalid(f"input {name!r}: a compressed tensor must travel in raw_input_contents")
        if meta.dtype != spec.dtype.name or meta.shape != shape:
            raise invalid(
                f"input {name!r}: codec meta says {meta.dtype}{_shape_text(meta.shape)}, "
                f"the input declares {spec.dtype.name}{_shape_text(shape)}"
            )
        return _Input(name, spec.dtype, shape, nbytes, meta=meta)
    if raw:
        return _Input(name, spec.dtype, shape, nbytes)
    field_name = CONTENTS_FIELD.get(want_type)
    if field_name is None:
        raise invalid(f"input {name!r}: {want_type} tensors must travel in raw_input_contents")
    return _Input(name, spec.dtype, shape, nbytes, contents=field_name)


def build_response(
    item: Prepared,
    outputs: list[np.ndarray],
    start: int,
    stop: int,
    *,
    queue_us: int,
    tail_us: int,
    batch_size: int,
    instances: int = 1,
) -> pb.ModelStreamInferResponse:
    """The response for rows ``start:stop`` of a batch's outputs, wrapped for a stream; a unary
    call returns its ``infer_response`` (built once, in place: wrapping later would copy the
    output bytes)."""
    model = item.checked.model
    wrapper = pb.ModelStreamInferResponse()
    response = wrapper.infer_response
    response.model_name = model.name
    response.model_version = MODEL_VERSION
    response.id = item.request_id
    for index in item.checked.outputs:
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
    params["tail_instances"].int64_param = instances
    return wrapper


def set_total(response: pb.ModelInferResponse, arrived: float) -> int:
    total_us = int((time.perf_counter() - arrived) * 1e6)
    response.parameters["total_us"].int64_param = total_us
    return total_us


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
