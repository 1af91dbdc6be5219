"""splitpipe compile: real ONNX Runtime optimization and int8 quantization of a small export,
the figures it records, the manifest's checks, and the agent and server loading compiled parts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from splitpipe.cli import main
from splitpipe.devices.runtimes.compiled import sha256_file
from splitpipe.edge import AgentOptions, FrameResult, SourceSpec, SyntheticSource, load_export, run_agent
from splitpipe.errors import SplitpipeError
from splitpipe.partition.compile import CompileOptions, compile_export
from splitpipe.server import ServerThread

MODEL = "tests.fixtures.models:tiny_net"
SHAPE = (1, 3, 32, 32)
SPLIT = 3  # after the residual block: one 1x8x16x16 tensor crosses
FAST = {"rounds": 1, "frames": 8, "eval_frames": 8}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from splitpipe.partition.export import export_split
    from splitpipe.partition.plan import PlanRequest, analyse, make_plan

    root = tmp_path_factory.mktemp("compile-exports")
    req = PlanRequest(model=MODEL, input_shape=SHAPE, profile_mode="analytic", calibration_samples=1)
    analysis = analyse(req)
    plan = make_plan(req, analysis=analysis)
    out = {}
    for key, split in (("split", SPLIT), ("local", "local")):
        out[key] = export_split(
            req, split, root / key, plan=plan, analysis=analysis, codec="raw", name=f"tiny-{key}"
        ).out
    return out


@pytest.fixture
def export(exported: dict[str, Path], tmp_path: Path) -> Path:
    """A fresh copy of the split export (compile changes the folder)."""
    return Path(shutil.copytree(exported["split"], tmp_path / "split"))


def _manifest(directory: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((directory / "manifest.json").read_text())


def test_int8_head_is_measured_recorded_and_verified(export: Path) -> None:
    head_sha = sha256_file(export / "head.onnx")
    result = compile_export(export, CompileOptions(part="head", target="ort-int8", **FAST))
    entry = _manifest(export)["compiled"]["head"]
    assert entry == result.entry
    assert entry["path"] == "head.int8.onnx" and entry["precision"] == "int8" and entry["runtime"] == "ort"
    assert entry["sha256"] == sha256_file(export / "head.int8.onnx")
    assert entry["from"] == {"path": "head.onnx", "sha256": head_sha}
    assert sha256_file(export / "head.onnx") == head_sha  # the float head is left as it was
    assert entry["calibration"] == {"source": "synthetic", "frames": 8, "method": "MinMax"}
    assert entry["build"]["format"] == "QDQ" and entry["build"]["quantized_activations"] > 0

    err = entry["error"]
    assert err["measured"] and err["held_out"] and err["frames"] == 8
    # int8 really changed the numbers, and not by much
    assert 1e-4 < err["part"]["max_rel"] < 0.2
    assert 0 < err["model"]["max_rel"] <= err["budget"] == 0.05 and err["within_budget"]
    assert set(err["model"]["top1_agreement"]) == {"linear"}  # the classifier's output
    assert 0.5 <= err["model"]["top1_agreement"]["linear"] <= 1
    lat = entry["latency"]
    assert lat["measured"] and lat["float_ms"] > 0 and lat["compiled_ms"] > 0 and lat["speedup"] > 0
    assert lat["load_ms"]["float"] > 0 and lat["load_ms"]["compiled"] > 0

    # the recorded figure is real: recompute it by hand on other frames
    inputs = load_export(export).inputs
    frame = SyntheticSource(inputs, seed=12345).frame(0)
    floats = ort.InferenceSession(str(export / "head.onnx")).run(None, frame)[0]
    int8 = ort.InferenceSession(str(export / "head.int8.onnx")).run(None, frame)[0]
    rel = float(np.max(np.abs(floats - int8)) / np.max(np.abs(floats)))
    assert 0 < rel < 0.2

    edge = load_export(export)  # the agent's view checks the compiled head's sha256
    assert edge.compiled_head is not None
    assert edge.head_file("ort")[0].name == "head.int8.onnx"
    assert edge.head_file("trt")[0].name == "head.onnx"  # built for ONNX Runtime only
    assert edge.head_file("ort", use_compiled=False)[0].name == "head.onnx"


def test_ort_target_keeps_the_outputs_and_a_new_target_replaces_it(export: Path) -> None:
    entry = compile_export(export, CompileOptions(part="head", target="ort", **FAST)).entry
    assert entry["precision"] == "fp32" and entry["build"]["level"] == "basic"
    assert entry["error"]["part"]["max_rel"] <= 1e-5 and entry["calibration"] is None
    assert (export / "head.ort.onnx").is_file()
    compile_export(export, CompileOptions(part="head", target="ort-int8", **FAST))
    assert _manifest(export)["compiled"]["head"]["target"] == "ort-int8"
    assert not (export / "head.ort.onnx").exists()  # one compiled file per part
    assert not list(export.glob(".*"))  # no temporary files left


def test_above_the_error_budget_nothing_is_written_unless_forced(export: Path) -> None:
    before = (export / "manifest.json").read_bytes()
    options = CompileOptions(part="head", target="ort-int8", max_error=1e-6, **FAST)
    with pytest.raises(SplitpipeError, match=r"above --max-error 1e-06; nothing was written"):
        compile_export(export, options)
    assert (export / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in export.iterdir()) == ["head.onnx", "manifest.json", "tail.onnx"]
    forced = CompileOptions(part="head", target="ort-int8", max_error=1e-6, force=True, **FAST)
    result = compile_export(export, forced)
    assert (
        not result.within_budget and _manifest(export)["compiled"]["head"]["error"]["within_budget"] is False
    )


def test_agent_and_server_run_the_compiled_parts(export: Path) -> None:
    compile_export(export, CompileOptions(part="head", target="ort-int8", **FAST))
    compile_export(export, CompileOptions(part="tail", target="ort", **FAST))
    head = ort.InferenceSession(str(export / "head.onnx"))
    tail = ort.InferenceSession(str(export / "tail.onnx"))
    source = SyntheticSource(load_export(export).inputs, seed=0)
    cut = tail.get_inputs()[0].name
    want = [tail.run(None, {cut: head.run(None, source.frame(i))[0]})[0] for i in range(source.pool_size)]

    def run(use_compiled: bool) -> tuple[dict, float]:  # type: ignore[type-arg]
        got: dict[int, np.ndarray] = {}

        def keep(result: FrameResult) -> None:
            got[result.record.id] = result.outputs["linear"].copy()

        report = run_agent(
            AgentOptions(
                export,
                server=f"127.0.0.1:{running.port}",
                frames=16,
                source=SourceSpec("synthetic"),
                log_interval_s=0,
                use_compiled=use_compiled,
            ),
            keep,
        )
        assert report.summary["completed"] == 16
        worst = max(
            float(np.max(np.abs(out - want[i % len(want)])) / np.max(np.abs(want[i % len(want)])))
            for i, out in got.items()
        )
        return report.info["head"], worst

    with ServerThread([export]) as running:
        assert running.server is not None
        model = running.server.models["tiny-split"]
        assert model.compiled is not None and model.file is not None and model.file.name == "tail.ort.onnx"
        info, worst = run(use_compiled=True)
        assert info == {
            "file": "head.int8.onnx",
            "compiled": {
                "path": "head.int8.onnx",
                "target": "ort-int8",
                "precision": "int8",
                "runtime": "ort",
            },
        }
        assert 0 < worst < 0.05  # the int8 head ran: close to the float model, not equal
        info, worst = run(use_compiled=False)
        assert info == {"file": "head.onnx", "compiled": None} and worst < 1e-5


def test_changed_compiled_file_is_refused_and_compiling_again_mends_it(export: Path) -> None:
    compile_export(export, CompileOptions(part="head", target="ort", **FAST))
    with (export / "head.ort.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(SplitpipeError, match=r"compiled.head: head.ort.onnx has sha256 .* compile again"):
        load_export(export)
    compile_export(export, CompileOptions(part="head", target="ort", **FAST))
    assert load_export(export).compiled_head is not None


def test_image_calibration(export: Path, tmp_path: Path) -> None:
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / f"{i}.png")
    spec = SourceSpec("images", str(images))
    entry = compile_export(
        export,
        CompileOptions(part="head", target="ort-int8", calibration=spec, frames=4, eval_frames=2, rounds=1),
    ).entry
    assert entry["calibration"]["frames"] == 4 and entry["error"]["frames"] == 2
    assert entry["calibration"]["source"] == f"images {images}"
    with pytest.raises(SplitpipeError, match=r"has 6 images; --frames 8 \+ --eval-frames 2 need 10"):
        compile_export(
            export, CompileOptions(part="head", target="ort-int8", calibration=spec, frames=8, eval_frames=2)
        )


def test_tensorrt_unavailable_is_one_line_and_writes_nothing(
    export: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    before = sorted(p.name for p in export.iterdir())
    assert main(["compile", str(export), "--part", "head", "--target", "tensorrt", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("splitpipe compile: error: TensorRT unavailable: tensorrt cannot be imported")
    assert err.count("\n") == 1
    assert sorted(p.name for p in export.iterdir()) == before


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--part", "middle", "--target", "ort"], "unknown part 'middle'; accepted: head, tail"),
        (["--part", "head", "--target", "onnx"], "unknown target 'onnx'; accepted: ort, ort-int8, tensorrt"),
        (["--part", "head", "--target", "ort", "--fp16"], "--fp16 applies to --target tensorrt, not ort"),
        (["--part", "head", "--target", "ort", "--calibration", "camera", "0"], "not supported; accepted"),
        (["--part", "head", "--target", "ort", "--threads", "100000"], "--threads must be between 0"),
    ],
)
def test_bad_arguments_are_one_line(
    export: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    assert main(["compile", str(export), *args]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_exports_are_one_line(
    export: Path, exported: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (tmp_path / "missing", "head", "export directory not found"),
        (exported["local"], "tail", "is local (the whole model is head.onnx): it has no tail"),
    ]
    tampered = Path(shutil.copytree(export, tmp_path / "tampered"))
    with (tampered / "tail.onnx").open("ab") as f:
        f.write(b"\0")
    cases.append((tampered, "tail", "tail.onnx does not match the sha256 of the manifest"))
    for directory, part, fragment in cases:
        assert main(["compile", str(directory), "--part", part, "--target", "ort", "-q"]) == 2
        err = capsys.readouterr().err
        assert fragment in err and err.count("\n") == 1, err
