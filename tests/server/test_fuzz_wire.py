"""Fixed-seed structured fuzzing of ModelInferRequest bytes over a real stream to a real server,
and of stream replies from a fake server read by the agent's ReplyReader."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import psutil
import pytest

from splitpipe.devices.runtimes import TensorSpec
from splitpipe.edge.wire import ReplyReader
from splitpipe.proto.inference import grpc_service_pb2 as pb
from splitpipe.proto.params import parameters_dict, set_parameters
from splitpipe.server import ServerThread
from tests.server import wire

X = np.random.default_rng(0).standard_normal((1, 4, 3, 3)).astype(np.float32)
CODECS = [None, "raw", "fp16", "int8", "int8/sym", "int8/ch", "uint4/ch", "uint2", "int8+zstd", "int8/ch+lz4"]
PARAM_VALUES: list[Any] = [
    0,
    -1,
    2**63 - 1,
    -(2**63),
    float("nan"),
    float("inf"),
    -0.0,
    1e-45,
    3.5e38,
    True,
    "",
    "abc",
    "1,4,3,3",
    "1,4,3,3,",
    " 1, 4 ,3,3 ",
    "1,4,3,\u00b3",
    "\uff11,4,3,3",
    "AAAA",
    "==",
]
SHAPES = [
    [2**62, 4, 3, 3],
    [2**31, 2**31, 2**31, 4],
    [3037000500, 3037000500, 3, 3],  # the product overflows int64
    [-1, 4, 3, 3],
    [-(2**63), -(2**63), 1, 1],
    [0, 4, 3, 3],
    [1, 4, 3],
    [1] * 40,
]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def _mutated_request(rng: random.Random, request: pb.ModelInferRequest) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest()
    r.CopyFrom(request)
    tensor = r.inputs[0]
    op = rng.randrange(12)
    if op == 0:
        del tensor.shape[:]
        tensor.shape.extend(rng.choice(SHAPES))
    elif op == 1:
        tensor.datatype = rng.choice(["FP16", "BYTES", "", "fp32", "BF16", "FP32\0"])
    elif op == 2:
        raw = r.raw_input_contents[0]
        cut = rng.choice([-1, 1, -len(raw), 1000])
        r.raw_input_contents[0] = raw[:cut] if cut < 0 else raw + b"\0" * cut
    elif op == 3:
        r.raw_input_contents.extend([b"x"] * rng.choice([1, 300]))
    elif op == 4:
        for i in range(rng.choice([1, 300])):
            r.inputs.add(name=f"i{i}", datatype="FP32", shape=[1])
    elif op == 5:
        for i in range(rng.choice([100, 2000])):
            r.parameters[f"p{i}"].string_param = "v" * rng.choice([1, 100])
    elif op == 6:
        params = parameters_dict(tensor.parameters)
        key = rng.choice([*params, "codec_scale", "codec_axis", "codec_scales", "codec_extra"])
        params[key] = rng.choice(PARAM_VALUES)
        tensor.ClearField("parameters")
        set_parameters(tensor.parameters, params)  # type: ignore[arg-type]
    elif op == 7:
        r.model_name = rng.choice(["", "gemm", "two-inputs", "relu-mean\0", "m" * 70_000])
    elif op == 8:
        tensor.name = rng.choice(["", "a", "x\0", "x" * 5000])
    elif op == 9:
        r.outputs.add(name=rng.choice(["mean", "", "nope"]))
    elif op == 10:
        r.model_version = rng.choice(["01", "2", "1\0"])
    else:
        tensor.parameters["codec"].int64_param = 5
    return r


def _mutated_bytes(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rng.randrange(8)
    if op == 0:
        del b[rng.randrange(len(b)) :]  # truncated anywhere: in a varint, a length, a payload
    elif op == 1:
        b[rng.randrange(len(b))] = rng.randrange(256)
    elif op == 2:
        pos = rng.randrange(len(b) + 1)
        b[pos:pos] = rng.randbytes(rng.randrange(1, 12))
    elif op == 3:  # a raw_input_contents entry with an overlong or huge length
        b += b"\x3a" + b"\xff" * rng.randrange(1, 12) + b"\x01"
    elif op == 4:  # fields of ModelInferRequest with the wrong wire type, groups
        b += bytes([rng.choice([0x18, 0x1D, 0x19, 0x38, 0x3D, 0x2B, 0x2C, 0x28, 0x0B, 0x3B])]) + b"\x01" * 8
    elif op == 5:  # every field twice
        b = b + b
    elif op == 6:  # deeply nested input tensors
        inner = b"\x0a\x01x"
        for _ in range(rng.choice([50, 2000])):
            inner = b"\x2a" + _varint(len(inner)) + inner
        b += inner
    else:  # not UTF-8 in model name, id, model version; field number 0
        b += rng.choice([b"\x0a\x02\xff\xfe", b"\x1a\x02\xff\xfe", b"\x12\x01\x80", b"\x00\x01"])
    return bytes(b)


def _bombs() -> list[bytes]:
    """Compressed payloads that expand far beyond what the meta claims (64 MiB of zeros)."""
    import lz4.frame
    import zstandard

    zeros = bytes(64 << 20)
    expanded = [
        zstandard.ZstdCompressor(write_content_size=True).compress(zeros),
        zstandard.ZstdCompressor(write_content_size=False).compress(zeros),
        lz4.frame.compress(zeros, store_size=True),
        lz4.frame.compress(zeros, store_size=False),
    ]
    frames = []
    for i, payload in enumerate(expanded):
        request = wire.make_request("relu-mean", {"x": X}, codec="int8+zstd" if i < 2 else "int8+lz4")
        appended = request.raw_input_contents[0] + payload  # a good frame followed by a bomb
        for raw in (payload, appended):
            request.raw_input_contents[0] = raw
            frames.append(request.SerializeToString())
    return frames


@pytest.fixture
def stream(server: ServerThread) -> Iterator[Any]:
    with wire.channel(server.port) as chan:
        yield chan.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )


def _check_good(stream: Any) -> None:
    good = wire.make_request("relu-mean", {"x": X}, codec="int8/ch+zstd", request_id="good")
    (response,) = list(stream(iter([good.SerializeToString()]), timeout=60))
    assert not response.error_message, response.error_message
    mean = wire.outputs(response.infer_response)["mean"]
    np.testing.assert_allclose(mean, np.maximum(X, 0).mean(axis=(2, 3)), atol=0.02)


def test_fuzzed_requests_get_invalid_argument_or_not_found_and_the_server_keeps_serving(stream: Any) -> None:
    rng = random.Random(20261206)
    process = psutil.Process()
    _check_good(stream)
    rss_before = process.memory_info().rss
    codes: Counter[str] = Counter()
    unexpected = []
    for round_ in range(12):
        codec = CODECS[round_ % len(CODECS)]
        base = wire.make_request("relu-mean", {"x": X}, codec=codec)
        frames = []
        for i in range(50):
            request = _mutated_request(rng, base) if i % 2 else base
            request.id = f"{round_}-{i}"
            data = request.SerializeToString()
            frames.append(_mutated_bytes(rng, data) if i % 4 == 0 else data)
        if round_ == 0:
            frames += _bombs()
        responses = list(stream(iter(frames), timeout=120))
        assert len(responses) == len(frames)  # one response per frame: the stream went on
        for frame, response in zip(frames, responses, strict=True):
            if response.error_message:
                code = response.infer_response.parameters["error_code"].string_param
                codes[code] += 1
                assert len(response.error_message) <= 1000
                if code not in ("INVALID_ARGUMENT", "NOT_FOUND"):
                    unexpected.append((code, response.error_message, frame[:200]))
            else:
                codes["OK"] += 1
        _check_good(stream)
    assert not unexpected, unexpected[:5]
    assert codes["INVALID_ARGUMENT"] > 150 and codes["NOT_FOUND"] > 5 and codes["OK"] > 150, codes
    assert process.memory_info().rss - rss_before < 200 << 20  # no bomb was expanded


# -- replies from a fake server ---------------------------------------------------------------

SPECS = (
    TensorSpec("y", np.dtype(np.float32), (None, 4)),
    TensorSpec("z", np.dtype(np.int64), (None,)),
)


def _reply(outputs: list[tuple[str, str, list[int], bytes]], request_id: str) -> pb.ModelStreamInferResponse:
    message = pb.ModelStreamInferResponse()
    response = message.infer_response
    response.id = request_id
    for name, datatype, shape, raw in outputs:
        response.outputs.add(name=name, datatype=datatype, shape=shape)
        response.raw_output_contents.append(raw)
    response.parameters["total_us"].int64_param = 7
    return message


Y, Z = ("y", "FP32", [1, 4], bytes(16)), ("z", "INT64", [1], bytes(8))
HOSTILE = {
    "lacks output(s) ['y', 'z']": [],
    "lacks output(s) ['z']": [Y],
    "repeats an output": [Y, Y, Z],
    "'w' the manifest does not list": [Y, Z, ("w", "FP32", [1], bytes(4))],
    "has datatype FP64": [("y", "FP64", [1, 4], bytes(32)), Z],
    "0 bytes for FP32[4611686018427387904, 4]": [("y", "FP32", [2**62, 4], b""), Z],
    "has shape [-1, 4]": [("y", "FP32", [-1, 4], b""), Z],
    "0 bytes for INT64[4611686018427387904]": [Y, ("z", "INT64", [2**62], b"")],
    "12 bytes for FP32[1, 4]": [("y", "FP32", [1, 4], bytes(12)), Z],
}


def test_reply_reader_refuses_hostile_replies_from_a_fake_server() -> None:
    """A fake server answers each frame of a real stream with a hostile reply; the agent's
    ReplyReader gives each an error (before, a reply that lacked or repeated an output passed)."""
    replies = [_reply(outputs, why) for why, outputs in HOSTILE.items()] + [_reply([Y, Z], "good")]
    rng = random.Random(5)
    good = replies[-1].SerializeToString()
    mutated = []
    for _ in range(3000):
        b = bytearray(good)
        pos = rng.randrange(len(b))
        b[pos : pos + rng.randrange(3)] = rng.randbytes(rng.randrange(3))
        mutated.append(bytes(b))

    def answer(request_iterator: Any, context: Any) -> Iterator[bytes]:
        answers = iter([r.SerializeToString() for r in replies] + mutated)
        for _ in request_iterator:
            yield next(answers)

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelStreamInfer": grpc.stream_stream_rpc_method_handler(answer)},
    )
    fake = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    fake.add_generic_rpc_handlers((handler,))
    port = fake.add_insecure_port("127.0.0.1:0")
    fake.start()
    try:
        with wire.channel(port) as chan:
            call = chan.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
            received = list(call(iter([b""] * (len(replies) + len(mutated))), timeout=60))
    finally:
        fake.stop(None)
    reader = ReplyReader(SPECS)
    parsed = [reader.parse(pb.ModelStreamInferResponse.FromString(data)) for data in received[: len(replies)]]
    for why, reply in zip(HOSTILE, parsed, strict=False):
        assert reply.error is not None and why in reply.error, (why, reply)
    assert parsed[-1].error is None and set(parsed[-1].outputs) == {"y", "z"}
    assert parsed[-1].server == {"total_us": 7}
    accepted = 0
    for data in received[len(replies) :]:
        try:
            message = pb.ModelStreamInferResponse.FromString(data)
        except Exception:  # what the agent's client drops as not a ModelStreamInferResponse
            continue
        reply = reader.parse(message)  # never raises
        if reply.error is None:
            accepted += 1
            assert set(reply.outputs) == {"y", "z"}
            for spec in SPECS:
                array = reply.outputs[spec.name]
                assert array.dtype == spec.dtype and array.ndim == len(spec.shape)
    assert accepted > 100
