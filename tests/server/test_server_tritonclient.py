"""The unmodified tritonclient package against our server: health, metadata, infer, streams."""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from splitpipe.server import STAGE_PARAMS, ServerThread
from tests.server import tiny_tails

DOCS = Path(__file__).parents[2] / "docs" / "server.md"


def _docs_section(title: str) -> str:
    return DOCS.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.fixture
def client(server: ServerThread) -> Any:
    with tc.InferenceServerClient(f"127.0.0.1:{server.port}") as c:
        yield c


def _input(name: str, array: np.ndarray, datatype: str = "FP32") -> tc.InferInput:
    tensor = tc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_health_and_server_metadata(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("relu-mean")
    assert client.is_model_ready("gemm", "1")
    assert not client.is_model_ready("no-such-model")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "splitpipe"
    assert "streaming" in meta["extensions"]


def test_model_metadata_lists_cut_tensors_and_outputs(client: Any) -> None:
    meta = client.get_model_metadata("two-inputs", as_json=True)
    assert meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("a", "FP32", ["-1", "4"]),
        ("b", "FP16", ["-1", "2"]),
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [("y", "FP32", ["-1", "4"])]
    fixed = client.get_model_metadata("gemm", as_json=True)
    assert fixed["inputs"][0]["shape"] == ["1", "16"]


def test_unknown_model_is_not_found(client: Any) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("no-such-model")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert "no-such-model" in info.value.message() and "relu-mean" in info.value.message()
    x = np.zeros((1, 16), np.float32)
    with pytest.raises(InferenceServerException) as info:
        client.infer("no-such-model", [_input("x", x)])
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_infer_raw_fp32_matches_onnxruntime(client: Any, exports: dict[str, Path]) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    result = client.infer("relu-mean", [_input("x", x)], request_id="frame-1")
    want = tiny_tails.run_tail(exports["relu-mean"], {"x": x})
    np.testing.assert_array_equal(result.as_numpy("mean"), want["mean"])
    np.testing.assert_array_equal(result.as_numpy("peak"), want["peak"])
    response = result.get_response()
    assert response.id == "frame-1"
    assert response.model_name == "relu-mean"
    params = {k: v.int64_param for k, v in response.parameters.items()}
    assert set(params) == set(STAGE_PARAMS)
    assert params["batch_size"] == 3 and params["tail_instances"] == 1
    assert all(params[k] >= 0 for k in STAGE_PARAMS)
    assert params["total_us"] >= params["tail_us"]


def test_infer_fixed_batch_tail_and_requested_output(client: Any, exports: dict[str, Path]) -> None:
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)
    result = client.infer("gemm", [_input("x", x)])
    np.testing.assert_array_equal(result.as_numpy("y"), tiny_tails.run_tail(exports["gemm"], {"x": x})["y"])

    x4 = np.ones((2, 4, 3, 3), np.float32)
    only_peak = client.infer("relu-mean", [_input("x", x4)], outputs=[tc.InferRequestedOutput("peak")])
    assert only_peak.as_numpy("mean") is None
    np.testing.assert_array_equal(only_peak.as_numpy("peak"), np.ones((2, 4), np.float32))


def test_infer_two_inputs_matched_by_name(client: Any, exports: dict[str, Path]) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.array([[0.5, 1.5], [2.5, -1]], dtype=np.float16)
    # sent in the opposite order of the manifest's cut
    result = client.infer("two-inputs", [_input("b", b, "FP16"), _input("a", a)])
    want = tiny_tails.run_tail(exports["two-inputs"], {"a": a, "b": b})["y"]
    np.testing.assert_array_equal(result.as_numpy("y"), want)


def test_stream_of_frames(client: Any, exports: dict[str, Path]) -> None:
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    rng = np.random.default_rng(2)
    frames = {f"f{i}": rng.standard_normal((1, 4, 3, 3)).astype(np.float32) for i in range(40)}
    try:
        for frame_id, x in frames.items():
            client.async_stream_infer("relu-mean", [_input("x", x)], request_id=frame_id)
        received = [responses.get(timeout=30) for _ in frames]
    finally:
        client.stop_stream()
    assert [error for _, error in received] == [None] * len(frames)
    ids = [result.get_response().id for result, _ in received]
    assert ids == list(frames), "responses come back in request order"
    for result, _ in received:
        x = frames[result.get_response().id]
        want = tiny_tails.run_tail(exports["relu-mean"], {"x": x})
        np.testing.assert_array_equal(result.as_numpy("mean"), want["mean"])


def test_stream_error_fails_only_that_frame(client: Any) -> None:
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    good = np.ones((1, 16), np.float32)
    try:
        client.async_stream_infer("gemm", [_input("x", good)], request_id="ok-1")
        client.async_stream_infer("gemm", [_input("x", np.ones((1, 15), np.float32))], request_id="bad")
        client.async_stream_infer("no-such-model", [_input("x", good)], request_id="unknown")
        client.async_stream_infer("gemm", [_input("x", good)], request_id="ok-2")
        received = [responses.get(timeout=30) for _ in range(4)]
    finally:
        client.stop_stream()
    (r1, e1), (r2, e2), (r3, e3), (r4, e4) = received
    assert e1 is None and e4 is None
    assert r1.get_response().id == "ok-1" and r4.get_response().id == "ok-2"
    assert r2 is None and "shape [1,15]" in e2.message() and "[1,16]" in e2.message()
    assert r3 is None and "unknown model 'no-such-model'" in e3.message()
    assert client.is_server_ready()


@pytest.mark.parametrize("model", ["two-inputs", "relu-mean"])
def test_docs_example_runs_as_written(server: ServerThread, exports: dict[str, Path], model: str) -> None:
    code = _docs_section("Using tritonclient against it").split("```python\n", 1)[1].split("```", 1)[0]
    assert code.count('"localhost:8001"') == 1 and code.count('"resnet50-s12"') == 1
    code = code.replace('"localhost:8001"', f'"127.0.0.1:{server.port}"').replace(
        '"resnet50-s12"', f'"{model}"'
    )
    names: dict[str, Any] = {}
    exec(code, names)  # the example reads every name from the server's metadata
    feed = {
        t.name(): np.zeros(t.shape(), np.float16 if t.datatype() == "FP16" else np.float32)
        for t in names["inputs"]
    }
    assert sorted(feed) == sorted(s.name for s in server.server.models[model].inputs)  # type: ignore[union-attr]
    want = tiny_tails.run_tail(exports[model], feed)
    assert sorted(names["outputs"]) == sorted(want)
    for name, array in want.items():
        np.testing.assert_array_equal(names["outputs"][name], array)
    assert set(names["stages"]) == set(STAGE_PARAMS)


def test_docs_list_every_response_parameter() -> None:
    rows = [line for line in _docs_section("What a response carries").splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(STAGE_PARAMS)
