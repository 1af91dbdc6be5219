"""The zero-copy request parser agrees with protobuf's on every message shape."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from splitpipe.proto.inference import grpc_service_pb2 as pb
from splitpipe.server.zerocopy import ZERO_COPY_FROM, parse_infer_request


def _request(sizes: list[int], with_params: bool = True) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", model_version="1", id="frame-9")
    rng = np.random.default_rng(0)
    for i, size in enumerate(sizes):
        tensor = request.inputs.add(name=f"in{i}", datatype="UINT8", shape=[size])
        if with_params:
            tensor.parameters["codec"].string_param = "int8"
            tensor.parameters["codec_scale"].double_param = 0.25
            tensor.parameters["codec_zero_point"].int64_param = 3
        request.raw_input_contents.append(rng.bytes(size))
    request.parameters["priority"].uint64_param = 2**63
    request.outputs.add(name="y")
    return request


@pytest.mark.parametrize("sizes", [[10], [ZERO_COPY_FROM], [3 * ZERO_COPY_FROM, 0, 17], [200_000, 5_000_000]])
def test_matches_protobuf(sizes: list[int]) -> None:
    original = _request(sizes)
    data = original.SerializeToString()
    request, raws = parse_infer_request(data)
    assert [bytes(r) for r in raws] == list(original.raw_input_contents)
    stripped = pb.ModelInferRequest()
    stripped.CopyFrom(original)
    if len(data) >= ZERO_COPY_FROM:
        del stripped.raw_input_contents[:]
        assert all(isinstance(r, memoryview) and r.obj is data for r in raws), "views, not copies"
    assert request == stripped


def test_raw_contents_interleaved_with_other_fields() -> None:
    # Field order is not guaranteed on the wire; protobuf merges repeated fields wherever they are.
    first = _request([ZERO_COPY_FROM]).SerializeToString()
    extra = pb.ModelInferRequest(id="late")
    extra.raw_input_contents.append(b"tail")
    extra.inputs.add(name="in1", datatype="UINT8", shape=[4])
    data = first + extra.SerializeToString()
    request, raws = parse_infer_request(data)
    reference = pb.ModelInferRequest.FromString(data)
    assert [bytes(r) for r in raws] == list(reference.raw_input_contents)
    del reference.raw_input_contents[:]
    assert request == reference


@pytest.mark.parametrize("cut", [1, 5, 100, ZERO_COPY_FROM + 3])
def test_truncated_messages_are_refused(cut: int) -> None:
    data = _request([2 * ZERO_COPY_FROM]).SerializeToString()
    with pytest.raises(DecodeError):
        parse_infer_request(data[:-cut])


def test_claimed_length_beyond_the_message_is_refused() -> None:
    # field 7, length-delimited, claiming 2**40 bytes, padded to take the zero-copy path
    data = b"\x0a\x01m" + b"\x3a" + bytes([0x80, 0x80, 0x80, 0x80, 0x80, 0x20]) + b"\0" * ZERO_COPY_FROM
    with pytest.raises(DecodeError, match="past the end"):
        parse_infer_request(data)
