"""Our own stubs against the server: codec-compressed payloads, typed contents, and bad input."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from splitpipe.kernels import CodecMeta, decode
from splitpipe.proto.inference import grpc_service_pb2 as pb
from splitpipe.proto.params import parameters_dict, set_parameters
from splitpipe.server import ServerThread
from tests.server import tiny_tails, wire

X_SHAPE = (1, 4, 3, 3)


@pytest.fixture
def stub(server: ServerThread) -> Iterator[Any]:
    with wire.channel(server.port) as chan:
        yield wire.stub(chan)


def _x(seed: int = 0, shape: tuple[int, ...] = X_SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("codec", ["raw", "fp16+lz4", "int8", "int8/ch+zstd", "uint4/ch", "uint2+zstd"])
def test_compressed_payload_gives_the_tail_of_the_decoded_tensor(
    stub: Any, exports: dict[str, Path], codec: str
) -> None:
    x = _x(3, (2, 4, 3, 3))
    request = wire.make_request("relu-mean", {"x": x}, codec=codec, request_id=f"c-{codec}")
    response = stub.ModelInfer(request, timeout=30)
    # the reference decodes the same payload locally and runs the tail directly
    params = parameters_dict(request.inputs[0].parameters)
    decoded = decode(request.raw_input_contents[0], CodecMeta.from_params(params))
    want = tiny_tails.run_tail(exports["relu-mean"], {"x": decoded})
    got = wire.outputs(response)
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got["peak"], want["peak"], rtol=1e-6, atol=1e-7)
    assert response.id == f"c-{codec}"
    stages = wire.stage_params(response)
    assert stages["batch_size"] == 2 and stages["decode_us"] >= 0


def test_compressed_two_inputs_with_different_dtypes(stub: Any, exports: dict[str, Path]) -> None:
    a = _x(4, (3, 4))
    b = np.arange(6, dtype=np.float16).reshape(3, 2)
    response = stub.ModelInfer(
        wire.make_request("two-inputs", {"a": a, "b": b}, codec="raw+zstd"), timeout=30
    )
    want = tiny_tails.run_tail(exports["two-inputs"], {"a": a, "b": b})["y"]
    np.testing.assert_array_equal(wire.outputs(response)["y"], want)


def test_typed_contents_instead_of_raw(stub: Any, exports: dict[str, Path]) -> None:
    x = _x(5, (1, 16))
    request = pb.ModelInferRequest(model_name="gemm")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    response = stub.ModelInfer(request, timeout=30)
    np.testing.assert_array_equal(
        wire.outputs(response)["y"], tiny_tails.run_tail(exports["gemm"], {"x": x})["y"]
    )


# -- bad input ------------------------------------------------------------------------------------


def _plain(
    model: str = "relu-mean", shape: Any = X_SHAPE, datatype: str = "FP32", raw: bytes | None = None
) -> Any:
    request = pb.ModelInferRequest(model_name=model, id="bad")
    request.inputs.add(name="x", datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw if raw is not None else b"\0" * (4 * int(np.prod(shape))))
    return request


def _with_codec(codec: str, edit: Callable[[dict[str, Any], bytes], tuple[dict[str, Any], bytes]]) -> Any:
    request = wire.make_request("relu-mean", {"x": _x()}, codec=codec, request_id="bad")
    params, payload = edit(parameters_dict(request.inputs[0].parameters), request.raw_input_contents[0])
    del request.raw_input_contents[:]
    request.raw_input_contents.append(payload)
    request.inputs[0].ClearField("parameters")
    set_parameters(request.inputs[0].parameters, params)
    return request


def _two_inputs(a_shape: tuple[int, ...], b_shape: tuple[int, ...], raws: int = 2) -> Any:
    a, b = np.zeros(a_shape, np.float32), np.zeros(b_shape, np.float16)
    request = wire.make_request("two-inputs", {"a": a, "b": b})
    del request.raw_input_contents[raws:]
    return request


def _edited(request: Any, edit: Callable[[Any], Any]) -> Any:
    edit(request)
    return request


INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND

BAD_REQUESTS: dict[str, tuple[Callable[[], Any], grpc.StatusCode, list[str]]] = {
    "wrong shape": (lambda: _plain(shape=(1, 4, 3, 4)), INVALID, ["shape [1,4,3,4]", "[-1,4,3,3]"]),
    "wrong rank": (lambda: _plain(shape=(4, 3, 3)), INVALID, ["shape [4,3,3]"]),
    "negative dimension": (
        lambda: _plain(shape=(-1, 4, 3, 3), raw=b""),
        INVALID,
        ["shape [-1,4,3,3]: every dimension must be at least 1", "-1 marking a dimension of any size"],
    ),
    "zero dimension": (
        lambda: _plain(shape=(1, 4, 0, 3), raw=b""),
        INVALID,
        ["shape [1,4,0,3]: every dimension must be at least 1"],
    ),
    "wrong dtype": (lambda: _plain(datatype="FP64", raw=b"\0" * 288), INVALID, ["'FP64'", "takes FP32"]),
    "unknown datatype": (lambda: _plain(datatype="FLOAT"), INVALID, ["'FLOAT'", "not a datatype"]),
    "raw bytes do not match shape": (lambda: _plain(raw=b"\0" * 100), INVALID, ["100 bytes", "takes 144"]),
    "unknown model": (lambda: _plain(model="resnet-s99"), NOT_FOUND, ["unknown model 'resnet-s99'", "gemm"]),
    "unknown version": (
        lambda: pb.ModelInferRequest(model_name="gemm", model_version="7"),
        NOT_FOUND,
        ["no version '7'"],
    ),
    "oversized claimed shape": (
        lambda: _plain(shape=(2**40, 4, 3, 3), raw=b"\0" * 144),
        INVALID,
        ["would take 158329674399744 bytes", "limit"],
    ),
    "wrong input name": (
        lambda: wire.make_request("gemm", {"z": np.zeros((1, 16), np.float32)}),
        INVALID,
        ["takes inputs ['x']", "['z']"],
    ),
    "no inputs": (
        lambda: pb.ModelInferRequest(model_name="two-inputs"),
        INVALID,
        ["the request has no inputs; model 'two-inputs' takes inputs ['a', 'b']"],
    ),
    "no inputs, fixed batch": (
        lambda: pb.ModelInferRequest(model_name="gemm"),
        INVALID,
        ["the request has no inputs; model 'gemm' takes inputs ['x']"],
    ),
    "raw contents but no inputs": (
        lambda: pb.ModelInferRequest(model_name="relu-mean", raw_input_contents=[b"\0" * 144]),
        INVALID,
        ["the request has no inputs"],
    ),
    "an input missing": (
        lambda: _edited(_two_inputs((1, 4), (1, 2)), lambda r: r.inputs.pop()),
        INVALID,
        ["the request lacks input(s) ['b']; model 'two-inputs' takes inputs ['a', 'b']"],
    ),
    "an input name twice": (
        lambda: _edited(_two_inputs((1, 4), (1, 2)), lambda r: setattr(r.inputs[1], "name", "a")),
        INVALID,
        ["input 'a' appears twice in the request"],
    ),
    "an input declared twice": (
        lambda: _edited(_plain(), lambda r: r.inputs.add().CopyFrom(r.inputs[0])),
        INVALID,
        ["input 'x' appears twice in the request; model 'relu-mean' takes inputs ['x']"],
    ),
    "more raw contents than inputs": (
        lambda: _edited(_plain(), lambda r: r.raw_input_contents.append(b"\0" * 144)),
        INVALID,
        ["2 raw_input_contents for 1 inputs"],
    ),
    "no raw contents for an FP16 input": (
        lambda: _two_inputs((1, 4), (1, 2), raws=0),
        INVALID,
        ["input 'b': FP16 tensors must travel in raw_input_contents"],
    ),
    "neither raw nor typed contents": (
        lambda: _edited(_plain(model="gemm", shape=(1, 16)), lambda r: r.ClearField("raw_input_contents")),
        INVALID,
        ["0 values in contents.fp32_contents, shape [1,16] takes 16"],
    ),
    "an output requested twice": (
        lambda: _edited(_plain(), lambda r: r.outputs.add(name="mean") and r.outputs.add(name="mean")),
        INVALID,
        ["output 'mean' is requested twice"],
    ),
    "a huge name": (
        lambda: _plain(model="m" * 200_000),
        NOT_FOUND,
        ["unknown model 'mmm", "characters cut", "served models: gemm, relu-mean, two-inputs"],
    ),
    "a huge name of emoji": (
        lambda: _plain(model="\U0001f600" * 2000),
        NOT_FOUND,
        ["unknown model '\U0001f600", "characters cut", "served models: gemm, relu-mean, two-inputs"],
    ),
    "raw count differs from inputs": (
        lambda: _two_inputs((1, 4), (1, 2), raws=1),
        INVALID,
        ["1 raw_input_contents for 2"],
    ),
    "inputs disagree on batch": (
        lambda: _two_inputs((2, 4), (3, 2)),
        INVALID,
        ["disagree on the batch size"],
    ),
    "unknown requested output": (
        lambda: pb.ModelInferRequest(
            model_name="gemm",
            inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 16])],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="logits")],
            raw_input_contents=[b"\0" * 64],
        ),
        INVALID,
        ["no output 'logits'", "['y']"],
    ),
    "unknown codec": (
        lambda: _with_codec("int8", lambda p, b: ({**p, "codec": "int7"}, b)),
        INVALID,
        ["bad codec parameters", "int7"],
    ),
    "unknown codec parameter": (
        lambda: _with_codec("int8", lambda p, b: ({**p, "codec_gain": 2.0}, b)),
        INVALID,
        ["codec_gain"],
    ),
    "payload does not match its meta": (
        lambda: _with_codec("int8", lambda p, b: (p, b[:-5])),
        INVALID,
        ["does not decode as int8", "31 bytes", "implies 36"],
    ),
    "meta shape differs from the declared shape": (
        lambda: _with_codec("int8", lambda p, b: ({**p, "codec_shape": "1,4,9,1"}, b)),
        INVALID,
        ["codec meta says float32[1,4,9,1]", "declares float32[1,4,3,3]"],
    ),
    "garbage bytes": (
        lambda: _with_codec("int8+zstd", lambda p, b: (p, np.random.default_rng(9).bytes(len(b)))),
        INVALID,
        ["does not decode as int8+zstd"],
    ),
    "non-ASCII digits in the codec shape": (  # str.isdigit() takes '³', int() does not: was INTERNAL
        lambda: _with_codec("int8", lambda p, b: ({**p, "codec_shape": "1,4,3,\u00b3"}, b)),
        INVALID,
        ["bad codec parameters", "comma-separated non-negative integers"],
    ),
    "bad scale": (
        lambda: _with_codec("int8", lambda p, b: ({**p, "codec_scale": -1.0}, b)),
        INVALID,
        ["scale"],
    ),
    "shared memory": (
        lambda: _with_codec("raw", lambda p, b: ({"shared_memory_region": "r0"}, b)),
        INVALID,
        ["shared memory"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_a_clear_status(stub: Any, case: str) -> None:
    make, code, fragments = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(make(), timeout=30)
    assert info.value.code() == code, info.value.details()
    for fragment in fragments:
        assert fragment in info.value.details()
    # and the server keeps serving
    good = stub.ModelInfer(wire.make_request("gemm", {"x": np.zeros((1, 16), np.float32)}), timeout=30)
    assert wire.outputs(good)["y"].shape == (1, 8)


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_stream_answers_a_bad_request_and_goes_on(stub: Any, case: str) -> None:
    make, code, fragments = BAD_REQUESTS[case]
    requests = [wire.make_request("gemm", {"x": np.full((1, 16), i, np.float32)}) for i in range(3)]
    requests[1] = make()
    for i, request in enumerate(requests):
        request.id = f"frame-{i}"
    responses = list(stub.ModelStreamInfer(iter(requests), timeout=30))
    assert [r.infer_response.id for r in responses] == ["frame-0", "frame-1", "frame-2"]
    assert [bool(r.error_message) for r in responses] == [False, True, False]
    assert all(f in responses[1].error_message for f in fragments), responses[1].error_message
    assert responses[1].infer_response.parameters["error_code"].string_param == code.name
    assert len(responses[1].error_message) <= 1000


def test_stream_reports_each_bad_frame_and_goes_on(stub: Any, exports: dict[str, Path]) -> None:
    frames: list[tuple[str, Any]] = []
    for i in range(30):
        if i % 3 == 1:
            case = list(BAD_REQUESTS)[i % len(BAD_REQUESTS)]
            request = BAD_REQUESTS[case][0]()
        else:
            request = wire.make_request("relu-mean", {"x": _x(i)}, codec="int8/ch+zstd")
            case = ""
        request.id = f"frame-{i}"
        frames.append((case, request))
    responses = list(stub.ModelStreamInfer(iter([r for _, r in frames]), timeout=60))
    assert len(responses) == len(frames)
    for (case, request), response in zip(frames, responses, strict=True):
        assert response.infer_response.id == request.id
        if case:
            code, fragments = BAD_REQUESTS[case][1:]
            assert response.error_message, case
            assert all(f in response.error_message for f in fragments), (case, response.error_message)
            assert response.infer_response.parameters["error_code"].string_param == code.name
        else:
            assert response.error_message == ""
            got = wire.outputs(response.infer_response)
            assert got["mean"].shape == (1, 4) and np.isfinite(got["mean"]).all()


def test_large_tensor_beyond_grpc_default_limit(tmp_path: Path) -> None:
    from splitpipe.server import ServerOptions

    export = tiny_tails.fixed_gemm(tmp_path / "wide", name="wide", features=2_000_000)  # an 8 MB input
    x = np.full((1, 2_000_000), 0.5, np.float32)
    with ServerThread([export], ServerOptions()) as running, wire.channel(running.port) as chan:
        response = wire.stub(chan).ModelInfer(wire.make_request("wide", {"x": x}), timeout=60)
    np.testing.assert_allclose(
        wire.outputs(response)["y"], tiny_tails.run_tail(export, {"x": x})["y"], rtol=1e-5
    )


def test_error_messages_fit_the_clients_metadata_limit_whatever_the_characters(stub: Any) -> None:
    """1000 characters of emoji are 12 KB as gRPC sends a status message (each UTF-8 byte
    outside printable ASCII percent-encoded), above the 8 KiB soft limit from which clients
    refuse metadata at random: about half of these calls got RESOURCE_EXHAUSTED instead."""
    for name in ("\U0001f600" * 3000, "\u00e9\U0001f600%\x00" * 500):
        for _ in range(8):
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(_plain(model=name), timeout=30)
            assert info.value.code() == NOT_FOUND, info.value.details()
            assert "served models: gemm, relu-mean, two-inputs" in (info.value.details() or "")
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=30)
            assert info.value.code() == NOT_FOUND, info.value.details()


def test_malformed_messages_get_invalid_argument_and_the_stream_goes_on(server: ServerThread) -> None:
    good = wire.make_request(
        "gemm", {"x": np.ones((1, 16), np.float32)}, request_id="good"
    ).SerializeToString()
    garbage = [
        b"\xff\xff\xff",
        b"\x3a\xff\xff\xff\xff\x0f" + b"\0" * (64 << 10),
    ]  # small; large, lying length
    with wire.channel(server.port) as chan:
        unary = chan.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for blob in garbage:
            with pytest.raises(grpc.RpcError) as info:
                unary(blob, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid ModelInferRequest" in info.value.details()
        stream = chan.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        responses = list(stream(iter([good, garbage[0], good, garbage[1], good]), timeout=30))
    assert [bool(r.error_message) for r in responses] == [False, True, False, True, False]
    assert all(r.infer_response.id == "good" for r in responses[::2])
    assert "not a valid ModelInferRequest" in responses[1].error_message


def test_malformed_metadata_and_health_calls_get_invalid_argument_without_a_traceback(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, gRPC's own deserializer failed them: UNKNOWN naming a Python exception, and one
    logged traceback per request (any client could flood the server's log)."""
    with wire.channel(server.port) as chan:
        for method in ("ModelMetadata", "ModelReady", "ServerReady", "ServerLive", "ServerMetadata"):
            call = chan.unary_unary(f"/inference.GRPCInferenceService/{method}")
            with pytest.raises(grpc.RpcError) as info:
                call(b"\xff\xff\xff", timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert f"the request is not a valid {method}Request" in (info.value.details() or ""), method
        meta = chan.unary_unary(
            "/inference.GRPCInferenceService/ModelMetadata",
            request_serializer=pb.ModelMetadataRequest.SerializeToString,
            response_deserializer=pb.ModelMetadataResponse.FromString,
        )
        assert meta(pb.ModelMetadataRequest(name="gemm"), timeout=30).name == "gemm"  # still served
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


def test_checks_are_kept_per_signature_but_each_payload_is_still_checked(
    server: ServerThread, stub: Any
) -> None:
    good = wire.make_request("relu-mean", {"x": _x(5)}, request_id="good")
    short = pb.ModelInferRequest()
    short.CopyFrom(good)
    short.id = "short"
    short.raw_input_contents[0] = good.raw_input_contents[0][:-4]  # same small fields, 4 bytes short
    compressed = wire.make_request("relu-mean", {"x": _x(5)}, codec="int8", request_id="int8")
    responses = list(stub.ModelStreamInfer(iter([good, short, compressed, good, short]), timeout=30))
    assert [r.infer_response.id for r in responses] == ["good", "short", "int8", "good", "short"]
    assert [bool(r.error_message) for r in responses] == [False, True, False, False, True]
    assert "140 bytes of raw contents" in responses[1].error_message
    np.testing.assert_array_equal(
        wire.outputs(responses[0].infer_response)["mean"], wire.outputs(responses[3].infer_response)["mean"]
    )
    # a stream of ever new small fields (here: request parameters) keeps a bounded number
    requests = []
    for i in range(300):
        request = wire.make_request("gemm", {"x": np.ones((1, 16), np.float32)}, request_id=str(i))
        request.parameters["sequence"].int64_param = i
        requests.append(request)
    responses = list(stub.ModelStreamInfer(iter(requests), timeout=60))
    assert [r.infer_response.id for r in responses] == [str(i) for i in range(300)]
    assert not any(r.error_message for r in responses)
    assert len(server.server._servicer._checked) <= 256  # type: ignore[union-attr]
