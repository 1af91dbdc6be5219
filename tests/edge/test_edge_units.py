"""The agent's parts on their own: wire format, reply checks, options, pacing, energy shares."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from splitpipe.devices.meters import EstimatedMeter, NullMeter
from splitpipe.edge import AgentOptions, Pacer, SourceSpec, load_export, parse_address, parse_source
from splitpipe.edge.report import EnergyShares, FrameRecord
from splitpipe.edge.wire import ReplyReader, RequestBuilder
from splitpipe.errors import SplitpipeError
from splitpipe.kernels import CodecMeta, decode
from splitpipe.proto.inference import grpc_service_pb2 as pb
from splitpipe.server import zerocopy
from tests.edge.conftest import Exports


@pytest.mark.parametrize("key", ["raw", "int8"])
def test_request_bytes_are_a_valid_infer_request_with_one_copy_of_each_payload(
    exports: Exports, key: str
) -> None:
    export = load_export(getattr(exports, key))
    cut = export.cut[0]
    x = np.random.default_rng(0).standard_normal((1, 8, 16, 16)).astype(np.float32)
    encoded = RequestBuilder(export).build("42", {cut.name: x})
    request = pb.ModelInferRequest.FromString(encoded.data)
    assert request.model_name == export.name and request.id == "42"
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == (cut.name, "FP32", [1, 8, 16, 16])
    (payload,) = request.raw_input_contents
    assert encoded.payload_bytes == len(payload)
    if key == "raw":  # plain: no codec parameters, the tensor's own bytes
        assert not tensor.parameters and payload == x.tobytes()
    else:
        params = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in tensor.parameters.items()}
        meta = CodecMeta.from_params(params)
        assert meta.codec == "int8" and len(payload) == x.size
        np.testing.assert_allclose(decode(payload, meta), x, atol=float(meta.scale or 0))
    # the server's zero-copy reader sees the same request
    rest, request_id, raws = zerocopy.split_request(encoded.data)
    parsed = pb.ModelInferRequest.FromString(rest)
    assert request_id == "42" and parsed.inputs[0].name == cut.name and bytes(raws[0]) == payload
    assert isinstance(raws[0], memoryview)


@pytest.mark.parametrize("key", ["raw", "int8"])
def test_each_frame_gets_its_own_id_payload_and_codec_meta(exports: Exports, key: str) -> None:
    # the request's small part is kept per shape and codec setting; frames must not share more
    export = load_export(getattr(exports, key))
    cut = export.cut[0]
    builder = RequestBuilder(export)
    rng = np.random.default_rng(1)
    for i in range(4):
        x = (rng.standard_normal((1, 8, 16, 16)) * (i + 1)).astype(np.float32)
        request = pb.ModelInferRequest.FromString(builder.build(f"f{i}", {cut.name: x}).data)
        assert request.id == f"f{i}" and len(request.inputs) == 1 and len(request.raw_input_contents) == 1
        (tensor,), (payload,) = request.inputs, request.raw_input_contents
        if key == "raw":
            assert payload == x.tobytes()
            continue
        params = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in tensor.parameters.items()}
        meta = CodecMeta.from_params(params)
        np.testing.assert_allclose(decode(payload, meta), x, atol=float(meta.scale or 0))


def _reply(outputs: dict[str, tuple[str, list[int], bytes]], error: str = "") -> pb.ModelStreamInferResponse:
    message = pb.ModelStreamInferResponse(error_message=error)
    response = message.infer_response
    response.id = "3"
    for name, (datatype, shape, raw) in outputs.items():
        response.outputs.add(name=name, datatype=datatype, shape=shape)
        response.raw_output_contents.append(raw)
    for key, value in {"queue_us": 5, "decode_us": 6, "tail_us": 70, "batch_size": 2, "total_us": 90}.items():
        response.parameters[key].int64_param = value
    return message


def test_replies_are_checked_against_the_manifest(exports: Exports) -> None:
    reader = ReplyReader(load_export(exports.raw).outputs)
    (name,) = reader.specs
    good = np.arange(10, dtype=np.float32).reshape(1, 10)
    reply = reader.parse(_reply({name: ("FP32", [1, 10], good.tobytes())}))
    assert reply.error is None and reply.server["tail_us"] == 70 and reply.server["batch_size"] == 2
    np.testing.assert_array_equal(reply.outputs[name], good)
    bad = {
        "datatype": {name: ("FP16", [1, 10], good.astype(np.float16).tobytes())},
        "shape": {name: ("FP32", [1, 11], np.zeros(11, np.float32).tobytes())},
        "bytes": {name: ("FP32", [1, 10], good.tobytes()[:-4])},
        "does not list": {"other": ("FP32", [1, 10], good.tobytes())},
    }
    for why, outputs in bad.items():
        assert why in (reader.parse(_reply(outputs)).error or ""), why
    failed = _reply({}, error="input 'x': payload does not decode")
    failed.infer_response.parameters["error_code"].string_param = "INVALID_ARGUMENT"
    assert reader.parse(failed).error == "INVALID_ARGUMENT: input 'x': payload does not decode"


def test_options_and_sources_refuse_bad_values(tmp_path: Path) -> None:
    assert parse_source("images /data") == SourceSpec("images", "/data")
    assert parse_source(["camera", "1"]).target == "1"
    assert parse_address("localhost:8001") == "localhost:8001"
    assert parse_address("::1:8001") == "[::1]:8001"
    assert parse_source("images my photos").target == "my photos"  # the rest of the string is the path
    for bad in ("camera x", "camera -1", "synthetic extra", "video", "webcam", ["images", "a", "b"], []):
        with pytest.raises(SplitpipeError):
            parse_source(bad)
    for bad in ("localhost", "host:0", "host:70000", ":80"):
        with pytest.raises(SplitpipeError, match="HOST:PORT"):
            parse_address(bad)
    for seed in (-1, 1.5, True):
        with pytest.raises(SplitpipeError, match="--seed must be a non-negative integer"):
            parse_source("synthetic", seed=seed)  # type: ignore[arg-type]
    for kw in ({"fps": 0.0}, {"frames": -1}, {"threads": 0}, {"max_report_frames": 0}):
        with pytest.raises(SplitpipeError):
            AgentOptions(tmp_path, **kw)  # type: ignore[arg-type]


def test_pacer_spaces_frames_and_does_not_burst_after_a_stall() -> None:
    pacer = Pacer(200.0)
    starts = []
    # the pacer anchors its grid when it is asked first, and again after a stall; these are
    # moments before each anchor, so that being preempted here (a loaded machine) can only make
    # the checks below easier, never fail them
    before_first = time.perf_counter()
    stall_end = 0.0
    for i in range(12):
        time.sleep(pacer.delay())
        pacer.started()
        starts.append(time.perf_counter())
        if i == 5:
            time.sleep(0.05)  # a stall of 10 periods
            stall_end = time.perf_counter()
    # frames start on a grid of 5 ms periods: a sleep that overshoots is made up by the next
    # gap (so single gaps may be shorter), but no frame starts before its slot; after the
    # stall the grid starts again from the late frame, with no catch-up burst
    starts_s = np.array(starts)
    slots = np.arange(6) * pacer.period - 0.0002
    assert np.all(starts_s[:6] - before_first >= slots), np.diff(starts_s)
    assert np.all(starts_s[6:] - stall_end >= slots), np.diff(starts_s)
    assert Pacer(None).delay() == 0.0


def test_energy_shares_add_up_and_keep_the_meter_label() -> None:
    shares = EnergyShares(EstimatedMeter(rate_hz=50), interval_s=0.02)
    shares.start()
    records = []
    for i in range(20):
        r = FrameRecord(i, "remote", time.perf_counter())
        r.head_ms = 1.0 + (i % 3)
        time.sleep(0.003)
        shares.frame_done(r, time.perf_counter())
        records.append(r)
    shares.stop()
    total = shares.sample.joules * 1e3
    assert all(r.energy_source == "estimated" for r in records)
    # the shares add up to the energy up to the last snapshot; what follows the last frame's
    # device work is in the total only
    shared = sum(r.energy_mj or 0 for r in records)
    assert shared == pytest.approx(shares.attributed_j * 1e3, rel=1e-6)
    assert 0 < shared <= total * (1 + 1e-9)
    assert shares.to_json()["energy_source"] == "estimated"
    null = EnergyShares(NullMeter())
    null.start()
    null.frame_done(FrameRecord(0, "local", 0.0), time.perf_counter())
    null.stop()
    assert null.to_json()["energy_source"] == "estimated" and null.sample.joules == 0


_BAD_MANIFESTS = {
    "manifest field 'predictions' must be an object or null, got 'fast'": lambda m: m.update(
        predictions="fast"
    ),
    "manifest field inputs[0].shape must be a list of non-negative integers (null: a free dimension), "
    "got [1, 3, -5, 64]": lambda m: m["inputs"][0].update(shape=[1, 3, -5, 64]),
    "inputs[0].shape must be a list of non-negative integers": lambda m: m["inputs"][0].update(
        shape="1x3x32x32"
    ),
    "inputs[0].shape must be a list of non-negative": lambda m: m["inputs"][0].update(shape=[1, 3, 32.5, 32]),
    "outputs[0].shape must be a list of non-negative": lambda m: m["outputs"][0].update(shape=[True, 10]),
    "inputs[0].dtype must name a numpy dtype such as 'float32', got None": lambda m: m["inputs"][0].update(
        dtype=None
    ),
    "inputs[0].dtype must name a numpy dtype such as 'float32', got 'floaty'": lambda m: m["inputs"][
        0
    ].update(dtype="floaty"),
    "cut[0].name must be a non-empty string, got 5": lambda m: m["cut"][0].update(name=5),
    "manifest field inputs[0] must be an object with name, dtype and shape; got 'x'": lambda m: m.update(
        inputs=["x"]
    ),
    "manifest field 'split' must be an object or null, got '3'": lambda m: m.update(split="3"),
    "manifest field split must give an id (a number, 'local' or 'offload') and a label": lambda m: m.update(
        split={"id": [3], "label": "block"}
    ),
    "manifest field 'files' must be an object or null, got 'head.onnx'": lambda m: m.update(
        files="head.onnx"
    ),
    "manifest field preprocess.size must be [height, width] in pixels, got 224": lambda m: m.update(
        preprocess={"size": 224}
    ),
    "manifest field preprocess.mean must be a list of numbers (one per channel), got ['a']": lambda m: (
        m.update(preprocess={"mean": ["a"]})
    ),
    "manifest field preprocess.layout must be a string": lambda m: m.update(preprocess={"layout": 1}),
    "manifest field predictions.decode_ms must be a number >= 0 or null, got 'slow'": lambda m: m[
        "predictions"
    ].update(decode_ms="slow"),
    "manifest field predictions.link must be an object or null, got '20mbit'": lambda m: m[
        "predictions"
    ].update(link="20mbit"),
    "manifest field predictions.link.rtt_ms must be a number >= 0 or null, got -1": lambda m: m[
        "predictions"
    ]["link"].update(rtt_ms=-1),
    "manifest field codec.calibration must map cut tensor names to scales": lambda m: m["codec"].update(
        calibration={"relu_2": "x"}
    ),
    "manifest field compiled.head.error must be an object, got 'none'": lambda m: m.update(
        compiled={
            "head": {"path": "head.onnx", "sha256": "0", "target": "ort", "runtime": "ort", "error": "none"}
        }
    ),
}


@pytest.mark.parametrize("expected", list(_BAD_MANIFESTS))
def test_manifest_values_of_the_wrong_kind_are_one_line_errors(
    exports: Exports, tmp_path: Path, expected: str
) -> None:
    import json
    import shutil

    export = Path(shutil.copytree(exports.raw, tmp_path / "export"))
    manifest = json.loads((export / "manifest.json").read_text())
    _BAD_MANIFESTS[expected](manifest)
    (export / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SplitpipeError) as caught:
        load_export(export)
    message = str(caught.value)
    assert message.startswith(f"export {export}: ") and expected in message and "\n" not in message, message


def test_a_free_dimension_and_an_empty_one_are_accepted(exports: Exports, tmp_path: Path) -> None:
    import json
    import shutil

    export = Path(shutil.copytree(exports.raw, tmp_path / "export"))
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["outputs"][0]["shape"] = [None, 0]
    (export / "manifest.json").write_text(json.dumps(manifest))
    assert load_export(export).outputs[0].shape == (None, 0)
