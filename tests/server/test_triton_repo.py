"""Triton model repository entries: the config parsed with Triton's own schema (tritonclient's
model_config_pb2), the model file run with ONNX Runtime on the agent's own request bytes, and
refusals that write nothing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from splitpipe.errors import SplitpipeError
from splitpipe.server.models import sha256_file
from splitpipe.server.triton import TritonOptions, write_repository
from tests.server.tiny_tails import fixed_gemm, relu_mean, two_inputs, write_export

text_format = pytest.importorskip("google.protobuf.text_format")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")


def _config(entry: Path) -> Any:
    """config.pbtxt parsed strictly: an unknown field or enum value fails here."""
    return text_format.Parse((entry / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def _type(config_tensor: Any) -> str:
    return model_config_pb2.DataType.Name(config_tensor.data_type)


def test_batchable_tail(tmp_path: Path) -> None:
    export = relu_mean(tmp_path / "export")
    (entry,) = write_repository([export], tmp_path / "repo", TritonOptions(max_batch=16, queue_delay_us=100))
    assert entry.path == tmp_path / "repo" / "relu-mean" and entry.batched
    config = _config(entry.path)
    assert config.name == "relu-mean" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16
    assert [(t.name, _type(t), list(t.dims)) for t in config.input] == [("x", "TYPE_FP32", [4, 3, 3])]
    assert [(t.name, _type(t), list(t.dims)) for t in config.output] == [
        ("mean", "TYPE_FP32", [4]),
        ("peak", "TYPE_FP32", [4]),
    ]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    (group,) = config.instance_group
    assert group.count == 1 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_AUTO
    manifest = json.loads((export / "manifest.json").read_text())
    model = entry.path / "1" / "model.onnx"
    assert sha256_file(model) == manifest["files"]["tail"]["sha256"]
    marker = json.loads((entry.path / "splitpipe.json").read_text())
    assert marker["files"]["model"]["sha256"] == manifest["files"]["tail"]["sha256"]
    assert marker["export"] == str(export.resolve()) and marker["split"] == manifest["split"]
    # Triton batches rows along the first dimension: the model takes any batch up to max_batch_size
    session = ort.InferenceSession(str(model))
    x = np.random.default_rng(0).standard_normal((16, 4, 3, 3)).astype(np.float32)
    mean, peak = session.run(["mean", "peak"], {"x": x})
    np.testing.assert_allclose(mean, np.maximum(x, 0).mean(axis=(2, 3)), rtol=1e-6)
    np.testing.assert_array_equal(peak, x.max(axis=(2, 3)))


def test_fixed_batch_tail_has_full_dims_and_no_batching(tmp_path: Path) -> None:
    (entry,) = write_repository([fixed_gemm(tmp_path / "export", features=6)], tmp_path / "repo")
    config = _config(entry.path)
    assert not entry.batched and config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in config.input] == [("x", [1, 6])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("y", [1, 8])]


def test_several_exports_dtypes_and_gpu_options(tmp_path: Path) -> None:
    exports = [relu_mean(tmp_path / "a"), two_inputs(tmp_path / "b")]
    options = TritonOptions(instances=2, kind="gpu", tensorrt=True)
    entries = write_repository(exports, tmp_path / "repo", options)
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["relu-mean", "two-inputs"]
    config = _config(entries[1].path)
    assert [(t.name, _type(t), list(t.dims)) for t in config.input] == [
        ("a", "TYPE_FP32", [4]),
        ("b", "TYPE_FP16", [2]),
    ]
    (group,) = config.instance_group
    assert group.count == 2 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"


def test_per_row_scalar_output_and_unusual_names(tmp_path: Path) -> None:
    from onnx import helper

    odd = 'layer/1.relu "out"\\é'
    export = write_export(
        tmp_path / "export",
        "scalar",
        [helper.make_node("ReduceMax", [odd], ["score"], axes=[1], keepdims=0)],
        cut=[{"name": odd, "dtype": "float32", "shape": [None, 5]}],
        outputs=[{"name": "score", "dtype": "float32", "shape": [None]}],
    )
    (entry,) = write_repository([export], tmp_path / "repo")
    config = _config(entry.path)
    assert config.input[0].name == odd
    # Triton wants at least one dim: a scalar per row is declared [1] and reshaped to []
    (score,) = config.output
    assert list(score.dims) == [1] and score.HasField("reshape") and list(score.reshape.shape) == []


def test_folded_export_serves_the_agents_requests_as_they_are(tmp_path: Path) -> None:
    """A real split with the int8 quantization folded into the graphs: the agent's request bytes
    carry plain int8 tensors that match the config, and the repository's model gives the
    export's result on them."""
    from splitpipe.edge import load_export
    from splitpipe.edge.sources import SyntheticSource
    from splitpipe.edge.wire import RequestBuilder
    from splitpipe.partition.export import export_split
    from splitpipe.partition.plan import PlanRequest
    from splitpipe.proto.inference import grpc_service_pb2 as pb

    req = PlanRequest(
        model="tests.fixtures.models:tiny_net",
        input_shape=(1, 3, 32, 32),
        codec="int8/sym",
        profile_mode="analytic",
    )
    out = export_split(req, 4, tmp_path / "folded", fold_qdq=True).out
    (entry,) = write_repository([out], tmp_path / "repo")
    config = _config(entry.path)

    export = load_export(out)
    feed = SyntheticSource(export.inputs).frame(0)
    head = ort.InferenceSession(str(export.head_path))
    cut = dict(zip([o.name for o in head.get_outputs()], head.run(None, feed), strict=True))
    request = pb.ModelInferRequest.FromString(RequestBuilder(export).build("7", cut).data)

    declared = {t.name: t for t in config.input}
    feed_tail = {}
    for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
        want = declared[tensor.name]
        assert f"TYPE_{tensor.datatype}" == _type(want) == "TYPE_INT8"
        assert list(tensor.shape[1:]) == list(want.dims) and tensor.shape[0] <= config.max_batch_size
        assert not tensor.parameters  # no codec meta: a plain tensor, as Triton reads it
        assert len(raw) == math.prod(tensor.shape)
        feed_tail[tensor.name] = np.frombuffer(raw, np.int8).reshape(tuple(tensor.shape))
    triton_model = ort.InferenceSession(str(entry.path / "1" / "model.onnx"))
    got = triton_model.run([t.name for t in config.output], feed_tail)
    want = ort.InferenceSession(str(out / "tail.onnx")).run([t.name for t in config.output], cut)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_a_codec_triton_cannot_decode_writes_nothing(tmp_path: Path) -> None:
    good = relu_mean(tmp_path / "good")
    coded = relu_mean(tmp_path / "coded", name="coded")
    manifest = json.loads((coded / "manifest.json").read_text())
    manifest["codec"] = {"name": "int8+zstd", "calibration": None}
    (coded / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SplitpipeError, match=r"codec 'int8\+zstd'.*plain tensors only.*--fold-qdq"):
        write_repository([good, coded], tmp_path / "repo")
    assert not (tmp_path / "repo").exists()

    manifest["codec"] = {"name": "raw+zstd", "calibration": {}, "folded": "int8/sym"}
    (coded / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SplitpipeError, match="no lossless stage"):
        write_repository([coded], tmp_path / "repo")


