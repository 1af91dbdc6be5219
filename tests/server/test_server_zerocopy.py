"""The request splitter agrees with protobuf's parser on every message shape, without copies."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from splitpipe.proto.inference import grpc_service_pb2 as pb
from splitpipe.server.zerocopy import split_request

LARGE = 64 << 10


def _parse(data: bytes) -> tuple[pb.ModelInferRequest, list[memoryview]]:
    """Put the split parts together again: the request as protobuf would read it, less its raw contents."""
    rest, request_id, raws = split_request(data)
    request = pb.ModelInferRequest.FromString(rest)
    assert not request.id and not request.raw_input_contents, "split off"
    request.id = request_id
    return request, raws


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


@pytest.mark.parametrize("sizes", [[10], [LARGE], [3 * LARGE, 0, 17], [200_000, 5_000_000]])
def test_matches_protobuf(sizes: list[int]) -> None:
    original = _request(sizes)
    data = original.SerializeToString()
    request, raws = _parse(data)
    assert [bytes(r) for r in raws] == list(original.raw_input_contents)
    assert all(isinstance(r, memoryview) and r.obj is data for r in raws), "views, not copies"
    stripped = pb.ModelInferRequest()
    stripped.CopyFrom(original)
    del stripped.raw_input_contents[:]
    assert request == stripped


def test_the_rest_is_the_same_for_frames_that_differ_in_id_and_bytes_only() -> None:
    first, second = _request([100]), _request([100])
    second.id = "frame-10"
    second.raw_input_contents[0] = b"\1" * 100
    assert split_request(first.SerializeToString())[0] == split_request(second.SerializeToString())[0]
    second.inputs[0].parameters["codec_scale"].double_param = 0.5
    assert split_request(first.SerializeToString())[0] != split_request(second.SerializeToString())[0]


def test_an_id_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(DecodeError, match="UTF-8"):
        split_request(b"\x0a\x01m\x1a\x02\xff\xfe")


def test_raw_contents_interleaved_with_other_fields() -> None:
    # Field order is not guaranteed on the wire; protobuf merges repeated fields wherever they are.
    first = _request([LARGE]).SerializeToString()
    extra = pb.ModelInferRequest(id="late")
    extra.raw_input_contents.append(b"tail")
    extra.inputs.add(name="in1", datatype="UINT8", shape=[4])
    data = first + extra.SerializeToString()
    request, raws = _parse(data)
    reference = pb.ModelInferRequest.FromString(data)
    assert [bytes(r) for r in raws] == list(reference.raw_input_contents)
    del reference.raw_input_contents[:]
    assert request == reference


@pytest.mark.parametrize("cut", [1, 5, 100, LARGE + 3])
def test_truncated_messages_are_refused(cut: int) -> None:
    data = _request([2 * LARGE]).SerializeToString()
    with pytest.raises(DecodeError):
        split_request(data[:-cut])


def test_claimed_length_beyond_the_message_is_refused() -> None:
    # field 7, length-delimited, claiming 2**40 bytes
    data = b"\x0a\x01m" + b"\x3a" + bytes([0x80, 0x80, 0x80, 0x80, 0x80, 0x20]) + b"\0" * LARGE
    with pytest.raises(DecodeError, match="past the end"):
        split_request(data)