def test_never_replaces_a_folder_it_did_not_write(tmp_path: Path) -> None:
    export = relu_mean(tmp_path / "export")
    foreign = tmp_path / "repo" / "relu-mean"
    foreign.mkdir(parents=True)
    (foreign / "config.pbtxt").write_text('name: "mine"\n')
    with pytest.raises(SplitpipeError, match="not written by splitpipe"):
        write_repository([export], tmp_path / "repo")
    assert (foreign / "config.pbtxt").read_text() == 'name: "mine"\n'
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["relu-mean"]

    # its own entry is replaced whole, with the new options
    (foreign / "config.pbtxt").unlink()
    foreign.rmdir()
    write_repository([export], tmp_path / "repo")
    write_repository([export], tmp_path / "repo", TritonOptions(max_batch=4))
    assert _config(foreign).max_batch_size == 4
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["relu-mean"]


def test_a_changed_tail_is_refused(tmp_path: Path) -> None:
    export = relu_mean(tmp_path / "export")
    with (export / "tail.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(SplitpipeError, match="sha256"):
        write_repository([export], tmp_path / "repo")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(max_batch=0), "at least 1"),
        (dict(queue_delay_us=-1), "queue delay"),
        (dict(kind="tpu"), "unknown instance kind 'tpu'; accepted: auto, cpu, gpu"),
        (dict(kind="cpu", tensorrt=True), "TensorRT runs on GPUs"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(SplitpipeError, match=message):
        TritonOptions(**options)


def test_cli(tmp_path: Path) -> None:
    export = relu_mean(tmp_path / "export")
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "splitpipe", "triton-repo", *a], capture_output=True, text=True
    )
    ok = run(str(export), "--repo", str(tmp_path / "repo"), "--max-batch", "4")
    assert ok.returncode == 0, ok.stderr
    assert "wrote" in ok.stdout and "x TYPE_FP32[4, 3, 3]; batches up to 4" in ok.stdout
    assert _config(tmp_path / "repo" / "relu-mean").max_batch_size == 4
    for args, message in [
        ([str(tmp_path / "missing"), "--repo", str(tmp_path / "r2")], "export directory not found"),
        ([str(export), "--repo", str(tmp_path / "r3"), "--kind", "tpu"], "unknown instance kind"),
        ([str(export), "--repo", str(export / "manifest.json")], "is a file; give a directory for the model"),
        (
            [str(export), "--repo", str(export / "manifest.json" / "sub")],
            "manifest.json is a file, not a folder",
        ),
    ]:
        bad = run(*args)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr
        (line,) = [x for x in bad.stderr.splitlines() if "error" in x]
        assert message in line
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()


def test_a_local_export_has_no_tail(tmp_path: Path) -> None:
    export = relu_mean(tmp_path / "export")
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["split"] = {"id": "local", "label": "all on the device"}
    del manifest["files"]["tail"]
    (export / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SplitpipeError, match=r"a local export .* has no tail to serve"):
        write_repository([export], tmp_path / "repo")


def test_compiled_tail_is_written_where_the_export_has_one(tmp_path: Path) -> None:
    """What ``splitpipe serve`` would run: the tail ``splitpipe compile`` built for ONNX Runtime
    (sha256 checked, named in the marker), unless --no-compiled; an extended-level build only
    for CPU instances."""
    from splitpipe.partition.compile import CompileOptions, compile_export
    from splitpipe.partition.export import export_split
    from splitpipe.partition.plan import PlanRequest

    req = PlanRequest(
        model="tests.fixtures.models:tiny_net", input_shape=(1, 3, 32, 32), profile_mode="analytic"
    )
    out = export_split(req, 3, tmp_path / "raw", codec="raw").out
    fast = {"rounds": 1, "frames": 4, "eval_frames": 4}
    entry = compile_export(out, CompileOptions(part="tail", target="ort", **fast)).entry

    (written,) = write_repository([out], tmp_path / "repo")
    assert sha256_file(written.path / "1" / "model.onnx") == entry["sha256"] != sha256_file(out / "tail.onnx")
    marker = json.loads((written.path / "splitpipe.json").read_text())
    assert marker["compiled"]["target"] == "ort" and marker["files"]["model"]["sha256"] == entry["sha256"]
    assert written.source.startswith(entry["path"])

    (plain,) = write_repository([out], tmp_path / "repo", TritonOptions(use_compiled=False))
    assert sha256_file(plain.path / "1" / "model.onnx") == sha256_file(out / "tail.onnx")
    assert json.loads((plain.path / "splitpipe.json").read_text())["compiled"] is None

    compile_export(out, CompileOptions(part="tail", target="ort", level="extended", **fast))
    with pytest.raises(SplitpipeError, match=r"extended level.*--kind cpu, or --no-compiled"):
        write_repository([out], tmp_path / "repo2")
    assert not (tmp_path / "repo2").exists()
    (cpu,) = write_repository([out], tmp_path / "repo2", TritonOptions(kind="cpu"))
    assert _config(cpu.path).instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
